"""Per-key state of one constraint group: running counts, cooldowns, rate windows, timers.

A :class:`KeyTable` keeps a small record (a :class:`KeyState`) per key only while the key has
something running, waiting, cooling down or inside its rate window; the record is dropped the
moment none of that holds (a timer drops it when a cooldown or window runs out). The table
knows nothing of who uses it: whoever creates it says how to build a key's record
(``new_key``) and whom to tell when a key's cooldown or window ends (``on_due``).

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
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ("KeyState", "KeyTable", "has_come", "key_type_error", "loop_time")

# What asyncio's BaseEventLoop uses to decide that a timer is due: ``when < now + resolution``.
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


def has_come(instant: float, now: float) -> bool:
    """Whether loop time ``instant`` has come at loop time ``now`` (to the clock's resolution,
    as asyncio decides that a timer at ``instant`` is due)."""
    return instant < now + _CLOCK_RESOLUTION


def key_type_error(group_name: str, key: object) -> TypeError:
    """What a key function that returned ``key``, neither a str nor None, raises."""
    return TypeError(
        f"constraint group {group_name!r}: constraint_key_for_execution must return a "
        f"str or None, not {key!r}"
    )


def loop_time() -> float:
    """The running loop's time, or 0.0 outside a loop (for synchronous inspection)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return 0.0


class KeyState:
    """What a table tracks for one key (its users may add slots in a subclass)."""

    __slots__ = (
        "key",
        "last_end",
        "pending",
        "running",
        "table",
        "timer",
        "timer_at",
        "waiting",
        "window",
    )

    def __init__(self, table: KeyTable, key: str) -> None:
        self.table = table  # so a trigger's claims are just its key states
        self.key = key
        self.running = 0
        self.last_end: float | None = None  # loop time of the latest end, for the cooldown
        # Loop times of the starts inside the rate window, oldest first.
        self.window: deque[float] | None = None
        # Slots taken whose run has not started yet: each holds a place in the rate window
        # until its run starts (then the window records that instant) or it is given back.
        self.pending = 0
        self.waiting = 0  # claimants waiting for this key: the state is kept while any wait
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0


