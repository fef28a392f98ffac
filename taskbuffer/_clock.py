"""Wall-clock instants derived from the running loop's clock.

All timing in taskbuffer goes through ``loop.time()``. Wall-clock instants (event timestamps,
``last_run``, cron) are ``anchor + loop.time()``, where the anchor is taken once per loop. A
virtual-time loop (such as ``looptime``) therefore moves wall-clock instants too, which is what
makes cron and timestamps testable without real waiting.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from datetime import UTC, datetime
from typing import TypeAlias

__all__ = ("loop_facts", "loop_to_wall", "now_wall", "to_datetime", "wall_anchor", "wall_to_loop")

# One anchor per event loop, dropped with the loop. This is a cache, not shared state: it
# only ever holds ``time.time() - loop.time()`` as read on the loop's first use.
_anchors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = weakref.WeakKeyDictionary()


# The hot path (every run reads its start on the wall clock) asks about the same loop over and
# over: a one-entry cache in front of the weak mapping. It holds (a weak reference to the loop,
# the loop's class, its anchor, whether its clock is time.monotonic). The class is part of the
# key because a virtual-time plugin (looptime) switches a live loop's class to change its clock.
_DEFAULT_LOOP_TIME = asyncio.BaseEventLoop.time


class _NoLoop:
    """What the cache holds before any loop: a weak reference to one that is gone."""

    __slots__ = ("__weakref__",)


LoopFacts: TypeAlias = tuple["weakref.ref[asyncio.AbstractEventLoop]", type, float, bool]
_gone: weakref.ref[asyncio.AbstractEventLoop] = weakref.ref(_NoLoop())  # type: ignore[arg-type]
last: LoopFacts = (_gone, type, 0.0, False)
# A looptime loop's clock (virtual or not) and its anchor since it last switched (loop_facts).
_switches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[bool, float]] = (
    weakref.WeakKeyDictionary()
)


def loop_facts(loop: asyncio.AbstractEventLoop) -> LoopFacts:
    """The one-entry cache's entry for ``loop``, which becomes the cached one.

    Its last item says that ``loop.time()`` is ``time.monotonic()`` (the class keeps asyncio's
    clock), so a caller on the hot path may call the latter directly: ``loop.time`` is a
    Python method, ``time.monotonic`` a C function.
    """
    global last
    cached = last
    loop_class = type(loop)
    if cached[0]() is loop and cached[1] is loop_class:
        return cached
    virtual = getattr(loop, "looptime_on", None)
    if virtual is None:
        try:
            anchor = _anchors[loop]
        except KeyError:
            anchor = _anchors[loop] = time.time() - loop.time()
        ref = weakref.ref(loop)
    else:
        # A looptime loop switches between its virtual clock and the real one in place
        # (the pytest plugin makes every loop so, and turns virtual time on for the test
        # only, after the fixtures ran on the real clock): one anchor per stretch of either,
        # taken on its first use, and never a cache hit, so that each use reads the switch.
        switch = _switches.get(loop)
        if switch is None or switch[0] is not virtual:
            switch = _switches[loop] = (virtual, time.time() - loop.time())
        anchor = switch[1]
        ref = _gone
    cached = last = (
        ref,
        loop_class,
        anchor,
        getattr(loop_class, "time", None) is _DEFAULT_LOOP_TIME,
    )
    return last


def wall_anchor(loop: asyncio.AbstractEventLoop) -> float:
    """``time.time() - loop.time()`` for ``loop``, read once per loop."""
    return loop_facts(loop)[2]


def now_wall() -> float:
    """Epoch seconds now, on the running loop's clock (the real clock outside a loop)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return time.time()
    return wall_anchor(loop) + loop.time()


def loop_to_wall(loop: asyncio.AbstractEventLoop, loop_time: float) -> float:
    """Epoch seconds of a ``loop.time()`` instant."""
    return wall_anchor(loop) + loop_time


def wall_to_loop(loop: asyncio.AbstractEventLoop, wall: float) -> float:
    """The ``loop.time()`` instant of epoch seconds ``wall``."""
    return wall - wall_anchor(loop)


def to_datetime(wall: float) -> datetime:
    """A timezone-aware (UTC) datetime for epoch seconds."""
    return datetime.fromtimestamp(wall, UTC)
