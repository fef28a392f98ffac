"""The worker that a manager with a job store runs: claim, lease, renew, flush.

It knows nothing of the manager: it is handed ``run(job)`` (run a claimed job through the
constraints with its input, priority and id, returning the result or raising) and
``task_names()`` (the tasks registered now). One asyncio task claims, one renews leases:

- Claiming takes up to the free capacity in one store call and never holds more than
  ``concurrency`` jobs (a job counts as held until its outcome is committed, or while a claim
  for its slot is under way). It then sleeps until the store signals work (an enqueue in this
  process, another process's commit), a job ends here, the next delayed job falls due, or
  ``store.poll_interval`` passes.
- Outcomes are committed in batches: when a run ends while others still run, its outcome
  waits up to :data:`FLUSH_WINDOW` seconds and every outcome that arrives meanwhile shares its
  commit; as soon as no run is left (or the window has passed) the batch is committed. The
  same store call claims replacements for the slots the batch frees
  (``store.finish_and_claim``: one transaction), so a busy worker commits once per batch.
- Leases are renewed every ``lease / 3`` in one call for all held jobs. A renewal that reports
  a lost lease cancels the local run and its outcome is dropped (and logged); one that reports
  a cancel request cancels the run and finishes the job ``cancelled``.
- ``stop_claiming()`` then ``drain()``: runs that the manager refused or cancelled because it
  is stopping are released (back to ``queued``, the attempt not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._clock import now_wall
from .._exceptions import TaskManagerStoppedError
from ._store import JobStore
from ._values import Claim, Job, JobError, JobOutcome

__all__ = ("FLUSH_WINDOW", "JobWorker", "TaskGone")

logger = logging.getLogger("taskbuffer")

FLUSH_WINDOW = 0.002
"""Seconds an outcome waits for others to share its commit (the first of a batch waits this
long; the batch is committed together)."""

RETRY_DELAY = 1.0
"""Seconds before a failed store call (claim, finish, renew) is tried again."""

PURGE_INTERVAL = 3600.0
"""Seconds between two purges of finished jobs past the store's retention."""


class TaskGone(Exception):
    """Raised by the ``run`` a worker is handed when the job's task is no longer registered
    there: the job is given back to the queue, not failed. (A ``TaskNotFoundError`` raised by
    the job's own code fails the job like any other error.)"""


def _retrieve(runner: asyncio.Task[Any]) -> None:
    if not runner.cancelled():
        runner.exception()


class _Held:
    __slots__ = ("cancel_requested", "claim", "lost", "runner")

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.runner: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.lost = False


