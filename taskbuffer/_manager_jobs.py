"""The manager's side of durable jobs: its job members and the bridge to its worker.

:class:`~taskbuffer._job_members.JobMembers` holds the public job members of the manager (a base
class, so the manager's module stays about triggers); each raises ``RuntimeError`` naming the
``job_store`` option when the manager has no store. :class:`JobSide` does the work: it
validates and stores jobs, owns the :class:`~taskbuffer.jobs._worker.JobWorker` and turns cron
ticks into jobs for the scheduler. The jobs package never imports the manager: the manager
hands this module what the worker needs as callables.

The jobs package is imported only when a manager gets a store, so a manager without one
never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from ._clock import now_wall
from ._cron import Zone
from ._exceptions import TaskNotFoundError
from ._task import Task
from ._validation import check_count, check_optional_str, check_seconds, safe_repr

if TYPE_CHECKING:
    from .jobs import Job, JobAttempt, JobStatus, JobStore
    from .jobs._worker import JobWorker

__all__ = ("INT32_MAX", "INT32_MIN", "INT64_MAX", "JobSide", "check_id", "job_side_for")

logger = logging.getLogger("taskbuffer")

_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _default_worker_id() -> str:
    import socket  # only managers with a store need it

    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def job_side_for(
    job_store: Any,
    *,
    job_concurrency: Any,
    worker_id: Any,
    timezone: tzinfo | None,
    lookup: Callable[[str], Task[Any, Any] | None],
    run: Callable[[Task[Any, Any], Job], Awaitable[Any]],
    task_names: Callable[[], Sequence[str]],
) -> JobSide | None:
    """Check the manager's job options and build its :class:`JobSide` (``None``: no store).

    :raises TypeError: ``job_store`` is neither a ``JobStore``, a URL nor ``None``; or a
        wrongly typed ``job_concurrency`` / ``worker_id``.
    :raises ValueError: a URL of an unknown scheme, ``job_concurrency < 0``.
    """
    check_count("job_concurrency", job_concurrency, minimum=0)
    check_optional_str("worker_id", worker_id)
    if job_store is None:
        return None
    from .jobs import JobStore, job_store_from_url

    owned = isinstance(job_store, str)
    if owned:
        job_store = job_store_from_url(job_store)
    elif not isinstance(job_store, JobStore):
        raise TypeError(
            "job_store must be a taskbuffer.jobs.JobStore, a store URL (sqlite:///jobs.db, "
            f"postgresql://...) or None, not {safe_repr(job_store)}"
        )
    return JobSide(
        store=job_store,
        owned=owned,
        concurrency=job_concurrency,
        worker_id=worker_id or _default_worker_id(),
        timezone=timezone,
        lookup=lookup,
        run=run,
        task_names=task_names,
    )


class JobSide:
    """A manager's store, its worker, and cron ticks as jobs (semantic 7)."""

    def __init__(
        self,
        *,
        store: JobStore,
        owned: bool,
        concurrency: int,
        worker_id: str,
        timezone: tzinfo | None,
        lookup: Callable[[str], Task[Any, Any] | None],
        run: Callable[[Task[Any, Any], Job], Awaitable[Any]],
        task_names: Callable[[], Sequence[str]],
    ) -> None:
        self.store = store
        self.owned = owned  # built from a URL: the manager closes it when it stops
        self.concurrency = concurrency
        self.worker_id = worker_id
        self._zone = Zone(timezone)
        self._lookup = lookup
        self._run = run
        self._task_names = task_names
        self._opened = False
        self._worker: JobWorker | None = None
        from .jobs._once import OnceRuns

        self._once = OnceRuns()

    def __repr__(self) -> str:
        return f"<JobSide store={self.store!r} worker={self._worker!r}>"

    async def _open(self) -> JobStore:
        """The open store, with the one-off runs scheduled so far written to it."""
        if not self._opened:
            await self.store.open()
            self._opened = True
        await self._once.settle()  # a background write under way is part of "so far"
        if self._once.unwritten:
            await self._once.flush(self.store)
        return self.store

    # -- lifecycle (called by the manager) -----------------------------------------------

    async def open(self) -> None:
        """First step of the manager's start: open the store (``JobSchemaError`` here)."""
        await self._open()

    def start_worker(self) -> None:
        """Start working jobs (unless ``job_concurrency`` is 0); the store is open."""
        from .jobs._worker import JobWorker

        if self.concurrency > 0 and self._worker is None:
            self._worker = JobWorker(
                store=self.store,
                worker_id=self.worker_id,
                concurrency=self.concurrency,
                run=self._run_job,
                task_names=self._task_names,
            )
            self._worker.start()

    def _run_job(self, job: Job) -> Awaitable[Any]:
        # Not a coroutine of its own: the run's (no frame more per job).
        task = self._lookup(job.task_name)
        if task is None:
            from .jobs._worker import TaskGone  # only here: an import per job costs microseconds

            raise TaskGone(job.task_name)  # removed since the claim: the job goes back
        return self._run(task, job)

    async def stop_claiming(self) -> None:
        """First step of the manager's stop: claim nothing more."""
        if self._worker is not None:
            await self._worker.stop_claiming()

    async def finish_stop(self) -> None:
        """Last step of the manager's stop (its runs are over): commit, release, write the
        one-off runs scheduled, close."""
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.drain()
        await self._once.settle()
        if self._once.unwritten:
            await self._write_once_runs()
        if self.owned and self._opened:
            self._opened = False
            await self.store.close()

    def task_added(self) -> None:
        """A task was registered: its jobs may be claimable now."""
        if self._worker is not None:
            self._worker.wake()

    # -- one-off runs as jobs, stored when scheduled (see taskbuffer.jobs._once) ----------

    def schedule_once(self, token: object, task_name: str, input: Any, when: float) -> None:
        """Store a one-off run as a job due at ``when``: at once in the background on a
        running loop, else at the manager's next awaited job call or ``start()``."""
        self._once.add(token, task_name, input, when)
        self._once.write_soon(self._write_once_runs)

    def deschedule_once(self, task_name: str) -> None:
        """Drop the pending one-off runs of ``task_name`` (stored ones still queued are
        cancelled)."""
        self._once.drop(task_name)
        self._once.write_soon(self._write_once_runs)

    async def fire_once(self, token: object) -> None:
        """The one-off run ``token`` is due: make sure it is stored (it normally is)."""
        await self._once.fire(token, await self._open())

    async def _write_once_runs(self) -> None:
        try:
            await self._open()
        except Exception as exc:  # nobody awaits this write: logged, tried again later
            logger.error(
                "one-off runs could not be stored as jobs yet; tried again at the manager's "
                "next job call, start(), stop() and their instant",
                exc_info=exc,
            )

    # -- cron ticks as jobs ---------------------------------------------------------------

    @staticmethod
    def tick_key(task_name: str, when: float) -> str:
        """The ``schedule_key`` of the tick of ``task_name`` at epoch ``when``; keys of one
        task sort in time order."""
        instant = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"cron:{task_name}:{instant}"

    async def enqueue_tick(self, task_name: str, input: Any, when: float, *, cron: bool) -> bool:
        """Store a cron tick (named, so stored once across managers) or a one-off run as a job
        due at ``when``; True when this call stored it."""
        from .jobs import JobRequest

        store = await self._open()
        key = self.tick_key(task_name, when) if cron else None
        request = JobRequest(task_name=task_name, input=input, run_at=when, schedule_key=key)
        before = now_wall()
        job = await store.enqueue(request, now=before)
        # Stored by this call when created now (datetimes keep microseconds): another
        # manager's copy of the tick was created at another instant.
        return key is None or abs(job.created_at.timestamp() - before) < 2e-6

    async def last_tick(self, task_name: str) -> float | None:
        """The instant of the latest stored cron tick of ``task_name``."""
        store = await self._open()
        key = await store.latest_schedule_key(f"cron:{task_name}:")
        if key is None:
            return None
        stamp = key.rsplit(":", 3)[-3:]
        return (
            datetime.strptime(":".join(stamp), "%Y-%m-%dT%H:%M:%S.%fZ")
            .replace(tzinfo=UTC)
            .timestamp()
        )

    # -- the members ----------------------------------------------------------------------

    def _task_name(self, task_or_name: Any) -> str:
        if isinstance(task_or_name, Task):
            name = task_or_name.name
            if name is None or self._lookup(name) is not task_or_name:
                raise TaskNotFoundError(name or "unnamed")
            return name
        if not isinstance(task_or_name, str):
            raise TypeError(f"task_or_name must be a Task or a str, not {safe_repr(task_or_name)}")
        if self._lookup(task_or_name) is None:
            raise TaskNotFoundError(task_or_name)
        return task_or_name

    def _run_at(self, run_at: Any, delay: Any, now: float) -> float:
        if run_at is not None and delay is not None:
            raise ValueError("run_at and delay are exclusive: pass one of them, or neither")
        if delay is not None:
            seconds = check_seconds("delay", delay)
            assert seconds is not None
            return now + seconds
        if run_at is None:
            return now
        if not isinstance(run_at, datetime):
            raise TypeError(f"run_at must be a datetime or None, not {safe_repr(run_at)}")
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            return self._zone.first_reaching(run_at)
        return run_at.timestamp()

    async def enqueue(
        self,
        task_or_name: Any,
        input: Any,
        *,
        priority: Any,
        run_at: Any,
        delay: Any,
        dedupe_key: Any,
        max_attempts: Any,
    ) -> Job:
        """Validate, then store one job (see ``TaskManager.enqueue``)."""
        from .jobs import JobRequest

        name = self._task_name(task_or_name)
        _check_stored_int("priority", priority, minimum=INT32_MIN)
        check_optional_str("dedupe_key", dedupe_key)
        _check_stored_int("max_attempts", max_attempts, minimum=1)
        now = now_wall()
        request = JobRequest(
            task_name=name,
            input=input,
            priority=priority,
            run_at=self._run_at(run_at, delay, now),
            dedupe_key=dedupe_key,
            max_attempts=max_attempts,
        )
        store = await self._open()
        return await store.enqueue(request, now=now)

    async def get_job(self, job_id: str) -> Job | None:
        """The job, or ``None``."""
        store = await self._open()
        return await store.get(check_id(job_id))

    async def list_jobs(
        self, *, status: JobStatus | None, task_name: str | None, limit: int, offset: int
    ) -> list[Job]:
        """Jobs, newest first, validated filters."""
        if status is not None and status not in _STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(_STATUSES)} or None, not {status!r}"
            )
        check_optional_str("task_name", task_name)
        _check_stored_int("limit", limit, minimum=0, maximum=INT64_MAX)
        _check_stored_int("offset", offset, minimum=0, maximum=INT64_MAX)
        store = await self._open()
        return await store.list_jobs(status=status, task_name=task_name, limit=limit, offset=offset)

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel it (see ``TaskManager.cancel_job``)."""
        store = await self._open()
        return await store.cancel(check_id(job_id), now=now_wall())

    async def retry_job(self, job_id: str) -> Job:
        """Re-queue a failed or cancelled job."""
        store = await self._open()
        return await store.retry(check_id(job_id), now=now_wall())

    async def get_job_attempts(self, job_id: str) -> list[JobAttempt]:
        """The audit trail."""
        store = await self._open()
        return await store.attempts(check_id(job_id))

    async def wait_for_job(self, job_id: str, timeout: float | None) -> Job:  # noqa: ASYNC109
        """Wait until the job has finished; ``TimeoutError`` after ``timeout`` seconds.

        The first look-up is not cut short: a job that has finished already is returned
        even with ``timeout=0``, on every store (a store call may take a few loop
        iterations); ``timeout`` bounds the wait for a job still queued or running.
        """
        seconds = check_seconds("timeout", timeout, infinite=True, none=True)
        check_id(job_id)
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None or math.isinf(seconds) else loop.time() + seconds
        store = await self._open()
        changed = asyncio.Event()

        def signal() -> None:
            loop.call_soon_threadsafe(changed.set)

        unsubscribe = store.subscribe(signal)
        poll = min(store.poll_interval, 1.0)
        try:
            job = await self._finished_job(store, job_id)
            async with asyncio.timeout_at(deadline):
                while job is None:
                    try:
                        async with asyncio.timeout(poll):
                            await changed.wait()
                    except TimeoutError:
                        pass
                    changed.clear()  # before the look-up: a change during it is not missed
                    job = await self._finished_job(store, job_id)
            return job
        finally:
            unsubscribe()

    @staticmethod
    async def _finished_job(store: JobStore, job_id: str) -> Job | None:
        job = await store.get(job_id)
        if job is None:
            raise KeyError(f"no job with id {job_id!r}")
        return job if job.finished else None


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
"""The integers every job store can hold (PostgreSQL's ``integer``)."""

INT64_MAX = 2**63 - 1
"""The largest ``LIMIT`` and ``OFFSET`` every store's SQL takes."""


def _check_stored_int(name: str, value: Any, *, minimum: int, maximum: int = INT32_MAX) -> None:
    """An int option of a job or a look-up, within what every store can hold."""
    accepted = f"an int from {minimum} to {maximum} (what every job store holds)"
    if isinstance(value, bool) or not isinstance(value, int):
        shown = f"{type(value).__qualname__} {safe_repr(value)}"
        raise TypeError(f"{name} must be {accepted}, not {shown}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be {accepted}, not {value!r}")


def check_id(job_id: Any) -> str:
    """A job id must be a ``str``."""
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be a str, not {safe_repr(job_id)}")
    return job_id
