"""``MemoryJobStore``: the in-process store, for tests and single-process tools.

It keeps jobs in dicts and follows the :class:`~taskbuffer.jobs.JobStore` contract to the
letter (inputs and results go through the serializer, leases and fencing apply), so code tested
on it behaves the same on a durable store. Nothing survives the process.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._store import SCHEMA_VERSION, JobStore, attempts_lost_error, dedupe_conflict
from ._unreadable import end_unreadable, readable_claims
from ._values import (
    FINISHED,
    Claim,
    Job,
    JobAttempt,
    JobOutcome,
    JobRequest,
    JobStatus,
    RenewReport,
    attempt_from_row,
    error_json,
    job_from_row,
)

__all__ = ("MemoryJobStore",)


@dataclass(slots=True)
class _Row:
    id: str
    seq: int
    task_name: str
    input: bytes
    priority: int
    run_at: float
    max_attempts: int
    created_at: float
    dedupe_key: str | None
    schedule_key: str | None
    status: str = "queued"
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    result: bytes | None = None
    error: str | None = None
    token: str | None = None
    lease_expires: float | None = None
    cancel_requested: bool = False
    trail: list[dict[str, Any]] = field(default_factory=list)


def _id_and_token(row: _Row) -> tuple[str, str]:
    assert row.token is not None  # (a claimed row's)
    return row.id, row.token


class MemoryJobStore(JobStore):
    """Jobs in this process's memory (see :class:`~taskbuffer.jobs.JobStore` for the options).

    Every change happens in the calling coroutine, so every subscriber is told at once and
    workers never need to poll.
    """

    poll_interval = 3600.0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._rows: dict[str, _Row] = {}
        self._seq = itertools.count()
        self.schema_version = SCHEMA_VERSION

    async def open(self) -> None:
        """Nothing to connect; checks the (settable, for tests) schema version."""
        from ._store import check_schema_version

        check_schema_version(self.schema_version, where="memory")

    async def close(self) -> None:
        """Nothing to release (jobs stay while the object lives)."""

    def _job(self, row: _Row) -> Job:
        columns = {name: getattr(row, name) for name in _Row.__slots__}
        return job_from_row(columns, input=self.decode(row.input), result=self.decode(row.result))

    async def enqueue_many(self, requests: Sequence[JobRequest], *, now: float) -> list[Job]:
        """Store jobs (see :meth:`JobStore.enqueue_many`)."""
        encoded = [self.encode(request.input) for request in requests]
        jobs = []
        for request, data in zip(requests, encoded, strict=True):
            row = self._existing(request)
            if row is None:
                row = _Row(
                    id=uuid.uuid4().hex,
                    seq=next(self._seq),
                    task_name=request.task_name,
                    input=data,
                    priority=request.priority,
                    run_at=now if request.run_at is None else request.run_at,
                    max_attempts=request.max_attempts,
                    created_at=now,
                    dedupe_key=request.dedupe_key,
                    schedule_key=request.schedule_key,
                )
                self._rows[row.id] = row
            jobs.append(self._job(row))
        self.notify()
        return jobs

    def _existing(self, request: JobRequest) -> _Row | None:
        if request.schedule_key is None and request.dedupe_key is None:
            return None  # nothing to look for (no scan: enqueueing n jobs stays linear)
        for row in self._rows.values():
            if request.schedule_key is not None and row.schedule_key == request.schedule_key:
                return row
            if (
                request.dedupe_key is not None
                and row.dedupe_key == request.dedupe_key
                and row.status not in FINISHED
            ):
                return row
        return None

    def _reap(self, now: float) -> None:
        for row in self._rows.values():
            if row.status != "running" or row.lease_expires is None or row.lease_expires > now:
                continue
            self._end_attempt(row, "lost", now, None)
            row.token = row.lease_expires = None
            if row.cancel_requested:
                self._finalize(row, "cancelled", now)
            elif row.attempts >= row.max_attempts:
                row.error = error_json(attempts_lost_error(row.id, row.attempts))
                self._finalize(row, "failed", now)
            else:
                row.status = "queued"

    def _end_attempt(self, row: _Row, outcome: str, now: float, error: str | None) -> None:
        attempt = row.trail[-1]
        attempt.update(outcome=outcome, finished_at=now, error=error)

    def _finalize(self, row: _Row, status: str, now: float) -> None:
        row.status = status
        row.finished_at = now
        row.token = row.lease_expires = None
        row.cancel_requested = False

    async def claim(
        self, *, worker_id: str, task_names: Sequence[str], limit: int, now: float
    ) -> list[Claim]:
        """Claim due jobs (see :meth:`JobStore.claim`)."""
        self._reap(now)
        if limit <= 0:
            return []
        names = set(task_names)
        due = sorted(
            (
                row
                for row in self._rows.values()
                if row.status == "queued" and row.run_at <= now and row.task_name in names
            ),
            key=lambda row: (-row.priority, row.run_at, row.seq),
        )[:limit]
        for row in due:
            row.status = "running"
            row.attempts += 1
            row.worker_id = worker_id
            row.started_at = now
            row.token = uuid.uuid4().hex
            row.lease_expires = now + self.lease
            row.trail.append(
                {
                    "job_id": row.id,
                    "attempt": len(row.trail) + 1,
                    "worker_id": worker_id,
                    "started_at": now,
                    "finished_at": None,
                    "outcome": None,
                    "error": None,
                }
            )
        claims, unreadable = readable_claims(due, self._claimed, _id_and_token)
        await end_unreadable(self, unreadable, now=now)
        return claims

    def _claimed(self, row: _Row) -> Claim:
        return Claim(job=self._job(row), token=_id_and_token(row)[1])

    def _held(self, job_id: str, token: str) -> _Row | None:
        row = self._rows.get(job_id)
        if row is None or row.status != "running" or row.token != token:
            return None
        return row

    async def finish(self, outcomes: Sequence[JobOutcome], *, now: float) -> list[bool]:
        """End claims (see :meth:`JobStore.finish`)."""
        applied = []
        for outcome in outcomes:
            row = self._held(outcome.job_id, outcome.token)
            applied.append(row is not None)
            if row is None:
                continue
            error = error_json(outcome.error)
            self._end_attempt(row, outcome.outcome, now, error)
            if outcome.outcome == "released":
                row.attempts -= 1
                if row.cancel_requested:  # asked while it ran: it must not run again
                    self._finalize(row, "cancelled", now)
                    continue
                row.status = "queued"
                row.token = row.lease_expires = None
                continue
            row.result = outcome.result
            row.error = error
            self._finalize(row, outcome.outcome, now)
        self.notify()
        return applied

    async def renew(self, tokens: Sequence[str], *, now: float) -> RenewReport:
        """Extend leases (see :meth:`JobStore.renew`)."""
        by_token = {row.token: row for row in self._rows.values() if row.status == "running"}
        lost, cancel = set(), set()
        for token in tokens:
            row = by_token.get(token)
            if row is None:
                lost.add(token)
                continue
            row.lease_expires = now + self.lease
            if row.cancel_requested:
                cancel.add(token)
        return RenewReport(lost=frozenset(lost), cancel_requested=frozenset(cancel))

    async def cancel(self, job_id: str, *, now: float) -> bool:
        """Cancel a job (see :meth:`JobStore.cancel`)."""
        row = self._rows.get(job_id)
        if row is None or row.status in FINISHED:
            return False
        if row.status == "queued":
            self._finalize(row, "cancelled", now)
        else:
            row.cancel_requested = True
        self.notify()
        return True

    async def retry(self, job_id: str, *, now: float) -> Job:
        """Re-queue a failed or cancelled job (see :meth:`JobStore.retry`)."""
        row = self._rows.get(job_id)
        if row is None:
            raise KeyError(f"no job with id {job_id!r}")
        if row.status not in ("failed", "cancelled"):
            raise ValueError(
                f"only a failed or cancelled job can be retried; job {job_id!r} is {row.status}"
            )
        live = self._existing(JobRequest(task_name=row.task_name, dedupe_key=row.dedupe_key))
        if live is not None:
            raise ValueError(dedupe_conflict(job_id, live.id, live.status, row.dedupe_key))
        row.status = "queued"
        row.run_at = now
        row.attempts = 0
        row.result = row.error = row.finished_at = None
        self.notify()
        return self._job(row)

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or ``None``."""
        row = self._rows.get(job_id)
        return None if row is None else self._job(row)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        task_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first (see :meth:`JobStore.list_jobs`)."""
        rows = [
            row
            for row in self._rows.values()
            if (status is None or row.status == status)
            and (task_name is None or row.task_name == task_name)
        ]
        rows.sort(key=lambda row: (row.created_at, row.seq), reverse=True)
        return [self._job(row) for row in rows[offset : offset + limit]]

    async def attempts(self, job_id: str) -> list[JobAttempt]:
        """The audit trail of a job, oldest first."""
        row = self._rows.get(job_id)
        return [] if row is None else [attempt_from_row(entry) for entry in row.trail]

    async def next_due_at(self, task_names: Sequence[str]) -> float | None:
        """When a claim could next find work (see :meth:`JobStore.next_due_at`)."""
        names = set(task_names)
        instants = [
            row.run_at if row.status == "queued" else row.lease_expires
            for row in self._rows.values()
            if row.task_name in names and row.status in ("queued", "running")
        ]
        return min((when for when in instants if when is not None), default=None)

    async def latest_schedule_key(self, prefix: str) -> str | None:
        """The greatest stored ``schedule_key`` starting with ``prefix``."""
        keys = [
            row.schedule_key
            for row in self._rows.values()
            if row.schedule_key is not None and row.schedule_key.startswith(prefix)
        ]
        return max(keys, default=None)

    async def purge(self, *, now: float) -> int:
        """Drop jobs finished more than ``retention`` seconds ago."""
        if self.retention is None:
            return 0
        cutoff = now - self.retention
        old = [
            job_id
            for job_id, row in self._rows.items()
            if row.finished_at is not None and row.finished_at < cutoff
        ]
        for job_id in old:
            del self._rows[job_id]
        return len(old)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for row in self._rows.values():
            counts[row.status] = counts.get(row.status, 0) + 1
        shown = " ".join(f"{status}={count}" for status, count in sorted(counts.items()))
        return f"<MemoryJobStore lease={self.lease:g} {shown}>".replace(" >", ">")
