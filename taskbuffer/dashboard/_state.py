"""What the dashboard shows, as JSON-ready values read from a manager (and services).

Everything here reads the manager through its public API, plus ``key_table`` of the
constraints module for the per-key table. Runs come from ``get_active_runs`` (the snapshot)
and ``event.run`` (the live feed); jobs are shown when the manager has a job store: the page
hides that panel otherwise.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._constraints import key_table
from .._validation import safe_repr

if TYPE_CHECKING:
    from .._events import TaskEvent
    from .._manager import TaskManager
    from .._metadata import TaskMetadata
    from .._run import RunInfo
    from .._service_manager import ServiceManager
    from ..jobs import Job, JobAttempt, JobStatus

__all__ = (
    "KEYS_PER_GROUP",
    "RUNS_LISTED",
    "DashboardState",
    "JobStoreFailure",
    "event_entry",
    "short_repr",
    "task_entry",
)

logger = logging.getLogger("taskbuffer")

# What keeps a snapshot and a frame bounded whatever the traffic: lists are cut to these
# lengths (the tasks are all listed: there are as many as the code registers), and every
# text that comes from a run (errors, inputs, results) to these sizes.
KEYS_PER_GROUP = 20  # keys listed per constraint group, the busiest first
RUNS_LISTED = 200  # active runs a snapshot lists: running first, then the next to start
SCHEDULES_LISTED = 50
RECENT_EVENTS = 100  # events the snapshot carries, newest last
REPR_LIMIT = 200  # characters of an input or result shown
TEXT_LIMIT = 2000  # characters of an error message shown
TRACEBACK_LIMIT = 20_000  # characters of a traceback shown: its start and its end


class JobStoreFailure(Exception):
    """The manager's job store failed to answer (the message says how)."""


def cut(text: str | None, limit: int = TEXT_LIMIT) -> str | None:
    """``text`` cut to ``limit`` characters (its start, then "…")."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def cut_traceback(text: str | None) -> str | None:
    """A traceback cut to :data:`TRACEBACK_LIMIT` characters: its frames (the start) and
    its end (the error's line, which a huge message would push out of the start)."""
    if text is None or len(text) <= TRACEBACK_LIMIT:
        return text
    head = TRACEBACK_LIMIT * 3 // 4
    tail = TRACEBACK_LIMIT - head - 3
    return text[:head] + "\n…\n" + text[-tail:]


def task_entry(metadata: TaskMetadata) -> dict[str, Any]:
    """A task's metadata as JSON-ready values, its last error cut."""
    entry = metadata.to_dict()
    entry["last_error"] = cut(entry["last_error"])
    return entry


def short_repr(value: Any) -> str | None:
    """A bounded ``repr`` of an input or result (``None`` stays ``None``)."""
    if value is None:
        return None
    text = safe_repr(value)
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 1] + "…"


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def run_entry(run: RunInfo) -> dict[str, Any]:
    """A ``RunInfo`` as JSON-ready values; its input as a bounded repr.

    A run that has not started has no steps yet: the snapshot a ``queued`` event carries
    may hold the steps of the task's run ahead of it, which are not this run's.
    """
    started = run.state != "waiting" or run.started_at is not None
    return {
        "run_id": run.run_id,
        "task_name": run.task_name,
        "input": short_repr(run.input),
        "state": run.state,
        "attempt": run.attempt,
        "priority": run.priority,
        "job_id": run.job_id,
        # Only a waiting run is blocked: a started one keeps the (group, key) it waited for.
        "blocked_by": list(run.blocked_by)
        if run.blocked_by is not None and run.state == "waiting"
        else None,
        "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "steps": [step.to_dict() for step in run.steps] if started else [],
        "progress": run.progress if started else 0,
    }


def event_entry(event: TaskEvent) -> dict[str, Any]:
    """A task event for the live feed: what happened to which task (and run)."""
    run = event.run
    return {
        "type": event.type,
        "task": event.task.name,
        "labels": dict(event.task.labels),
        "timestamp": event.timestamp,
        "step_name": event.step_name,
        "error": cut(event.error),
        "run_id": None if run is None else run.run_id,
        "job_id": None if run is None else run.job_id,
    }


def job_entry(job: Job, *, detail: bool = False) -> dict[str, Any]:
    """A ``Job`` as JSON-ready values; the traceback only in the detailed form."""
    error = job.error
    entry: dict[str, Any] = {
        "id": job.id,
        "task_name": job.task_name,
        "status": job.status,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_at": iso(job.run_at),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "worker_id": job.worker_id,
        "dedupe_key": job.dedupe_key,
        "error": None if error is None else {"type": error.type, "message": cut(error.message)},
    }
    if detail:
        entry["input"] = short_repr(job.input)
        entry["result"] = short_repr(job.result)
        if error is not None:
            entry["error"] = {
                "type": error.type,
                "message": cut(error.message),
                "traceback": cut_traceback(error.traceback),
            }
    return entry


def attempt_entry(attempt: JobAttempt) -> dict[str, Any]:
    """One ``JobAttempt`` of a job's audit trail."""
    error = attempt.error
    return {
        "attempt": attempt.attempt,
        "worker_id": attempt.worker_id,
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "outcome": attempt.outcome,
        "error": None if error is None else cut(f"{error.type}: {error.message}"),
    }