class JobWorker:
    """Works the jobs of one manager on one store (see the module docstring)."""

    def __init__(
        self,
        *,
        store: JobStore,
        worker_id: str,
        concurrency: int,
        run: Callable[[Job], Awaitable[Any]],
        task_names: Callable[[], Sequence[str]],
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.concurrency = concurrency
        self._run = run
        self._task_names = task_names
        self._held: dict[str, _Held] = {}  # token -> held job
        self._pending: list[JobOutcome] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._claimer: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None  # the thread running the loop
        self._unsubscribe: Callable[[], None] | None = None
        self._claiming = False
        self._running = 0  # runners not yet ended
        self._reserved = 0  # slots a claim under way may fill
        self._quiet: asyncio.Event | None = None  # set while no runner runs

    def __repr__(self) -> str:
        return (
            f"<JobWorker id={self.worker_id!r} held={len(self._held)} "
            f"concurrency={self.concurrency} claiming={self._claiming}>"
        )

    @property
    def held(self) -> int:
        """Jobs held now (running, or finished with the outcome not yet committed)."""
        return len(self._held)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming and renewing on the running loop (the store is open)."""
        loop = self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._claiming = True
        self._unsubscribe = self.store.subscribe(self._signal)
        self._claimer = loop.create_task(self._claim_loop(), name="taskbuffer-job-claimer")
        self._renewer = loop.create_task(self._renew_loop(), name="taskbuffer-job-renewer")

    def _signal(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        if threading.get_ident() == self._thread:
            # On the loop's own thread (a flush, an enqueue here): set at once, without the
            # write to the loop's self-pipe and the extra loop iteration that reads it. Not
            # while every slot is taken: the claimer would find nothing to do (whatever frees
            # a slot signals after), and a busy worker's own commits notify it every batch.
            if len(self._held) < self.concurrency or not self._claiming:
                wake.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(wake.set)

    def wake(self) -> None:
        """Make the claimer look for work now (the manager registered a task)."""
        self._signal()

    async def stop_claiming(self) -> None:
        """Claim nothing more; wait for a claim in progress to end.

        A claim under way is not cancelled (its transaction would commit anyway, leaving jobs
        held by nobody until their lease ran out): its jobs start, meet the stopping manager
        and are released.
        """
        self._claiming = False
        claimer, self._claimer = self._claimer, None
        if claimer is not None:
            if self._wake is not None:
                self._wake.set()
            await claimer

    async def drain(self) -> None:
        """After the manager's runs ended: commit every outcome, stop renewing, unsubscribe."""
        while True:  # a flush under way may have claimed jobs: they run (and are released)
            runners = [h.runner for h in self._held.values() if h.runner is not None]
            if runners:
                await asyncio.wait(runners)
            elif self._flush_task is not None:
                await self._flush_task
            else:
                break
        # One last try: a store that is down now leaves these jobs to their lease's end.
        await self._flush_now(retry=False)
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._wake = None

    # -- claiming -------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while self._claiming:
            wake.clear()
            free = self.concurrency - len(self._held) - self._reserved
            names = list(self._task_names())
            sleep = self.store.poll_interval
            if free > 0 and names:
                self._reserved += free
                try:
                    claims = await self.store.claim(
                        worker_id=self.worker_id, task_names=names, limit=free, now=now_wall()
                    )
                except Exception:
                    logger.exception("job worker %r: claiming failed; retrying", self.worker_id)
                    claims = None
                finally:
                    self._reserved -= free
                # Begun at once, before anything else can fail: a claim committed is a
                # job that this worker holds and must run (or give back).
                for claim in claims or ():
                    self._begin(claim)
                if claims is None:
                    sleep = RETRY_DELAY
                elif len(claims) == free:
                    continue  # there may be more: claim again once capacity frees
                else:
                    sleep = await self._sleep_until_due(names, sleep)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(sleep) else sleep):
                    await wake.wait()

    async def _sleep_until_due(self, names: Sequence[str], sleep: float) -> float:
        """``sleep``, shortened to the moment the next delayed job of ``names`` falls due."""
        try:
            due = await self.store.next_due_at(names)
        except Exception:
            logger.exception("job worker %r: looking for the next due job failed", self.worker_id)
            return RETRY_DELAY
        return sleep if due is None else min(sleep, max(due - now_wall(), 0.0))

    def _begin(self, claim: Claim) -> None:
        held = _Held(claim)
        self._held[claim.token] = held
        loop, quiet = self._loop, self._quiet
        assert loop is not None and quiet is not None
        self._running += 1
        quiet.clear()
        held.runner = loop.create_task(self._execute(held), name=f"taskbuffer-job-{claim.job.id}")

    async def _execute(self, held: _Held) -> None:
        claim = held.claim
        try:
            try:  # the run is awaited here, not in a coroutine more (one per job)
                result = await self._run(claim.job)
            except BaseException as error:
                outcome = self._outcome_of_error(held, error)
            else:
                outcome = self._succeeded(held, result)
        except BaseException:  # an interrupt, raised out of the loop: give the job back
            self._ended_run(held)
            if not held.lost:
                self._pending.append(self._released(held))
                self._flush_later()
            raise
        self._ended_run(held)
        if outcome is not None and outcome.outcome == "released" and self._cancelled_here():
            await self._release_now(outcome)
            return
        if outcome is None:
            self._held.pop(claim.token, None)
            self._signal()
            logger.warning(
                "job %r of task %r: the lease was lost; its outcome is ignored",
                claim.job.id,
                claim.job.task_name,
            )
            return
        self._pending.append(outcome)
        self._flush_later()

    def _ended_run(self, held: _Held) -> None:
        held.runner = None
        self._running -= 1
        if self._running == 0 and self._quiet is not None:
            self._quiet.set()

    def _succeeded(self, held: _Held, result: Any) -> JobOutcome | None:
        """How the claim of a run that returned ``result`` ends (``None``: the lease was lost)."""
        if held.lost:
            return None
        try:
            return self.store.succeeded_outcome(held.claim, result)
        except Exception as error:  # a serializer that fails otherwise than encode() expects
            return self._ended(held, "failed", JobError.from_exception(error))

    def _outcome_of_error(self, held: _Held, error: BaseException) -> JobOutcome | None:
        """How the claim of a run that raised ``error`` ends (``None``: the lease was lost).

        Only this worker (or the loop's end) cancels a runner; a ``CancelledError`` that
        the job's own code raises ends the job ``cancelled``, for good, and any other
        error from the run (``TaskNotFoundError`` and ``BaseException`` subclasses
        included) fails it: given back, the job would only run and fail again. A
        ``KeyboardInterrupt`` or ``SystemExit`` is raised again (see :meth:`_execute`).
        """
        runner = held.runner  # this task (set before it first ran)
        assert runner is not None
        if isinstance(error, asyncio.CancelledError):
            if runner.cancelling():
                return self._interrupted(held, None)
            return self._ended(held, "cancelled", JobError.from_exception(error))
        if isinstance(error, TaskGone):
            return self._ended(held, "released", None)
        if isinstance(error, TaskManagerStoppedError):
            return self._interrupted(held, error)
        if isinstance(error, KeyboardInterrupt | SystemExit):
            runner.add_done_callback(_retrieve)  # the loop raises it; give the job back
            raise error
        return self._ended(held, "failed", JobError.from_exception(error))

    @staticmethod
    def _cancelled_here() -> bool:
        """Whether the running runner was cancelled: not by this worker (a lost lease or a
        cancel request never gives the job back), so by the loop's end."""
        runner = asyncio.current_task()
        return runner is not None and runner.cancelling() > 0

    async def _release_now(self, outcome: JobOutcome) -> None:
        """Give back a job whose runner someone else cancelled (the loop's end: asyncio.run
        cancels every task and waits for them) within the runner itself, which is awaited;
        a flush task made now might never run."""
        try:
            await self.store.finish([outcome], now=now_wall())
        except Exception:
            logger.exception("job %r: giving it back failed (its lease runs out)", outcome.job_id)
        self._held.pop(outcome.token, None)
        self._signal()

    def _released(self, held: _Held) -> JobOutcome:
        claim = held.claim
        return JobOutcome(job_id=claim.job.id, token=claim.token, outcome="released")

    def _flush_later(self) -> None:
        if self._flush_task is None:
            loop = self._loop
            assert loop is not None
            self._flush_task = loop.create_task(self._flush_soon())

    def _ended(self, held: _Held, outcome: Any, error: JobError | None) -> JobOutcome | None:
        if held.lost:
            return None
        claim = held.claim
        return JobOutcome(job_id=claim.job.id, token=claim.token, outcome=outcome, error=error)

    def _interrupted(self, held: _Held, error: BaseException | None) -> JobOutcome | None:
        """A run cancelled or refused: cancelled on request, given back when this worker is
        stopping (or the loop cancelled it), failed otherwise."""
        if held.cancel_requested:
            return self._ended(held, "cancelled", None)
        if not self._claiming or error is None:
            return self._ended(held, "released", None)
        return self._ended(held, "failed", JobError.from_exception(error))

    # -- committing outcomes --------------------------------------------------------------

    async def _flush_soon(self) -> None:
        try:
            # Made by the first run to end in this loop iteration: the others of the iteration
            # ran before this task's first step, so they are in the batch already.
            quiet = self._quiet
            if self._running and quiet is not None:  # others still run: give them a moment
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_WINDOW):
                        await quiet.wait()
            await self._flush_now()
        finally:
            self._flush_task = None

    async def _flush_now(self, *, retry: bool = True) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                applied = await self._finish(batch)
            except Exception:
                logger.exception(
                    "job worker %r: committing %d outcome(s) failed%s",
                    self.worker_id,
                    len(batch),
                    "; retrying" if retry else "; their leases will run out",
                )
                if not retry:
                    return
                self._pending[:0] = batch
                await asyncio.sleep(RETRY_DELAY)
                continue
            for outcome, ok in zip(batch, applied, strict=True):
                self._held.pop(outcome.token, None)
                if not ok:
                    logger.warning(
                        "job %r: outcome %r ignored: this worker no longer holds its lease",
                        outcome.job_id,
                        outcome.outcome,
                    )
            self._signal()

    async def _finish(self, batch: list[JobOutcome]) -> list[bool]:
        """Commit ``batch`` and, while claiming, claim jobs for the slots it frees in the same
        store call (begun at once)."""
        names = list(self._task_names()) if self._claiming else []
        limit = self.concurrency - (len(self._held) - len(batch)) - self._reserved
        if limit <= 0 or not names:
            return await self.store.finish(batch, now=now_wall())
        self._reserved += limit
        try:
            applied, claims = await self.store.finish_and_claim(
                batch, worker_id=self.worker_id, task_names=names, limit=limit, now=now_wall()
            )
        finally:
            self._reserved -= limit
        for outcome in batch:  # their slots are free: the claims take them
            self._held.pop(outcome.token, None)
        for claim in claims:
            self._begin(claim)
        return applied

    # -- leases ---------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        interval = self.store.lease / 3
        next_purge = now_wall()
        while True:
            if now_wall() >= next_purge:
                next_purge = now_wall() + PURGE_INTERVAL
                try:
                    await self.store.purge(now=now_wall())
                except Exception:
                    logger.exception("job worker %r: purging old jobs failed", self.worker_id)
            await asyncio.sleep(interval)
            tokens = [token for token, held in self._held.items() if held.runner is not None]
            if not tokens:
                continue
            try:
                report = await self.store.renew(tokens, now=now_wall())
            except Exception:
                logger.exception("job worker %r: renewing leases failed", self.worker_id)
                continue
            self._apply(report.lost, report.cancel_requested)

    def _apply(self, lost: frozenset[str], cancel_requested: frozenset[str]) -> None:
        for token in lost:
            held = self._held.get(token)
            if held is not None and held.runner is not None:
                held.lost = True
                held.runner.cancel()
        for token in cancel_requested - lost:
            held = self._held.get(token)
            if held is not None and held.runner is not None and not held.cancel_requested:
                held.cancel_requested = True
                held.runner.cancel()
