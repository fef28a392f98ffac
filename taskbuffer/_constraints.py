"""``TaskConstraintGroup``: per-key concurrency caps, cooldowns, rate limits and checks.

A group keeps a small state record per key only while the key has something running, waiting,
cooling down or inside its rate window; the record is dropped the moment none of that holds
(a timer drops it when a cooldown or window runs out).

Time is the loop's clock. Whether an instant (the end of a cooldown, the moment a start leaves
the rate window) has come is decided in one place, :func:`has_come`, by the test asyncio
itself applies to run a timer: so the timer a key arms for that instant always finds it come,
and a trigger arriving at that very instant (on a virtual clock, where it is exact) finds the
key free too. Two float expressions for one instant (``start + window <= now`` here,
``start <= now - window`` there) can disagree by a rounding error, and then a key counts a
start as in its window while calling itself free.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._validation import check_count, check_seconds, safe_repr

if TYPE_CHECKING:
    from ._manager import TaskManager
    from ._task import Task
    from ._waiting import SharingRun, Waiter

__all__ = ("ConstraintGroupStatistics", "RateLimit", "TaskConstraintGroup")

KeyFunction: TypeAlias = Callable[["Task[Any, Any]", Any], "str | None"]
ShouldExecute: TypeAlias = Callable[["Task[Any, Any]", Any], "bool | Awaitable[bool]"]
ResultSharing: TypeAlias = Literal["none", "share-latest"]

# What asyncio's BaseEventLoop uses to decide that a timer is due: ``when < now + resolution``.
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


def has_come(instant: float, now: float) -> bool:
    """Whether loop time ``instant`` has come at loop time ``now`` (to the clock's resolution,
    as asyncio decides that a timer at ``instant`` is due)."""
    return instant < now + _CLOCK_RESOLUTION


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimit:
    """At most ``max_per_window`` starts per key within any ``window`` seconds (sliding)."""

    max_per_window: int
    window: float

    def __post_init__(self) -> None:
        check_count("max_per_window", self.max_per_window, minimum=1)
        check_seconds("window", self.window, positive=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConstraintGroupStatistics:
    """A snapshot of a group: keys it holds state for, runs in flight, triggers waiting."""

    name: str
    tracked_keys: int
    running: int
    waiting: int


class KeyState:
    """What a group tracks for one key."""

    __slots__ = (
        "dead",
        "detached",
        "group",
        "heap",
        "key",
        "last_end",
        "pending",
        "running",
        "sharers",
        "timer",
        "timer_at",
        "waiting",
        "window",
    )

    def __init__(self, group: TaskConstraintGroup, key: str) -> None:
        self.group = group  # so a trigger's claims are just its key states
        self.key = key
        self.running = 0
        self.last_end: float | None = None  # loop time of the latest end, for the cooldown
        # Loop times of the starts inside the rate window, oldest first.
        self.window: deque[float] | None = None
        # Slots taken whose run has not started yet (should_execute is being asked): each
        # holds a place in the rate window until its run starts (then the window records
        # that instant) or it is given back.
        self.pending = 0
        # Waiters parked here because this key blocks them: (-priority, seq, waiter), a heap.
        self.heap: list[tuple[int, int, Waiter]] = []
        self.dead = 0  # heap entries whose waiter has already left
        self.waiting = 0  # waiters that claim this key, wherever they are parked
        self.sharers: dict[Waiter, None] | None = None  # claimants, for share-latest
        # share-latest runs of this key whose caller left, kept going for the sharers
        self.detached: list[SharingRun] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return 0.0


class TaskConstraintGroup:
    """Constraints applied to every trigger through a :class:`TaskManager`, per key.

    :param constraint_key_for_execution: ``(task, input) -> key``; ``None`` exempts the trigger.
    :param max_concurrent: runs per key at once (``math.inf`` = no cap).
    :param cooldown: seconds between a run's end and the next start, per key.
    :param should_execute: ``(task, input) -> bool`` (or awaitable); ``False`` skips the run.
    :param rate_limit: a sliding window of starts per key.
    :param result_sharing: ``"share-latest"`` resolves the triggers waiting for a key with the
        result of the run of that key that succeeds, without running them.
    """

    __slots__ = (
        "__weakref__",
        "_loop",
        "_owner",
        "_running_total",
        "_state",
        "_waiting_total",
        "constraint_key_for_execution",
        "cooldown",
        "max_concurrent",
        "name",
        "rate_limit",
        "result_sharing",
        "should_execute",
    )

    def __init__(
        self,
        *,
        name: str,
        constraint_key_for_execution: KeyFunction,
        max_concurrent: int | float = math.inf,
        cooldown: float = 0.0,
        should_execute: ShouldExecute | None = None,
        rate_limit: RateLimit | None = None,
        result_sharing: ResultSharing = "none",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, not {name!r}")
        if not callable(constraint_key_for_execution):
            raise TypeError(
                "constraint_key_for_execution must be a callable (task, input) -> str | None, "
                f"not {safe_repr(constraint_key_for_execution)}"
            )
        check_count("max_concurrent", max_concurrent, minimum=1, infinite=True)
        cooldown = check_seconds("cooldown", cooldown) or 0.0
        if should_execute is not None and not callable(should_execute):
            raise TypeError(
                f"should_execute must be callable or None, not {safe_repr(should_execute)}"
            )
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit or None, not {safe_repr(rate_limit)}")
        if result_sharing not in ("none", "share-latest"):
            raise ValueError(
                f"result_sharing must be 'none' or 'share-latest', not {safe_repr(result_sharing)}"
            )
        self.name = name
        self.constraint_key_for_execution = constraint_key_for_execution
        self.max_concurrent = max_concurrent
        self.cooldown = cooldown
        self.should_execute = should_execute
        self.rate_limit = rate_limit
        self.result_sharing: ResultSharing = result_sharing
        self._state: dict[str, KeyState] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running_total = 0
        self._waiting_total = 0
        # The manager this group is added to (its weak reference, which the manager also
        # passes as the owner of its triggers), or None: a group constrains one manager.
        self._owner: weakref.ref[TaskManager] | None = None

    def __repr__(self) -> str:
        return (
            f"<TaskConstraintGroup {self.name!r} keys={len(self._state)} "
            f"running={self._running_total} waiting={self._waiting_total}>"
        )

    # ------------------------------------------------------------------------ public API

    def get_constraint_key(self, task: Task[Any, Any], input: Any = None) -> str | None:
        """The key of ``(task, input)`` in this group, or ``None`` if exempt.

        :raises TypeError: the key function returned something other than a str or None.
        """
        key = self.constraint_key_for_execution(task, input)
        if key is not None and not isinstance(key, str):
            raise TypeError(
                f"constraint group {self.name!r}: constraint_key_for_execution must return a "
                f"str or None, not {key!r}"
            )
        return key

    async def check_should_execute(self, task: Task[Any, Any], input: Any = None) -> bool:
        """Whether this group's ``should_execute`` allows the run (True without one)."""
        check = self.should_execute
        if check is None:
            return True
        verdict = check(task, input)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    def can_run(self, key: str) -> bool:
        """Whether a run with ``key`` could start now: under the cap, no cooldown, window room."""
        st = self._get(key)
        return st is None or self.blocked_until(st, _loop_time()) is None

    def acquire_slot(self, key: str) -> bool:
        """Take a slot for ``key`` if one is free now; returns whether it did."""
        now = _loop_time()
        st = self._ensure(key)
        if self.blocked_until(st, now) is not None:
            self.maybe_drop(st, now)
            return False
        self.take(st)
        self.begin(st, now)
        return True

    def release_slot(self, key: str) -> None:
        """Give back a slot of ``key``, recording the end time for the cooldown."""
        st = self._get(key)
        if st is not None and st.running > 0:
            self.give_back(st, _loop_time(), ran=True)
            from ._waiting import dispatch

            dispatch([st], _loop_time())

    def get_cooldown_remaining(self, key: str) -> float:
        """Seconds until the cooldown of ``key`` is over (0.0 if none is pending)."""
        st = self._get(key)
        if st is None or st.last_end is None or not self.cooldown:
            return 0.0
        now = _loop_time()
        until = st.last_end + self.cooldown
        return 0.0 if has_come(until, now) else until - now

    def get_rate_limit_delay(self, key: str) -> float:
        """Seconds until the rate window of ``key`` has room (0.0 if it has room now).

        ``math.inf`` while the window is full of slots taken by triggers whose runs have not
        started yet (their ``should_execute`` is being asked): it has room when one of them
        is given back, or a window after the run starts."""
        st = self._get(key)
        limit = self.rate_limit
        if st is None or limit is None or not (st.window or st.pending):
            return 0.0
        now = _loop_time()
        leaves = self._window_room_at(st, now)
        return 0.0 if leaves is None else leaves - now  # not come yet: the purge kept it

    def get_running_count(self, key: str) -> int:
        """How many runs of ``key`` are in flight."""
        st = self._get(key)
        return 0 if st is None else st.running

    def reset(self) -> None:
        """Forget running counts, cooldowns and rate windows; waiting triggers are re-offered."""
        from ._waiting import dispatch

        freed = []
        for st in self._state.values():
            self._running_total -= st.running
            st.running = 0
            st.last_end = None
            st.window = None
            st.pending = 0
            self._cancel_timer(st)
            freed.append(st)
        dispatch(freed, _loop_time())
        for st in list(self._state.values()):
            self.maybe_drop(st, _loop_time())

    def statistics(self) -> ConstraintGroupStatistics:
        """A snapshot: tracked keys, runs in flight and triggers waiting."""
        return ConstraintGroupStatistics(
            name=self.name,
            tracked_keys=len(self._state),
            running=self._running_total,
            waiting=self._waiting_total,
        )

    # ----------------------------------------------------------------- internal interface
    # Used by the waiting queue (_waiting.py); all times are loop times.

    def _get(self, key: str) -> KeyState | None:
        self._check_loop()
        return self._state.get(key)

    def _ensure(self, key: str, loop: asyncio.AbstractEventLoop | None = None) -> KeyState:
        if loop is None:
            self._check_loop()
        elif loop is not self._loop:
            self._bind(loop)
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = KeyState(self, key)
            if self.result_sharing == "share-latest":
                st.sharers = {}
        return st

    def _check_loop(self) -> None:
        # State belongs to one loop: its loop times and timers mean nothing in another.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop is not self._loop:
            self._bind(loop)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            old = self._loop
            if (
                old is not None
                and not old.is_closed()
                and (self._running_total or self._waiting_total)
            ):
                # Forgetting them would let this loop's runs ignore max_concurrent.
                raise RuntimeError(
                    f"constraint group {self.name!r} has {self._running_total} runs and "
                    f"{self._waiting_total} waiting triggers in another event loop (another "
                    "thread?); a group serves one event loop at a time: use one group per "
                    "loop, or let the other loop's runs finish first"
                )
            if self._loop is not None:
                for st in self._state.values():
                    self._cancel_timer(st)
                self._state.clear()
                self._running_total = self._waiting_total = 0
            self._loop = loop

    def blocked_until(self, st: KeyState, now: float) -> float | None:
        """``None`` if a run of this key may start at ``now``; else when it might.

        ``math.inf`` means blocked by the concurrency cap (until a run ends), a finite time
        means blocked by a cooldown or the rate window until then.
        """
        if st.running >= self.max_concurrent:
            return math.inf
        until: float | None = None
        if st.last_end is not None and self.cooldown:
            cooled = st.last_end + self.cooldown
            if not has_come(cooled, now):
                until = cooled
        if self.rate_limit is not None and (st.window or st.pending):
            leaves = self._window_room_at(st, now)
            if leaves is not None:
                until = leaves if until is None else max(until, leaves)
        return until

    def _window_room_at(self, st: KeyState, now: float) -> float | None:
        """``None`` if the rate window of this key has room at ``now``; else when it will
        (``math.inf``: only when a slot taken and not started yet is given back)."""
        limit = self.rate_limit
        assert limit is not None
        if st.window:
            self._purge_window(st, now)
        window = st.window
        over = (len(window) if window else 0) + st.pending - limit.max_per_window
        if over < 0:
            return None
        if window is None or over >= len(window):
            return math.inf
        # Still in the window: the purge just said its end has not come.
        return window[over] + limit.window

    def _purge_window(self, st: KeyState, now: float) -> None:
        """Drop the starts whose window has ended at ``now``; the rest are in it."""
        window = st.window
        assert self.rate_limit is not None and window is not None
        length = self.rate_limit.window
        while window and has_come(window[0] + length, now):
            window.popleft()

    def take(self, st: KeyState) -> None:
        """Take a slot; its run :meth:`begin` s later (or it is given back unstarted)."""
        st.running += 1
        self._running_total += 1
        if self.rate_limit is not None:
            st.pending += 1

    def begin(self, st: KeyState, now: float) -> None:
        """The run of a slot taken starts at loop time ``now``: the rate window counts it
        from this instant (not from when the slot was taken: ``should_execute`` may take
        time, and the window limits the runs that start)."""
        if self.rate_limit is not None:
            if st.pending:  # (reset() forgets it)
                st.pending -= 1
            window = st.window
            if window is None:
                window = st.window = deque()
            if window and now < window[-1]:
                # A timer's dispatch counts its own instant as now, which a loop clock that
                # rounds may show a hair later; keep the window in order all the same.
                bisect.insort(window, now)
            else:
                window.append(now)
            if st.heap:
                # A waiter parked while this place was pending waits for no timer: the
                # place now leaves the window at a known instant.
                until = self.blocked_until(st, now)
                if until is not None and until != math.inf:
                    self.arm_timer(st, until)

    def give_back(self, st: KeyState, now: float, *, ran: bool) -> None:
        """Release a slot: of a run that started (``ran``) and ended, or of a trigger that
        never started (no cooldown; its place in the rate window is freed, as it never
        entered the window)."""
        st.running -= 1
        self._running_total -= 1
        if ran:
            if self.cooldown:
                st.last_end = now
        elif self.rate_limit is not None and st.pending:  # (reset() forgets it)
            st.pending -= 1

    def arm_timer(self, st: KeyState, when: float) -> None:
        """Wake this key at loop time ``when`` (one timer per key, for its earliest need)."""
        if st.timer is not None:
            if st.timer_at <= when:
                return
            st.timer.cancel()
        if self._loop is None:
            # Used outside any event loop (inspection methods called synchronously): there
            # is no clock to wake on; the state is dropped when the group meets a loop.
            return
        st.timer_at = when
        st.timer = self._loop.call_at(when, self._on_timer, st, when)

    def _cancel_timer(self, st: KeyState) -> None:
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None

    def _on_timer(self, st: KeyState, when: float) -> None:
        st.timer = None
        if self._state.get(st.key) is not st:
            return
        from ._waiting import dispatch

        # A loop may run a timer up to its clock resolution early; the timer stands for
        # ``when`` having come.
        assert self._loop is not None
        now = max(self._loop.time(), when)
        dispatch([st], now)

    def maybe_drop(self, st: KeyState, now: float) -> None:
        """Drop the key's state if nothing needs it; else make sure a timer will revisit it."""
        if st.running or st.waiting:
            return
        until: float | None = None
        if st.last_end is not None and self.cooldown:
            cooled = st.last_end + self.cooldown
            if not has_come(cooled, now):
                until = cooled
        if st.window:
            self._purge_window(st, now)
            if st.window:
                assert self.rate_limit is not None
                leaves = st.window[-1] + self.rate_limit.window
                until = leaves if until is None else max(until, leaves)
        if until is not None:
            self.arm_timer(st, until)
            return
        self._cancel_timer(st)
        if self._state.get(st.key) is st:
            del self._state[st.key]


def key_counts(group: TaskConstraintGroup) -> list[tuple[str, int, int]]:
    """``(key, running, waiting)`` for every key ``group`` holds state for, for inspection
    (the dashboard); waiting counts triggers that claim the key wherever they are parked."""
    return [(st.key, st.running, st.waiting) for st in group._state.values()]
