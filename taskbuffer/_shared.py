"""A run that several triggers await together.

Buffered joiners, ``TaskOnce`` waiters and debounced triggers all await one run. Cancelling one
awaiter only detaches it; the run is abandoned (cancelled, or dropped if it has not started)
when its last awaiter is cancelled. An abandoned run that is still winding down is marked
``abandoned``: its owner must not let a new trigger join it (that trigger would get a
``CancelledError`` it never asked for) but start or join a fresh run instead.

Joining costs a registration, not a task: each awaiter awaits a future of its own, registered
on the run, and the run hands its outcome to every registered future when it ends. Cancelling
an awaiter cancels only its own future (``asyncio.shield`` would cost a second future and two
more callbacks per awaiter). A burst of thousands of triggers on one run is the buffer's
normal case, so this is its hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ("SharedRun", "current_task_in", "settle_future")

R = TypeVar("R")

# The asyncio task running in ``loop`` (the running loop), or None: public API only.
current_task_in: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    asyncio.current_task
)


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

    __slots__ = ("_abandon", "_joiners", "abandoned", "future", "task")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        abandon: Callable[[SharedRun[R]], None] | None = None,
    ) -> None:
        self.future: asyncio.Future[R] = loop.create_future()
        self.future.add_done_callback(self._hand_out)
        # The future of each awaiter still waiting (a dict: insertion order, O(1) removal).
        self._joiners: dict[asyncio.Future[R], None] = {}
        self.task: asyncio.Task[R] | None = None
        self._abandon = abandon
        # Every awaiter left while the task ran: it is being cancelled; nobody may join it.
        self.abandoned = False

    def __repr__(self) -> str:
        state = "done" if self.future.done() else "abandoned" if self.abandoned else "pending"
        return f"<SharedRun {state} awaiters={len(self._joiners)}>"

    @property
    def awaiters(self) -> int:
        """How many triggers await the outcome."""
        return len(self._joiners)

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

    def _hand_out(self, future: asyncio.Future[R]) -> None:
        joiners, self._joiners = self._joiners, {}
        if not joiners:
            return
        # A joiner may be done already: cancelled, its awaiter not yet resumed to leave.
        if future.cancelled():
            for joiner in joiners:
                joiner.cancel()
            return
        exc = future.exception()
        if exc is None:
            result = future.result()
            for joiner in joiners:
                if not joiner.done():
                    joiner.set_result(result)
        else:
            for joiner in joiners:
                if not joiner.done():
                    joiner.set_exception(exc)

    async def join(self) -> R:
        """Await the shared outcome; being cancelled detaches only this awaiter."""
        assert not self.abandoned, "a new trigger joined a run that is being cancelled"
        # Owners forget a run in the loop turn it ends, before anyone could join it.
        assert not self.future.done(), "a new trigger joined a run that has ended"
        joiner: asyncio.Future[R] = self.future.get_loop().create_future()
        self._joiners[joiner] = None
        try:
            return await joiner
        except asyncio.CancelledError:
            self._leave(joiner)
            raise

    def _leave(self, joiner: asyncio.Future[R]) -> None:
        joiners = self._joiners
        joiners.pop(joiner, None)
        if not joiners and not self.future.done():
            self.abandoned = self.task is not None
            if self._abandon is not None:
                self._abandon(self)
            elif self.task is not None:
                self.task.cancel()