class KeyTable:
    """The key states of one group, bound to one event loop; all times are loop times.

    :param owner: a token its user sets (e.g. the manager a group is added to), or ``None``.
    """

    __slots__ = (
        "cooldown",
        "loop",
        "max_concurrent",
        "name",
        "new_key",
        "on_due",
        "owner",
        "rate_limit",
        "running_total",
        "states",
        "timed",
        "waiting_total",
    )

    def __init__(
        self,
        name: str,
        *,
        max_concurrent: float,
        cooldown: float,
        rate_limit: Any,  # a RateLimit: ``max_per_window`` and ``window``
        new_key: Callable[[KeyTable, str], KeyState],
        on_due: Callable[[list[Any], float], None],
    ) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.cooldown = cooldown
        self.rate_limit = rate_limit
        # Whether a key can be blocked by something else than its running count.
        self.timed = bool(cooldown) or rate_limit is not None
        self.new_key = new_key
        self.on_due = on_due  # told a key may have room: a cooldown or window ended
        self.states: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.running_total = 0
        self.waiting_total = 0
        self.owner: object | None = None

    def __repr__(self) -> str:
        return f"<KeyTable {self.name!r} keys={len(self.states)}>"

    def get(self, key: str) -> Any:
        """The state of ``key``, or ``None`` (checked against the running loop)."""
        self.check_loop()
        return self.states.get(key)

    def ensure(self, key: str, loop: asyncio.AbstractEventLoop | None = None) -> Any:
        """The state of ``key``, created if need be (``loop``: the running loop, if known)."""
        if loop is None:
            self.check_loop()
        elif loop is not self.loop:
            self.bind(loop)
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = self.new_key(self, key)
        return st

    def check_loop(self) -> None:
        """Bind to the running loop, if any: state belongs to one loop (its times and timers
        mean nothing in another)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop is not self.loop:
            self.bind(loop)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve ``loop`` from now on, forgetting the state of a closed or idle old loop."""
        if loop is self.loop:
            return
        old = self.loop
        if old is not None and not old.is_closed() and (self.running_total or self.waiting_total):
            # Forgetting them would let this loop's runs ignore max_concurrent.
            raise RuntimeError(
                f"constraint group {self.name!r} has {self.running_total} runs and "
                f"{self.waiting_total} waiting triggers in another event loop (another "
                "thread?); a group serves one event loop at a time: use one group per "
                "loop, or let the other loop's runs finish first"
            )
        if old is not None:
            for st in self.states.values():
                self.cancel_timer(st)
            self.states.clear()
            self.running_total = self.waiting_total = 0
        self.loop = loop

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
            leaves = self.window_room_at(st, now)
            if leaves is not None:
                until = leaves if until is None else max(until, leaves)
        return until

    def window_room_at(self, st: KeyState, now: float) -> float | None:
        """``None`` if the rate window of this key has room at ``now``; else when it will
        (``math.inf``: only when a slot taken and not started yet is given back)."""
        limit = self.rate_limit
        assert limit is not None
        if st.window:
            self.purge_window(st, now)
        window = st.window
        over = (len(window) if window else 0) + st.pending - limit.max_per_window
        if over < 0:
            return None
        if window is None or over >= len(window):
            return math.inf
        # Still in the window: the purge just said its end has not come.
        return float(window[over] + limit.window)

    def purge_window(self, st: KeyState, now: float) -> None:
        """Drop the starts whose window has ended at ``now``; the rest are in it."""
        window = st.window
        assert self.rate_limit is not None and window is not None
        length = self.rate_limit.window
        while window and has_come(window[0] + length, now):
            window.popleft()

    def cooldown_remaining(self, st: KeyState | None, now: float) -> float:
        """Seconds from ``now`` until the cooldown of the key is over (0.0 if none)."""
        if st is None or st.last_end is None or not self.cooldown:
            return 0.0
        until = st.last_end + self.cooldown
        return 0.0 if has_come(until, now) else until - now

    def rate_limit_delay(self, st: KeyState | None, now: float) -> float:
        """Seconds from ``now`` until the rate window of the key has room (0.0 if it has)."""
        if st is None or self.rate_limit is None or not (st.window or st.pending):
            return 0.0
        leaves = self.window_room_at(st, now)
        return 0.0 if leaves is None else leaves - now  # not come yet: the purge kept it

    def take(self, st: KeyState) -> None:
        """Take a slot; its run :meth:`begin` s later (or it is given back unstarted)."""
        st.running += 1
        self.running_total += 1
        if self.rate_limit is not None:
            st.pending += 1

    def begin(self, st: KeyState, now: float) -> None:
        """The run of a slot taken starts at loop time ``now``: the rate window counts it
        from this instant (not from when the slot was taken: ``should_execute`` may take
        time, and the window limits the runs that start)."""
        if self.rate_limit is not None:
            if st.pending:  # (forget() drops it)
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

    def give_back(self, st: KeyState, now: float, *, ran: bool) -> None:
        """Release a slot: of a run that started (``ran``) and ended, or of a trigger that
        never started (no cooldown; its place in the rate window is freed, as it never
        entered the window)."""
        st.running -= 1
        self.running_total -= 1
        if ran:
            if self.cooldown:
                st.last_end = now
        elif self.rate_limit is not None and st.pending:  # (forget() drops it)
            st.pending -= 1

    def forget(self) -> list[Any]:
        """Forget running counts, cooldowns and rate windows; returns every key's state."""
        freed = []
        for st in self.states.values():
            self.running_total -= st.running
            st.running = 0
            st.last_end = None
            st.window = None
            st.pending = 0
            self.cancel_timer(st)
            freed.append(st)
        return freed

    def arm_timer(self, st: KeyState, when: float) -> None:
        """Wake this key at loop time ``when`` (one timer per key, for its earliest need)."""
        if st.timer is not None:
            if st.timer_at <= when:
                return
            st.timer.cancel()
        if self.loop is None:
            # Used outside any event loop (inspection methods called synchronously): there
            # is no clock to wake on; the state is dropped when the table meets a loop.
            return
        st.timer_at = when
        st.timer = self.loop.call_at(when, self._on_timer, st, when)

    def cancel_timer(self, st: KeyState) -> None:
        """Disarm the key's timer, if any."""
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None

    def _on_timer(self, st: KeyState, when: float) -> None:
        st.timer = None
        if self.states.get(st.key) is not st:
            return
        # A loop may run a timer up to its clock resolution early; the timer stands for
        # ``when`` having come.
        assert self.loop is not None
        self.on_due([st], max(self.loop.time(), when))

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
            self.purge_window(st, now)
            if st.window:
                assert self.rate_limit is not None
                leaves = st.window[-1] + self.rate_limit.window
                until = leaves if until is None else max(until, leaves)
        if until is not None:
            self.arm_timer(st, until)
            return
        self.cancel_timer(st)
        if self.states.get(st.key) is st:
            del self.states[st.key]
