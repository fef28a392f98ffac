"""``Taskparallel``: tasks at once on the same input."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from typing_extensions import Unpack

from ._exceptions import TaskParallelError
from ._runner import member_entry
from ._task import Task, TaskOptions
from ._validation import safe_repr

__all__ = ("Taskparallel",)


class Taskparallel(Task[list[Any]]):
    """Triggers every task of ``task_array`` with the same input at once.

    Returns their results as a list in ``task_array`` order. Every task runs to its end even
    when another fails; then :class:`TaskParallelError` (an ``ExceptionGroup``) holds each error.
    """

    __slots__ = ("_entries", "_tasks")

    def __init__(
        self, *, task_array: Sequence[Task[Any, Any]] = (), **options: Unpack[TaskOptions]
    ) -> None:
        for task in task_array:
            if not isinstance(task, Task):
                raise TypeError(f"a Taskparallel holds Task objects, not {safe_repr(task)}")
        self._tasks: tuple[Task[Any, Any], ...] = tuple(task_array)
        self._entries = tuple(member_entry(task) for task in self._tasks)  # what runs each
        super().__init__(task_function=self._run_parallel, **options)

    @property
    def task_array(self) -> list[Task[Any, Any]]:
        """A copy of the tasks, in order."""
        return list(self._tasks)

    def _members(self) -> tuple[Task[Any, Any], ...]:
        return self._tasks

    async def _run_parallel(self, input: Any) -> list[Any]:
        loop = asyncio.get_running_loop()
        children = [loop.create_task(entry(input, None, None, loop)) for entry in self._entries]
        # What asyncio.gather(..., return_exceptions=True) does, with one wake-up instead of
        # one done-callback per child: the children usually finish in the same loop turn, so
        # waiting for each in order suspends this run once. A cancellation of this run
        # cancels every child and, as with gather, is raised once they have all finished.
        try:
            for child in children:
                if not child.done():
                    await _finished(loop, child)
        except asyncio.CancelledError:
            for child in children:
                child.cancel()
            await asyncio.wait(children)
            for child in children:
                if not child.cancelled():
                    child.exception()  # retrieved: the cancellation is what is raised
            raise
        results: list[Any] = []
        errors: list[Exception] = []
        fatal: BaseException | None = None
        cancelled = False
        # Every child's outcome is retrieved before anything is raised: none is left to be
        # logged as "never retrieved".
        for child in children:
            if child.cancelled():
                cancelled = True
                continue
            error = child.exception()
            if error is None:
                results.append(child.result())
            elif isinstance(error, Exception):
                errors.append(error)
                results.append(error)
            elif fatal is None:
                fatal = error  # KeyboardInterrupt, SystemExit...: not an ExceptionGroup member
        if fatal is not None:
            raise fatal
        if cancelled:
            # A child cancelled on its own: not an ExceptionGroup member, so it propagates
            # as itself (as gather would report it).
            raise asyncio.CancelledError()
        if errors:
            raise TaskParallelError(
                f"{len(errors)} of {len(self._tasks)} tasks of parallel "
                f"{self.name or 'unnamed'!r} failed",
                errors,
            )
        return results


def _finished(loop: asyncio.AbstractEventLoop, child: asyncio.Task[Any]) -> asyncio.Future[None]:
    """A future done when ``child`` is; cancelling it leaves ``child`` alone."""
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: asyncio.Task[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    child.add_done_callback(wake)
    return waiter
