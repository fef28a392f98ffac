"""A run that several triggers await together.

Buffered joiners, ``TaskOnce`` waiters and debounced triggers all await one run. Cancelling one
awaiter only detaches it; the run is abandoned (cancelled, or dropped if it has not started)
when its last awaiter is cancelled. An abandoned run that is still winding down is marked
``abandoned``: its owner must not let a new trigger join it (that trigger would get a
``CancelledError`` it never asked for) but start or join a fresh run instead.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ("SharedRun", "current_task_in", "settle_future")

R = TypeVar("R")

current_task_in: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]
if sys.version_info >= (3, 12):
    current_task_in = asyncio.current_task  # implemented in C
else:
    # On 3.11 asyncio.current_task() is a Python function; this is the dict it reads.
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

    current_task_in = _current_tasks.get


def settle_future(future: asyncio.Future[Any], task: asyncio.Future[Any]) -> None:
    """Copy a finished task's outcome into ``future``.

    The exception is marked retrieved: whoever awaits ``future`` still gets it, and a run whose
    awaiters all left does not log "exception was never retrieved" (the run already reported
    its failure on the event stream and the logger).
    """
    if future.done():
        return
    if task.cancelled():
        future.cancel()
        return
    exc = task.exception()
    if exc is None:
        future.set_result(task.result())
    else:
        future.set_exception(exc)
        future.exception()


class SharedRun(Generic[R]):
    """One outcome (``future``) awaited by any number of triggers, produced by ``task``."""

    __slots__ = ("_abandon", "abandoned", "awaiters", "future", "task")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        abandon: Callable[[SharedRun[R]], None] | None = None,
    ) -> None:
        self.future: asyncio.Future[R] = loop.create_future()
        self.awaiters = 0
        self.task: asyncio.Task[R] | None = None
        self._abandon = abandon
        # Every awaiter left while the task ran: it is being cancelled; nobody may join it.
        self.abandoned = False

    def start(
        self,
        coro: Coroutine[Any, Any, R],
        on_done: Callable[[asyncio.Task[R]], None] | None = None,
    ) -> None:
        """Produce the outcome by running ``coro`` in a task of its own."""
        self.task = task = self.future.get_loop().create_task(coro)
        task.add_done_callback(self._settle)
        if on_done is not None:
            task.add_done_callback(on_done)

    def _settle(self, task: asyncio.Task[R]) -> None:
        settle_future(self.future, task)

    async def join(self) -> R:
        """Await the shared outcome; being cancelled detaches only this awaiter."""
        assert not self.abandoned, "a new trigger joined a run that is being cancelled"
        self.awaiters += 1
        try:
            return await asyncio.shield(self.future)
        except asyncio.CancelledError:
            self.awaiters -= 1
            if self.awaiters == 0 and not self.future.done():
                self.abandoned = self.task is not None
                if self._abandon is not None:
                    self._abandon(self)
                elif self.task is not None:
                    self.task.cancel()
            raise
