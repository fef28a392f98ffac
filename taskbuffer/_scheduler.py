"""The scheduler of a TaskManager: cron schedules and one-off runs on the loop's clock.

Timing. One timer per manager, armed with ``loop.call_at`` for the soonest schedule. Wall-clock
instants are derived from the loop clock (:mod:`taskbuffer._clock`), so a virtual-time loop
moves cron too. Each tick runs once, in its own asyncio task, through the manager's
constraints. If the loop was blocked past one or more further ticks of the same schedule, they
are coalesced into that one run: the task emits a ``missed`` event saying how many were missed
and the ``taskbuffer`` logger warns; nothing is replayed in a burst.

What a tick does around its run (the coordinator, a job store) is in :mod:`taskbuffer._ticks`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import os
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, Protocol

from ._clock import loop_to_wall, now_wall, to_datetime
from ._cron import ONCE, CronSchedule, Zone
from ._metadata import ScheduledTaskInfo
from ._schedule_entry import Entry, soonest_runs
from ._task import set_cron_schedule, set_next_run
from ._ticks import (
    MISSED_COUNT_LIMIT,
    catch_up_ticks,
    describe,
    offer,
    report,
    report_missed,
    run_logged,
    store_tick,
)
from ._validation import safe_repr

if TYPE_CHECKING:
    from ._manager_jobs import JobSide
    from ._task import Task
    from .distributed import (
        AbstractDistributedCoordinator,
        DistributedRequestStatus,
        DistributedTaskRequest,
    )

__all__ = ("Scheduler", "SchedulerHost")

logger = logging.getLogger("taskbuffer")


class SchedulerHost(Protocol):
    """What the scheduler needs of the manager it schedules for (a ``TaskManager``, which the
    scheduler does not import: imports run from the manager to the scheduler)."""

    @property
    def timezone(self) -> tzinfo | None: ...

    @property
    def distributed_coordinator(self) -> AbstractDistributedCoordinator | None: ...

    def get_task_by_name(self, name: str) -> Task[Any, Any] | None: ...

    async def trigger_task_constrained(self, task: Task[Any, Any], input: Any) -> Any: ...


class Scheduler:
    """The schedules of one manager: cron schedules and pending one-off runs.

    Schedules are kept (and listed) whether or not the manager is started; the timer runs only
    between ``start()`` and ``stop()``.
    """

    __slots__ = (
        "_anchor",
        "_cron",
        "_dead",
        "_heap",
        "_loop",
        "_manager",
        "_once",
        "_once_count",
        "_seq",
        "_started",
        "_ticks",
        "_timer",
        "_timer_when",
        "submitter_id",
        "ticks_as_jobs",
    )

    def __init__(self, manager: SchedulerHost) -> None:
        self._manager = manager
        self._cron: dict[Task[Any, Any], Entry] = {}
        # Each task's pending one-off runs, a heap on (when, seq): the soonest is [0], and it
        # is the one the timer fires next, so scheduling and firing cost O(log n) each.
        self._once: dict[Task[Any, Any], list[tuple[float, int, Entry]]] = {}
        self._once_count = 0
        self._heap: list[tuple[float, int, Entry]] = []
        self._dead = 0  # inactive entries still in the heap
        self._seq = itertools.count()
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._anchor = 0.0  # epoch seconds at loop.time() == 0 on that loop (fixed per loop)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.nan
        # Tick runs in flight -> their schedule until they are handed to the manager, then None.
        # stop() cancels those not handed yet (they may be waiting for the coordinator).
        self._ticks: dict[asyncio.Task[None], Entry | None] = {}
        # Names this manager to a distributed coordinator, the same for all its requests.
        self.submitter_id = os.urandom(16).hex()
        # The manager's job side when it has a store: ticks are stored as jobs there.
        self.ticks_as_jobs: JobSide | None = None

    def __repr__(self) -> str:
        return (
            f"<Scheduler started={self._started} cron={len(self._cron)} "
            f"once={self._once_count} in_flight={len(self._ticks)}>"
        )

    # ------------------------------------------------------------------------- schedules

    def parse(self, cron: str) -> CronSchedule:
        """``cron`` parsed in the manager's time zone, for :meth:`schedule`.

        :raises InvalidCronExpressionError: ``cron`` cannot be scheduled.
        """
        return CronSchedule(cron, self._manager.timezone)

    def schedule(self, task: Task[Any, Any], cron: str | CronSchedule) -> None:
        """Give ``task`` the cron schedule ``cron``, replacing any it had.

        ``cron`` may be parsed already (by :meth:`parse`), so that it is parsed once.
        """
        parsed = cron if isinstance(cron, CronSchedule) else self.parse(cron)
        old = self._cron.pop(task, None)
        if old is not None:
            self._retire(old)
        entry = Entry(task, parsed.next_after(now_wall()), parsed, None, next(self._seq))
        self._cron[task] = entry
        set_cron_schedule(task, parsed.expression)
        self._push(entry)
        self._refresh(task)
        self._arm()

    def schedule_at(self, task: Task[Any, Any], when: datetime, input: Any) -> None:
        """Run ``task`` once at ``when`` (naive: in the manager's time zone)."""
        if not isinstance(when, datetime):
            raise TypeError(f"when must be a datetime, not {safe_repr(when)}")
        if when.tzinfo is None or when.utcoffset() is None:
            # Read on the zone's clock as fixed-time cron is: a skipped time means the jump,
            # a repeated one its first occurrence.
            instant = Zone(self._manager.timezone).first_reaching(when.replace(tzinfo=None))
        else:
            instant = when.timestamp()
        entry = Entry(task, instant, None, input, next(self._seq))
        if self.ticks_as_jobs is not None and task.name is not None:
            self.ticks_as_jobs.schedule_once(entry, task.name, input, instant)  # stored now
        self._add_once(entry)
        self._arm()

    def _add_once(self, entry: Entry) -> None:
        """Make the one-off run ``entry`` pending."""
        item = (entry.when, entry.seq, entry)
        pending = self._once.get(entry.task)
        if pending is None:
            pending = self._once[entry.task] = []
        heapq.heappush(pending, item)
        self._once_count += 1
        heapq.heappush(self._heap, item)
        self._refresh(entry.task)

    def remove(self, task: Task[Any, Any]) -> None:
        """Drop the cron schedule and the pending one-off runs of ``task``."""
        entry = self._cron.pop(task, None)
        if entry is not None:
            self._retire(entry)
        for _, _, pending in self._once.pop(task, ()):
            self._retire(pending)
            self._once_count -= 1
        # A one-off that fell due but has not begun is still pending (stop() makes it pending
        # again): it goes too, or a stop and start would bring it back.
        for tick, fired in list(self._ticks.items()):
            if fired is not None and fired.cron is None and fired.task is task:
                tick.cancel()
                del self._ticks[tick]
        if self.ticks_as_jobs is not None and task.name is not None:
            self.ticks_as_jobs.deschedule_once(task.name)  # the stored ones, still queued
        set_cron_schedule(task, None)
        set_next_run(task, None)
        self._arm()

    def _retire(self, entry: Entry) -> None:
        entry.active = False
        self._dead += 1
        heap = self._heap
        if self._dead > 64 and self._dead > len(heap) // 2:
            self._heap = [item for item in heap if item[2].active]
            heapq.heapify(self._heap)
            self._dead = 0

    def _push(self, entry: Entry) -> None:
        heapq.heappush(self._heap, (entry.when, entry.seq, entry))

    def _refresh(self, task: Task[Any, Any]) -> None:
        """Show the task's soonest schedule as its ``next_run``."""
        set_next_run(task, self._soonest(task))

    def _soonest(self, task: Task[Any, Any]) -> float | None:
        """The soonest schedule of ``task`` (epoch seconds), or ``None``."""
        entry = self._cron.get(task)
        soonest = math.inf if entry is None else entry.when
        pending = self._once.get(task)
        if pending:
            soonest = min(soonest, pending[0][0])
        return None if soonest == math.inf else soonest

    # --------------------------------------------------------------------------- listings

    def scheduled_tasks(self) -> list[ScheduledTaskInfo]:
        """Each task with a schedule: its cron string (or ``"once"``) and next run."""
        tasks = dict.fromkeys(itertools.chain(self._cron, self._once))
        infos = []
        for task in tasks:
            entry = self._cron.get(task)
            next_run = self._soonest(task)
            infos.append(
                ScheduledTaskInfo(
                    name=task.name or "unnamed",
                    schedule=ONCE if entry is None else entry.schedule,
                    next_run=None if next_run is None else to_datetime(next_run),
                    last_run=task.last_run,
                    steps=task.get_steps_metadata(),
                    metadata=task.get_metadata(),
                )
            )
        return infos

    def next_runs(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` soonest scheduled runs: one per cron schedule, one per one-off run."""
        once = (item[2] for pending in self._once.values() for item in pending)
        return soonest_runs(itertools.chain(self._cron.values(), once), limit)

    def count(self) -> int:
        """Cron schedules plus pending one-off runs."""
        return len(self._cron) + self._once_count

    # -------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Arm the timer on the running loop; cron ticks due before now are not run."""
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not loop:
            self._ticks.clear()  # those of a previous loop cannot be awaited here
        self._loop = loop
        self._anchor = loop_to_wall(loop, 0.0)
        self._started = True
        now = now_wall()
        stale = False
        for entry in self._cron.values():
            # Cron fires only while started: skip what fell due while stopped.
            if entry.when < now:
                assert entry.cron is not None
                entry.when = entry.cron.next_after(now)
                self._refresh(entry.task)
                stale = True
        if stale:
            self._rebuild()
        self._arm()

    def stop(self) -> None:
        """Disarm the timer and cancel ticks not yet handed to the manager.

        A one-off run cancelled that way is pending again: it runs on the next ``start()``.
        """
        self._started = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for tick, entry in list(self._ticks.items()):
            if entry is None:
                continue
            tick.cancel()
            if entry.cron is None and not tick.done():
                entry.active = True
                self._add_once(entry)

    async def wait_stopped(self) -> None:
        """Wait for tick runs still in flight (reporting to the coordinator) after ``stop()``.

        Each remaining step is bounded by :data:`COORDINATOR_TIMEOUT`.
        """
        current = asyncio.current_task()
        pending = [tick for tick in self._ticks if tick is not current and not tick.done()]
        if pending:
            await asyncio.wait(pending)
        for tick in [tick for tick in self._ticks if tick.done()]:
            del self._ticks[tick]

    def _rebuild(self) -> None:
        self._heap = [(e.when, e.seq, e) for e in self._cron.values()]
        for pending in self._once.values():
            self._heap.extend(pending)
        heapq.heapify(self._heap)
        self._dead = 0

    # ------------------------------------------------------------------------------ timer

    def _arm(self) -> None:
        """Point the one timer at the soonest schedule."""
        if not self._started:
            return
        loop = self._loop
        assert loop is not None
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
            self._dead -= 1
        timer = self._timer
        if not heap:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        when = heap[0][0]
        if timer is not None:
            if when == self._timer_when:
                return
            timer.cancel()
        self._timer_when = when
        self._timer = loop.call_at(when - self._anchor, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        # asyncio runs a timer up to its clock resolution early: count that as due.
        now = self._anchor + loop.time() + 1e-6
        heap = self._heap
        while heap:
            when, _, entry = heap[0]
            if not entry.active:
                heapq.heappop(heap)
                self._dead -= 1
                continue
            if when > now:
                break
            heapq.heappop(heap)
            task = entry.task
            cron = entry.cron
            if cron is None:
                entry.active = False
                pending = self._once[task]
                # Both heaps order by (when, seq): the soonest of the task is this one.
                assert pending[0][2] is entry
                heapq.heappop(pending)
                if not pending:
                    del self._once[task]
                self._once_count -= 1
                self._refresh(task)
                self._ticks[loop.create_task(self._run_entry(entry, when, 0))] = entry
            else:
                # The next tick after this one; those already due were missed (the loop was
                # blocked): they are coalesced into this run.
                missed = 0
                try:
                    following = cron.next_after(when)
                    while following <= now and missed < MISSED_COUNT_LIMIT:
                        missed += 1
                        following = cron.next_after(following)
                    if following <= now:
                        following = cron.next_after(now)
                except Exception:
                    # Not expected (the expression matched when validated); a timer callback
                    # that raised would stop every schedule of the manager, so drop this one.
                    logger.exception("task %r: cron %r failed; descheduled", task.name, cron)
                    entry.active = False  # already off the heap
                    del self._cron[task]
                    set_cron_schedule(task, None)
                else:
                    entry.when = following
                    entry.seq = next(self._seq)
                    heapq.heappush(heap, (following, entry.seq, entry))
                self._refresh(task)
                # The run removes itself from _ticks when it ends (a done callback would cost
                # a loop iteration per tick); one cancelled before it began is dropped by
                # wait_stopped().
                self._ticks[loop.create_task(self._run_entry(entry, when, missed))] = entry
        self._arm()

    # ------------------------------------------------------------------------------ ticks

    async def _run_entry(self, entry: Entry, when: float, missed: int) -> None:
        """One scheduled run, in its own asyncio task, through the constraints.

        A cron tick is first offered to the coordinator (if any), and reported to it after.
        Errors are logged here (the run itself emitted ``failed``), never left unretrieved.
        """
        tick = asyncio.current_task()
        assert tick is not None
        task = entry.task
        cron = entry.cron
        coordinator = self._manager.distributed_coordinator
        request: DistributedTaskRequest | None = None
        status: DistributedRequestStatus = "failed"
        try:
            if cron is not None and missed:
                report_missed(task, cron, missed)
            if self.ticks_as_jobs is not None:
                await self._store_tick(self.ticks_as_jobs, entry, when)
                return
            if cron is not None:
                if coordinator is not None:
                    request = await offer(coordinator, self.submitter_id, task, when)
                    if request is None:
                        return
            self._ticks[tick] = None  # stop() leaves it to the manager from here on
            manager = self._manager
            if task.name is not None and manager.get_task_by_name(task.name) is task:
                status = await run_logged(
                    manager.trigger_task_constrained(task, entry.input), describe(task, cron)
                )
            # else: removed from the manager while the run was on its way
            if request is not None and coordinator is not None:
                await report(coordinator, replace(request, status=status))
        finally:
            self._ticks.pop(tick, None)

    async def _store_tick(self, jobs: JobSide, entry: Entry, when: float) -> None:
        """Store a tick or one-off run as a job (a failure is logged: nobody awaits a tick)."""
        tick = asyncio.current_task()
        assert tick is not None
        self._ticks[tick] = None  # stop() leaves the store's write to finish
        task = entry.task
        if task.name is not None and self._manager.get_task_by_name(task.name) is task:
            await store_tick(jobs, task, entry, when)

    async def catch_up(self, jobs: JobSide) -> None:
        """Store one job for the ticks of each cron schedule missed since its last stored tick
        (no manager sharing the store was running), with a ``missed`` event."""
        for task, entry in list(self._cron.items()):
            if entry.cron is not None:
                await catch_up_ticks(jobs, task, entry.cron)
