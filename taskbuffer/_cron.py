"""Cron and one-off scheduling for a TaskManager, on the event loop's clock.

Cron strings have 5 fields (``minute hour day-of-month month day-of-week``) or 6 with the
seconds **first** (``"*/5 * * * * *"`` is every 5 seconds). croniter parses them and finds the
matching times on the local clock of the manager's time zone (local time by default); anything
croniter accepts in those fields works (lists, ranges, steps, names, ``L``, ``#``, ``W``).

Timing. One timer per manager, armed with ``loop.call_at`` for the soonest schedule. Wall-clock
instants are derived from the loop clock (:mod:`taskbuffer._clock`), so a virtual-time loop
moves cron too. Each tick runs once, in its own asyncio task, through the manager's
constraints. If the loop was blocked past one or more further ticks of the same schedule, they
are coalesced into that one run: the task emits a ``missed`` event saying how many were missed
and the ``taskbuffer`` logger warns; nothing is replayed in a burst.

Daylight-saving policy. When the local clock of the time zone jumps forward or repeats an hour:

* A *fixed-time* expression (its hour field names particular hours, e.g. ``30 2 * * *`` or
  ``0 */6 * * *``) fires the first time the local clock reaches or passes a matching time. On
  the day the clock jumps over its time (02:30 does not exist when 02:00 becomes 03:00), it
  runs once, right after the jump (at 03:00 new time); several matching times inside one jump
  make one run. On the day the clock falls back and shows its time twice, it runs once, at the
  first occurrence.
* An *interval-like* expression (hour field ``*``: it runs every hour, e.g. ``*/5 * * * *`` or
  ``*/10 * * * * *``) fires whenever the local clock shows a matching time, so it keeps its
  interval in real elapsed time: across a jump forward nothing is skipped or doubled (01:55
  then 03:00 is five real minutes), and in a repeated hour it runs in both passes.
* Fire instants strictly increase: no instant fires twice.

croniter's own time zone handling would run a fixed-time job twice in a repeated hour, so the
matching is done here on naive local times and mapped to instants by the rules above.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import uuid
from bisect import bisect_right
from dataclasses import replace
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from croniter import croniter

from ._clock import loop_to_wall, now_wall, to_datetime, wall_to_loop
from ._exceptions import InvalidCronExpressionError, TaskManagerStoppedError
from ._metadata import ScheduledTaskInfo
from .distributed import DistributedRequestStatus, DistributedTaskRequest

if TYPE_CHECKING:
    from ._manager import TaskManager
    from ._task import Task

__all__ = ("COORDINATOR_TIMEOUT", "CronSchedule", "Scheduler")

logger = logging.getLogger("taskbuffer")

COORDINATOR_TIMEOUT = 10.0
"""Seconds a coordinator call may take before the tick is given up here (and logged)."""

ONCE = "once"
"""The ``schedule`` shown for a one-off run (``schedule_task_at``) in listings."""

_EPOCH = datetime(1970, 1, 1)
_DAY = 86400.0
_MICROSECOND = timedelta(microseconds=1)
# Offset changes come months apart in the tz database: checking a span of this length by its
# endpoints cannot miss a change that is undone inside it.
_SCAN_SPAN = 7 * _DAY
# After a look-up found no offset change, at least this much is remembered as change-free, so
# that frequent schedules do not look again on every tick.
_STABLE_SPAN = 3600.0
# Counting missed ticks stops here (a loop blocked for days under an every-second schedule).
_MISSED_COUNT_LIMIT = 100_000


def _seconds(naive: datetime) -> float:
    """A naive datetime read as if it were UTC, in epoch seconds (local "wall seconds")."""
    return (naive - _EPOCH).total_seconds()


def _naive(seconds: float) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


class _Zone:
    """The local clock of a time zone, read from instants only.

    Only ``instant -> local time`` conversions are used (which every ``tzinfo`` gets right);
    local times are mapped back to instants by looking for offset changes, so that skipped and
    repeated local times are handled the same way for any ``tzinfo`` and for local time.
    """

    __slots__ = ("_stable_hi", "_stable_lo", "_stable_off", "tz")

    def __init__(self, tz: tzinfo | None) -> None:
        self.tz = tz
        # A span of instants known to have one UTC offset: a cache for ``transition``.
        self._stable_lo = self._stable_hi = self._stable_off = math.nan

    def wall(self, t: float) -> datetime:
        """The naive local time at instant ``t``."""
        if self.tz is None:
            return datetime.fromtimestamp(t)
        return datetime.fromtimestamp(t, self.tz).replace(tzinfo=None)

    def offset(self, t: float) -> float:
        """Seconds east of UTC at instant ``t`` (offsets change on whole seconds)."""
        whole = math.floor(t)
        return _seconds(self.wall(whole)) - whole

    def wall_and_offset(self, t: float) -> tuple[datetime, float]:
        wall = self.wall(t)
        return wall, float(round(_seconds(wall) - t))

    def transition(self, a: float, b: float, off: float) -> float | None:
        """The first whole second in ``(a, b]`` whose offset is not ``off`` (that of ``a``)."""
        if off == self._stable_off and self._stable_lo <= a and b <= self._stable_hi:
            return None
        end = max(b, a + _STABLE_SPAN)
        found = self._scan(a, end, off)
        if found is None:
            self._stable_lo, self._stable_hi, self._stable_off = a, end, off
            return None
        if found > b:
            self._stable_lo, self._stable_hi, self._stable_off = a, found - 1.0, off
            return None
        return found

    def _scan(self, a: float, b: float, off: float) -> float | None:
        lo = a
        while lo < b:
            hi = min(lo + _SCAN_SPAN, b)
            if self.offset(hi) != off:
                # Bisect on whole seconds: offset(floor(lo)) == off != offset(floor(hi)).
                low, high = math.floor(lo), math.floor(hi)
                while high - low > 1:
                    mid = (low + high) // 2
                    if self.offset(mid) != off:
                        high = mid
                    else:
                        low = mid
                return float(high)
            lo = hi
        return None

    def first_reaching(self, local: datetime) -> float:
        """The first instant at which the local clock shows ``local`` or a later time.

        That is ``local`` itself; its first occurrence if the clock shows it twice; or, if the
        clock jumps over it, the instant of the jump.
        """
        u = _seconds(local)
        # The instant is ``u - offset`` and offsets are under a day either way.
        a = u - _DAY
        before = self.offset(a)
        change = self.transition(a, u + _DAY, before)
        if change is None:
            return u - before
        first = u - before
        if first < change:
            return first
        second = u - self.offset(change)
        if second >= change:
            return second
        return change


class CronSchedule:
    """A validated cron string and the instants it fires at, in one time zone.

    :param expression: 5 fields, or 6 with seconds first.
    :param tz: the time zone whose local clock the expression is read on; ``None`` is local
        time.
    :raises InvalidCronExpressionError: the string is not a cron expression this accepts.
    """

    __slots__ = (
        "_iter",
        "_known",
        "_minutes",
        "_seconds",
        "_six",
        "_zone",
        "expression",
        "fixed_time",
    )

    def __init__(self, expression: str, tz: tzinfo | None = None) -> None:
        if not isinstance(expression, str):
            raise TypeError(f"a cron expression must be a str, not {expression!r}")
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise InvalidCronExpressionError(expression, f"it has {len(fields)} field(s)")
        six = len(fields) == 6
        try:
            # Naive datetimes: croniter matches local wall times; instants are mapped here.
            it = croniter(
                " ".join(fields), datetime(2000, 1, 1), ret_type=datetime, second_at_beginning=six
            )
            it.get_next(datetime)  # an expression that never matches (Feb 30) fails here
        except Exception as exc:  # croniter raises assorted errors for assorted bad input
            reason = str(exc) or type(exc).__name__
            if type(exc).__name__ == "CroniterBadDateError":
                reason = "it never matches a date"
            raise InvalidCronExpressionError(expression, reason) from exc
        self.expression = expression
        self._iter = it
        self._six = six
        self._zone = _Zone(tz)
        minutes = _values(it.expanded[0])
        hours = _values(it.expanded[1])
        self._minutes = minutes
        self._seconds = _values(it.expanded[5]) if six else (0,)
        # Whether DST gaps and repeats are handled as for a fixed time of day (module docstring).
        self.fixed_time = hours is not None and len(hours) < 24
        self._known: datetime | None = None  # the latest local time croniter said matches

    def __repr__(self) -> str:
        kind = "fixed-time" if self.fixed_time else "interval-like"
        return f"<CronSchedule {self.expression!r} {kind} tz={self._zone.tz!r}>"

    def next_after(self, t: float) -> float:
        """The first fire instant (epoch seconds) strictly after instant ``t``."""
        zone = self._zone
        wall, off = zone.wall_and_offset(t)
        if self.fixed_time:
            return self._next_fixed(t, wall, off)
        # Interval-like: the first instant after t whose local time matches. Walk the spans of
        # constant offset: within one, local time and instants differ by that offset.
        s = t
        local = self._next_local(wall, inclusive=False)
        while True:
            candidate = _seconds(local) - off
            change = zone.transition(s, candidate, off)
            if change is None:
                return candidate
            # The offset changes first: go on from the local time shown right after the change
            # (which, after a fall back, the clock shows for the second time).
            s, off = change, zone.offset(change)
            local = self._next_local(_naive(change + off), inclusive=True)

    def _next_fixed(self, t: float, wall: datetime, off: float) -> float:
        # Fixed-time: the first time the clock reaches the next matching time it has not yet
        # reached. In the second pass of a repeated hour the clock has already been further.
        floor, inclusive = wall, False
        zone = self._zone
        back = t - _DAY
        before = zone.offset(back)
        if before > off:  # the clock fell back within the last day
            change = zone.transition(back, t, before)
            if change is not None:
                reached = _naive(change + before)  # shown up to (not including) this
                if reached > wall:
                    floor, inclusive = reached, True
        return zone.first_reaching(self._next_local(floor, inclusive=inclusive))

    def _next_local(self, floor: datetime, *, inclusive: bool) -> datetime:
        """The first matching local time after ``floor`` (or at it, if ``inclusive``)."""
        if not inclusive and floor == self._known:
            following = self._next_in_hour(floor)
            if following is not None:
                self._known = following
                return following
        start = floor - _MICROSECOND if inclusive else floor
        local = self._iter.get_next(datetime, start)
        self._known = local
        return local

    def _next_in_hour(self, local: datetime) -> datetime | None:
        """The next match in the same hour of the same day as the match ``local``, if any.

        Day and hour fields still match there, so only minutes and seconds need checking: this
        spares croniter (the slow part) on all but the first tick of each hour.
        """
        seconds = self._seconds
        first_second = 0
        if self._six:
            second = local.second
            if seconds is None:
                if second < 59:
                    return local.replace(second=second + 1)
            else:
                i = bisect_right(seconds, second)
                if i < len(seconds):
                    return local.replace(second=seconds[i])
                first_second = seconds[0]
        minutes = self._minutes
        minute = local.minute
        if minutes is None:
            if minute < 59:
                return local.replace(minute=minute + 1, second=first_second)
        else:
            i = bisect_right(minutes, minute)
            if i < len(minutes):
                return local.replace(minute=minutes[i], second=first_second)
        return None


def _values(field: list[Any]) -> tuple[int, ...] | None:
    """A croniter-expanded field as sorted ints, or ``None`` for "every value"."""
    if "*" in field:
        return None
    return tuple(sorted({int(v) for v in field}))


class _Entry:
    """One schedule: a cron schedule of a task, or one pending one-off run."""

    __slots__ = ("active", "cron", "input", "task", "when")

    def __init__(
        self, task: Task[Any, Any], when: float, cron: CronSchedule | None, input: Any
    ) -> None:
        self.task = task
        self.when = when  # epoch seconds of the next fire
        self.cron = cron  # None for a one-off run
        self.input = input
        self.active = True

    @property
    def schedule(self) -> str:
        return ONCE if self.cron is None else self.cron.expression


class Scheduler:
    """The schedules of one manager: cron schedules and pending one-off runs.

    Schedules are kept (and listed) whether or not the manager is started; the timer runs only
    between ``start()`` and ``stop()``.
    """

    __slots__ = (
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
    )

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager
        self._cron: dict[Task[Any, Any], _Entry] = {}
        self._once: dict[Task[Any, Any], list[_Entry]] = {}
        self._once_count = 0
        self._heap: list[tuple[float, int, _Entry]] = []
        self._dead = 0  # inactive entries still in the heap
        self._seq = itertools.count()
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.nan
        # Tick runs in flight -> their schedule until they are handed to the manager, then None.
        # stop() cancels those not handed yet (they may be waiting for the coordinator).
        self._ticks: dict[asyncio.Task[None], _Entry | None] = {}
        # Names this manager to a distributed coordinator, the same for all its requests.
        self.submitter_id = uuid.uuid4().hex

    def __repr__(self) -> str:
        return (
            f"<Scheduler started={self._started} cron={len(self._cron)} "
            f"once={self._once_count} in_flight={len(self._ticks)}>"
        )

    # ------------------------------------------------------------------------- schedules

    def _parse(self, cron: str) -> CronSchedule:
        return CronSchedule(cron, self._manager.timezone)

    def validate(self, cron: str) -> None:
        """Raise :class:`InvalidCronExpressionError` unless ``cron`` can be scheduled."""
        self._parse(cron)

    def schedule(self, task: Task[Any, Any], cron: str) -> None:
        """Give ``task`` the cron schedule ``cron``, replacing any it had."""
        parsed = self._parse(cron)
        old = self._cron.pop(task, None)
        if old is not None:
            self._retire(old)
        entry = _Entry(task, parsed.next_after(now_wall()), parsed, None)
        self._cron[task] = entry
        task._cron_schedule = cron
        self._push(entry)
        self._refresh(task)
        self._arm()

    def schedule_at(self, task: Task[Any, Any], when: datetime, input: Any) -> None:
        """Run ``task`` once at ``when`` (naive: in the manager's time zone)."""
        if not isinstance(when, datetime):
            raise TypeError(f"when must be a datetime, not {when!r}")
        if when.tzinfo is None or when.utcoffset() is None:
            # Read on the zone's clock as fixed-time cron is: a skipped time means the jump,
            # a repeated one its first occurrence.
            instant = _Zone(self._manager.timezone).first_reaching(when.replace(tzinfo=None))
        else:
            instant = when.timestamp()
        entry = _Entry(task, instant, None, input)
        self._once.setdefault(task, []).append(entry)
        self._once_count += 1
        self._push(entry)
        self._refresh(task)
        self._arm()

    def remove(self, task: Task[Any, Any]) -> None:
        """Drop the cron schedule and the pending one-off runs of ``task``."""
        entry = self._cron.pop(task, None)
        if entry is not None:
            self._retire(entry)
        for pending in self._once.pop(task, ()):
            self._retire(pending)
            self._once_count -= 1
        task._cron_schedule = None
        task._next_run = None
        self._arm()

    def _retire(self, entry: _Entry) -> None:
        entry.active = False
        self._dead += 1
        heap = self._heap
        if self._dead > 64 and self._dead > len(heap) // 2:
            self._heap = [item for item in heap if item[2].active]
            heapq.heapify(self._heap)
            self._dead = 0

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, (entry.when, next(self._seq), entry))

    def _refresh(self, task: Task[Any, Any]) -> None:
        """Set the task's ``next_run`` to its soonest schedule."""
        entry = self._cron.get(task)
        soonest = math.inf if entry is None else entry.when
        for pending in self._once.get(task, ()):
            soonest = min(soonest, pending.when)
        task._next_run = None if soonest == math.inf else soonest

    # --------------------------------------------------------------------------- listings

    def scheduled_tasks(self) -> list[ScheduledTaskInfo]:
        """Each task with a schedule: its cron string (or ``"once"``) and next run."""
        tasks = dict.fromkeys(itertools.chain(self._cron, self._once))
        infos = []
        for task in tasks:
            entry = self._cron.get(task)
            infos.append(
                ScheduledTaskInfo(
                    name=task.name or "unnamed",
                    schedule=ONCE if entry is None else entry.schedule,
                    next_run=None if task._next_run is None else to_datetime(task._next_run),
                    last_run=task.last_run,
                    steps=task.get_steps_metadata(),
                    metadata=task.get_metadata(),
                )
            )
        return infos

    def next_runs(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` soonest scheduled runs: one per cron schedule, one per one-off run."""
        entries = itertools.chain(
            self._cron.values(), itertools.chain.from_iterable(self._once.values())
        )
        soonest = heapq.nsmallest(limit, entries, key=lambda entry: entry.when)
        return [
            {
                "task_name": entry.task.name,
                "next_run": to_datetime(entry.when),
                "schedule": entry.schedule,
            }
            for entry in soonest
        ]

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
                self._once.setdefault(entry.task, []).append(entry)
                self._once_count += 1
                self._push(entry)
                self._refresh(entry.task)

    async def wait_stopped(self) -> None:
        """Wait for tick runs still in flight (reporting to the coordinator) after ``stop()``.

        Each remaining step is bounded by :data:`COORDINATOR_TIMEOUT`.
        """
        current = asyncio.current_task()
        pending = [tick for tick in self._ticks if tick is not current and not tick.done()]
        if pending:
            await asyncio.wait(pending)

    def _rebuild(self) -> None:
        self._heap = [(e.when, next(self._seq), e) for e in self._all_entries()]
        heapq.heapify(self._heap)
        self._dead = 0

    def _all_entries(self) -> list[_Entry]:
        entries = list(self._cron.values())
        for pending in self._once.values():
            entries.extend(pending)
        return entries

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
        self._timer = loop.call_at(wall_to_loop(loop, when), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        # asyncio runs a timer up to its clock resolution early: count that as due.
        now = loop_to_wall(loop, loop.time()) + 1e-6
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
                pending.remove(entry)
                if not pending:
                    del self._once[task]
                self._once_count -= 1
                self._spawn(self._run_once(entry), entry)
            else:
                # The next tick after this one; those already due were missed (the loop was
                # blocked): they are coalesced into this run.
                missed = 0
                try:
                    following = cron.next_after(when)
                    while following <= now and missed < _MISSED_COUNT_LIMIT:
                        missed += 1
                        following = cron.next_after(following)
                    if following <= now:
                        following = cron.next_after(now)
                except Exception:
                    # Not expected (the expression matched when validated); a timer callback
                    # that raised would stop every schedule of the manager, so drop this one.
                    logger.exception("task %r: cron %r failed; descheduled", task.name, cron)
                    self._retire(self._cron.pop(task))
                    task._cron_schedule = None
                else:
                    entry.when = following
                    self._push(entry)
                self._spawn(self._run_tick(entry, cron, when, missed), entry)
            self._refresh(task)
        self._arm()

    def _spawn(self, coro: Any, entry: _Entry) -> None:
        loop = self._loop
        assert loop is not None
        tick: asyncio.Task[None] = loop.create_task(coro)
        self._ticks[tick] = entry
        tick.add_done_callback(self._forget)

    def _forget(self, tick: asyncio.Task[None]) -> None:
        self._ticks.pop(tick, None)

    # ------------------------------------------------------------------------------ ticks

    async def _run_tick(self, entry: _Entry, cron: CronSchedule, when: float, missed: int) -> None:
        """One cron tick: offer it to the coordinator, then run it through the constraints."""
        task = entry.task
        if missed:
            plural = "tick was" if missed == 1 else "ticks were"
            more = "+" if missed >= _MISSED_COUNT_LIMIT else ""
            message = (
                f"{missed}{more} {plural} of {cron.expression!r} missed while the event loop "
                "was blocked; coalesced into one run"
            )
            logger.warning("task %r: %s", task.name, message)
            task._emit("missed", None, error=message)
        coordinator = self._manager.distributed_coordinator
        request: DistributedTaskRequest | None = None
        if coordinator is not None:
            request = DistributedTaskRequest(
                submitter_id=self.submitter_id,
                request_response_id=uuid.uuid4().hex,
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
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    reason = f"the coordinator did not answer within {COORDINATOR_TIMEOUT:g} s"
                else:
                    reason = f"the coordinator failed: {type(exc).__name__}: {exc}"
                message = f"tick at {to_datetime(when).isoformat()} not run here: {reason}"
                logger.warning("task %r: %s", task.name, message, exc_info=exc)
                task._emit("skipped", None, error=message)
                return
            if not answer.should_trigger:
                logger.debug(
                    "task %r: the coordinator gave the tick at %s elsewhere (%s)",
                    task.name,
                    to_datetime(when).isoformat(),
                    answer.reason,
                )
                return
        status = await self._run(task, None, "scheduled")
        if request is not None and coordinator is not None:
            try:
                async with asyncio.timeout(COORDINATOR_TIMEOUT):
                    await coordinator.update_distributed_task_request(
                        replace(request, status=status)
                    )
            except Exception as exc:
                logger.warning(
                    "task %r: reporting the tick at %s to the coordinator failed",
                    task.name,
                    to_datetime(when).isoformat(),
                    exc_info=exc,
                )

    async def _run_once(self, entry: _Entry) -> None:
        await self._run(entry.task, entry.input, "one-off")

    async def _run(self, task: Task[Any, Any], input: Any, kind: str) -> DistributedRequestStatus:
        """Run ``task`` through the manager; errors are logged (the run emitted ``failed``)."""
        current = asyncio.current_task()
        if current in self._ticks:
            self._ticks[current] = None  # stop() leaves it to the manager from here on
        manager = self._manager
        if task.name is None or manager.get_task_by_name(task.name) is not task:
            return "failed"  # removed while the tick was on its way
        try:
            await manager.trigger_task_constrained(task, input)
        except TaskManagerStoppedError as exc:
            logger.debug("%s run of task %r did not complete: %s", kind, task.name, exc)
            return "failed"
        except Exception as exc:
            logger.error("%s run of task %r failed", kind, task.name, exc_info=exc)
            return "failed"
        return "succeeded"
