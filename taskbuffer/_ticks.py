"""What a scheduled run (a *tick*) does around the run itself: the ``missed`` notice, the offer
to the distributed coordinator and the report back to it.

The scheduler (``_scheduler.py``) decides when a tick is due and hands it to the manager; these
functions are the tick's dealings with the task's event stream and with the coordinator.
Nobody awaits a tick, so what goes wrong here is logged, not raised, except a cancellation
(the tick's own) and an interrupt (see :func:`passes_through`).

With a distributed coordinator, each cron tick is first offered to it and runs here only if
it answers ``should_trigger``; one-off runs are not offered. A run that coalesced missed ticks
is offered as the oldest of them, the tick it is late for: a coordinator that refuses ticks
that late (the Redis one's ``max_tick_age``) keeps a manager resumed after a long pause from
claiming a recent tick that others may have run meanwhile (and that Redis may have forgotten).

With a job store (the scheduler's ``ticks_as_jobs``, set by the manager), a tick or one-off
run is not run here: it is a job due at its instant (a cron tick stored when it falls due
under a key naming task and instant, so it is stored once however many managers share the
store; a one-off run stored when it is scheduled, see :mod:`taskbuffer.jobs._once`), and
whichever worker claims it runs it; the coordinator is not asked. :meth:`Scheduler.catch_up`
turns the ticks missed while no manager ran into one job.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ._clock import now_wall, to_datetime
from ._exceptions import TaskManagerStoppedError
from ._task import emit_notice
from ._validation import safe_str
from .distributed import (
    COORDINATOR_TIMEOUT,
    AbstractDistributedCoordinator,
    DistributedRequestStatus,
    DistributedTaskRequest,
)

if TYPE_CHECKING:
    from ._cron import CronSchedule
    from ._manager_jobs import JobSide
    from ._schedule_entry import Entry
    from ._task import Task

__all__ = (
    "MISSED_COUNT_LIMIT",
    "catch_up_ticks",
    "describe",
    "offer",
    "passes_through",
    "report",
    "report_missed",
    "retrieve",
    "run_logged",
    "store_tick",
)

logger = logging.getLogger("taskbuffer")

# Counting missed ticks stops here (a loop blocked for days under an every-second schedule).
MISSED_COUNT_LIMIT = 100_000


def report_missed(
    task: Task[Any, Any],
    cron: CronSchedule,
    missed: int,
    while_: str = "the event loop was blocked",
) -> None:
    """Say that ``missed`` ticks of ``cron`` were coalesced into this run (log and event)."""
    count = f"{missed}+" if missed >= MISSED_COUNT_LIMIT else str(missed)
    ticks_were = "tick was" if missed == 1 else "ticks were"
    message = (
        f"{count} {ticks_were} missed while {while_} ({cron.expression!r}); coalesced into this run"
    )
    logger.warning("task %r: %s", task.name, message)
    emit_notice(task, "missed", message)


async def store_tick(jobs: JobSide, task: Task[Any, Any], entry: Entry, when: float) -> None:
    """Store a cron tick of a registered task as a job, or make sure a one-off run that falls
    due is stored (it was written when scheduled); a failure is logged (nobody awaits a
    tick)."""
    assert task.name is not None
    try:
        if entry.cron is None:
            await jobs.fire_once(entry)
        else:
            await jobs.enqueue_tick(task.name, entry.input, when, cron=True)
    except Exception as exc:
        logger.error("%s could not be stored as a job", describe(task, entry.cron), exc_info=exc)


async def catch_up_ticks(jobs: JobSide, task: Task[Any, Any], cron: CronSchedule) -> None:
    """Store one job for the ticks of ``cron`` missed since the task's last stored tick (no
    manager sharing the store was running), with a ``missed`` event."""
    if task.name is None:
        return
    last = await jobs.last_tick(task.name)
    if last is None:
        return
    now = now_wall()
    missed, latest = 0, None
    following = cron.next_after(last)
    while following <= now and missed < MISSED_COUNT_LIMIT:
        missed, latest = missed + 1, following
        following = cron.next_after(following)
    if latest is not None and await jobs.enqueue_tick(task.name, None, latest, cron=True):
        report_missed(task, cron, missed, while_="no worker was running")


async def offer(
    coordinator: AbstractDistributedCoordinator,
    submitter_id: str,
    task: Task[Any, Any],
    when: float,
) -> DistributedTaskRequest | None:
    """Offer the tick at ``when``; the request if it is to run here, else ``None``."""
    request = DistributedTaskRequest(
        submitter_id=submitter_id,
        request_response_id=os.urandom(16).hex(),
        task_name=task.name or "unnamed",
        task_version=task.version,
        task_execution_time=when,
        task_execution_timeout=task.timeout,
        task_execution_parallel=1,
        status="requesting",
    )
    try:
        async with asyncio.timeout(COORDINATOR_TIMEOUT):
            answer = await coordinator.fire_distributed_task_request(request)
    except BaseException as exc:
        if passes_through(exc):
            raise
        if isinstance(exc, TimeoutError):
            reason = f"the coordinator did not answer within {COORDINATOR_TIMEOUT:g} s"
        else:
            reason = f"the coordinator failed: {type(exc).__name__}: {safe_str(exc)}"
        message = f"tick at {to_datetime(when).isoformat()} not run here: {reason}"
        logger.warning("task %r: %s", task.name, message, exc_info=exc)
        emit_notice(task, "skipped", message)
        return None
    if not answer.should_trigger:
        logger.debug(
            "task %r: the coordinator gave the tick at %s elsewhere (%s)",
            task.name,
            to_datetime(when).isoformat(),
            answer.reason,
        )
        return None
    return request


async def report(
    coordinator: AbstractDistributedCoordinator, request: DistributedTaskRequest
) -> None:
    """Tell the coordinator what became of a tick; a failure to do so is only logged."""
    try:
        async with asyncio.timeout(COORDINATOR_TIMEOUT):
            await coordinator.update_distributed_task_request(request)
    except BaseException as exc:
        if passes_through(exc):
            raise
        logger.warning(
            "task %r: reporting the tick at %s to the coordinator failed",
            request.task_name,
            to_datetime(request.task_execution_time).isoformat(),
            exc_info=exc,
        )


async def run_logged(run: Awaitable[Any], what: str) -> DistributedRequestStatus:
    """Await the tick's run (through the manager's constraints); ``"succeeded"`` or
    ``"failed"``. Errors are logged here (the run itself emitted ``failed``), never left
    unretrieved; only a cancellation and an interrupt are raised."""
    try:
        await run
    except TaskManagerStoppedError as exc:
        logger.debug("%s did not complete: %s", what, exc)
    except Exception as exc:
        logger.error("%s failed", what, exc_info=exc)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            raise
        # Not an Exception, yet the run recorded it as a failure like any other.
        logger.error("%s failed", what, exc_info=exc)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            # asyncio raises these out of the loop; retrieved, so that it does not also log
            # "Task exception was never retrieved" for the tick.
            tick = asyncio.current_task()
            assert tick is not None
            tick.add_done_callback(retrieve)
            raise
        # Any other: nobody awaits a tick, so it ends here, logged (raising it would only
        # leave an exception that is never retrieved).
    else:
        return "succeeded"
    return "failed"


def passes_through(error: BaseException) -> bool:
    """Whether what a coordinator raised must leave the tick: a cancellation (the tick's own)
    or an interrupt (asyncio raises it out of the loop; retrieved, so that it is not also
    logged as "never retrieved"). Anything else, ``BaseException`` subclasses included, is a
    coordinator failure: nobody awaits a tick, so raising it would only lose it."""
    if isinstance(error, KeyboardInterrupt | SystemExit):
        tick = asyncio.current_task()
        if tick is not None:
            tick.add_done_callback(retrieve)
        return True
    return isinstance(error, asyncio.CancelledError)


def retrieve(tick: asyncio.Task[Any]) -> None:
    """A done callback marking the tick's exception as retrieved."""
    if not tick.cancelled():
        tick.exception()


def describe(task: Task[Any, Any], cron: CronSchedule | None) -> str:
    kind = "one-off" if cron is None else "scheduled"
    return f"{kind} run of task {task.name!r}"
