"""One-off runs (``schedule_task_at``) stored as jobs when they are scheduled.

``schedule_task_at`` is synchronous and a store write is not, so the call only records the
write; the manager then performs it: at once in the background when the call was made on a
running event loop, and in any case before its next awaited job call, its ``start()`` and the
end of its ``stop()``. Each one-off run is stored under a ``schedule_key`` of its own
(``once:<task>:<random>``), so every write of it is idempotent: a write tried twice (a
background write and a flush racing, a retry after a failure, the run's instant arriving
first) stores one job. Descheduling marks the runs of a task dropped: a run not yet written
is never written, a written one is cancelled (if it has not started).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .._clock import now_wall
from ._store import JobStore
from ._values import JobRequest

__all__ = ("OnceRuns",)


class _Run:
    __slots__ = ("dropped", "job_id", "request", "undone")

    def __init__(self, request: JobRequest) -> None:
        self.request = request
        self.job_id: str | None = None
        self.dropped = False
        self.undone = False  # dropped after it was stored, and its job cancelled

    @property
    def needs_write(self) -> bool:
        """To store (not dropped yet), or stored and to cancel (dropped). A run dropped
        before it was stored needs nothing: a write of it under way cancels it when done."""
        if self.dropped:
            return self.job_id is not None and not self.undone
        return self.job_id is None


class OnceRuns:
    """The one-off runs of one manager and the writes they still need."""

    def __init__(self) -> None:
        self._runs: dict[object, _Run] = {}  # scheduler's token -> run, until it falls due
        self._outbox: list[_Run] = []  # runs to write (or to cancel, once dropped)
        self._writers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<OnceRuns pending={len(self._runs)} unwritten={len(self._outbox)}>"

    @property
    def unwritten(self) -> bool:
        """True while some write (or cancel) has not been made yet."""
        return bool(self._outbox)

    def add(self, token: object, task_name: str, input: Any, when: float) -> None:
        """Record the one-off run ``token`` of ``task_name`` at epoch ``when`` to be stored."""
        key = f"once:{task_name}:{uuid.uuid4().hex}"
        run = _Run(JobRequest(task_name=task_name, input=input, run_at=when, schedule_key=key))
        self._runs[token] = run
        self._outbox.append(run)

    def drop(self, task_name: str) -> None:
        """Deschedule every pending one-off run of ``task_name``."""
        for token, run in list(self._runs.items()):
            if run.request.task_name == task_name:
                del self._runs[token]
                run.dropped = True
                self._outbox.append(run)

    def write_soon(self, write: Callable[[], Awaitable[None]]) -> None:
        """Run ``write()`` in the background on the running loop, unless a background write
        is under way (it takes what was recorded meanwhile: one transaction for many
        calls); with no running loop, the write waits for the manager's next job call."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if any(not w.done() and w.get_loop() is loop for w in self._writers):
            return
        writer = loop.create_task(_awaited(write()), name="taskbuffer-once-runs")
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)

    async def settle(self) -> None:
        """Wait for the background writes under way (they log their own failures)."""
        current = asyncio.current_task()
        loop = asyncio.get_running_loop()  # a writer of a loop closed since is forgotten
        writers = [w for w in self._writers if w is not current and w.get_loop() is loop]
        if writers:
            await asyncio.wait(writers)

    async def flush(self, store: JobStore) -> None:
        """Make every recorded write, the new runs in one transaction; a failure leaves what
        it did not do recorded."""
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                await self._write(store, batch)
            except BaseException:
                self._outbox[:0] = [run for run in batch if run.needs_write]
                raise

    async def fire(self, token: object, store: JobStore) -> None:
        """The run ``token`` falls due: make sure it is stored (it normally is already)."""
        run = self._runs.pop(token, None)
        if run is None or run.job_id is not None:
            return
        try:
            await self._write(store, [run])
        except BaseException:
            self._outbox.append(run)
            raise

    @staticmethod
    async def _write(store: JobStore, runs: list[_Run]) -> None:
        new = [run for run in runs if run.job_id is None and not run.dropped]
        if new:
            jobs = await store.enqueue_many([run.request for run in new], now=now_wall())
            for run, job in zip(new, jobs, strict=True):
                run.job_id = job.id
        for run in runs:
            if run.dropped and run.needs_write:
                assert run.job_id is not None
                # Only while queued: descheduling drops runs still to come, as it does
                # without a store, and leaves one that a worker has begun alone.
                stored = await store.get(run.job_id)
                if stored is not None and stored.status == "queued":
                    await store.cancel(run.job_id, now=now_wall())
                run.undone = True


async def _awaited(write: Awaitable[None]) -> None:
    await write