def _store_failure(exc: Exception) -> JobStoreFailure:
    logger.warning("the dashboard could not read the job store", exc_info=exc)
    return JobStoreFailure(cut(f"{type(exc).__name__}: {exc}"))


def _limit(value: float) -> float | None:
    return None if math.isinf(value) else value


class DashboardState:
    """Reads what the page shows from ``manager`` (and ``services``), and keeps the latest
    events for the first paint (one subscription, made by :meth:`attach`)."""

    __slots__ = ("manager", "recent", "services")

    def __init__(self, manager: TaskManager, services: ServiceManager | None) -> None:
        self.manager = manager
        self.services = services
        self.recent: deque[TaskEvent] = deque(maxlen=RECENT_EVENTS)

    def attach(self) -> None:
        """Keep the latest events of the manager for :meth:`snapshot`."""
        self.manager.task_subject.subscribe(self.recent.append)

    def tasks(self) -> list[dict[str, Any]]:
        return [task_entry(metadata) for metadata in self.manager.get_all_tasks_metadata()]

    def runs(self) -> tuple[list[dict[str, Any]], int]:
        """The first :data:`RUNS_LISTED` active runs, and how many more there are."""
        runs = self.manager.get_active_runs()
        listed = [run_entry(run) for run in runs[:RUNS_LISTED]]
        return listed, len(runs) - len(listed)

    def groups(self) -> list[dict[str, Any]]:
        entries = []
        for group in self.manager.constraint_groups:
            stats = group.statistics()
            counts = [(st.key, st.running, st.waiting) for st in key_table(group).states.values()]
            keys = sorted(counts, key=lambda k: (-k[1], -k[2], k[0]))
            rate = group.rate_limit
            entries.append(
                {
                    "name": group.name,
                    "max_concurrent": _limit(group.max_concurrent),
                    "cooldown": group.cooldown,
                    "rate_limit": None
                    if rate is None
                    else {"max_per_window": rate.max_per_window, "window": rate.window},
                    "result_sharing": group.result_sharing,
                    "tracked_keys": stats.tracked_keys,
                    "running": stats.running,
                    "waiting": stats.waiting,
                    "keys": [
                        {"key": key, "running": running, "waiting": waiting}
                        for key, running, waiting in keys[:KEYS_PER_GROUP]
                    ],
                    "more_keys": max(0, len(keys) - KEYS_PER_GROUP),
                }
            )
        return entries

    def schedules(self) -> list[dict[str, Any]]:
        return [
            {
                "task_name": entry["task_name"],
                "schedule": entry["schedule"],
                "next_run": iso(entry["next_run"]),
            }
            for entry in self.manager.get_next_scheduled_runs(SCHEDULES_LISTED)
        ]

    def service_list(self) -> list[dict[str, Any]]:
        if self.services is None:
            return []
        entries = [s.get_metadata().to_dict() for s in self.services.service_map.values()]
        for entry in entries:
            entry["last_error"] = cut(entry["last_error"])
        return entries

    def statistics(self) -> dict[str, int]:
        stats = self.manager.statistics()
        return {
            "tasks": stats.tasks,
            "running": stats.running,
            "waiting": stats.waiting,
            "scheduled": stats.scheduled,
        }

    def features(self, *, actions: bool, jobs: bool) -> dict[str, bool]:
        return {
            "runs": True,
            "jobs": jobs,
            "services": self.services is not None,
            "actions": actions,
        }

    async def jobs(
        self, *, status: JobStatus | None = None, limit: int = 20, offset: int = 0
    ) -> list[dict[str, Any]] | None:
        """A page of jobs, newest first; ``None`` when the manager has no job store.

        :raises JobStoreFailure: the store failed (a database down, say).
        """
        try:
            jobs = await self.manager.list_jobs(status=status, limit=limit, offset=offset)
        except RuntimeError:  # the manager was built without a job store
            return None
        except Exception as exc:
            raise _store_failure(exc) from exc
        return [job_entry(job) for job in jobs]

    async def job_detail(self, job_id: str) -> dict[str, Any] | None:
        """One job with its audit trail, error and traceback; ``None`` if unknown (or the
        manager has no job store).

        :raises JobStoreFailure: the store failed.
        """
        try:
            job = await self.manager.get_job(job_id)
            if job is None:
                return None
            attempts = await self.manager.get_job_attempts(job_id)
        except RuntimeError:  # no job store
            return None
        except Exception as exc:
            raise _store_failure(exc) from exc
        entry = job_entry(job, detail=True)
        entry["attempts_trail"] = [attempt_entry(attempt) for attempt in attempts]
        return entry

    async def snapshot(self, *, actions: bool, title: str) -> dict[str, Any]:
        """Everything the page shows, as one JSON-ready dict (``jobs_error`` says why the
        jobs are missing when the store failed: the rest is shown all the same)."""
        jobs_error = None
        try:
            jobs = await self.jobs()
        except JobStoreFailure as exc:
            jobs, jobs_error = [], str(exc)
        runs, more_runs = self.runs()
        return {
            "title": title,
            "features": self.features(actions=actions, jobs=jobs is not None),
            "jobs_error": jobs_error,
            "statistics": self.statistics(),
            "tasks": self.tasks(),
            "runs": runs,
            "more_runs": more_runs,
            "groups": self.groups(),
            "schedules": self.schedules(),
            "jobs": jobs or [],
            "services": self.service_list(),
            "events": [event_entry(event) for event in tuple(self.recent)],
        }
