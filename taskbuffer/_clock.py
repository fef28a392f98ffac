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

__all__ = ("loop_to_wall", "now_wall", "to_datetime", "wall_anchor", "wall_to_loop")

# One anchor per event loop, dropped with the loop. This is a cache, not shared state: it
# only ever holds ``time.time() - loop.time()`` as read on the loop's first use.
_anchors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = weakref.WeakKeyDictionary()


# The hot path (an event timestamp per emission) asks for the same loop over and over: a
# one-entry cache in front of the weak mapping saves a weakref per call.
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], float] | None = None


def wall_anchor(loop: asyncio.AbstractEventLoop) -> float:
    """``time.time() - loop.time()`` for ``loop``, read once per loop."""
    global _last
    last = _last
    if last is not None and last[0]() is loop:
        return last[1]
    try:
        anchor = _anchors[loop]
    except KeyError:
        anchor = _anchors[loop] = time.time() - loop.time()
    _last = (weakref.ref(loop), anchor)
    return anchor


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
