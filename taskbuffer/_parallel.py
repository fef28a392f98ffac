"""``Taskparallel``: tasks at once on the same input."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from typing_extensions import Unpack

from ._exceptions import TaskParallelError
from ._task import Task, TaskOptions

__all__ = ("Taskparallel",)


class Taskparallel(Task[list[Any]]):
    """Triggers every task of ``task_array`` with the same input at once.

    Returns their results as a list in ``task_array`` order. Every task runs to its end even
    when another fails; then :class:`TaskParallelError` (an ``ExceptionGroup``) holds each error.
    """

    __slots__ = ("_tasks",)

    def __init__(
        self, *, task_array: Sequence[Task[Any, Any]] = (), **options: Unpack[TaskOptions]
    ) -> None:
        for task in task_array:
            if not isinstance(task, Task):
                raise TypeError(f"a Taskparallel holds Task objects, not {task!r}")
        self._tasks: tuple[Task[Any, Any], ...] = tuple(task_array)
        super().__init__(task_function=self._run_parallel, **options)

    @property
    def task_array(self) -> list[Task[Any, Any]]:
        """A copy of the tasks, in order."""
        return list(self._tasks)

    async def _run_parallel(self, input: Any) -> list[Any]:
        results = await asyncio.gather(
            *(
                task._run(input) if task._direct else task._trigger_coro(input)
                for task in self._tasks
            ),
            return_exceptions=True,
        )
        errors: list[Exception] = []
        for result in results:
            if isinstance(result, Exception):
                errors.append(result)
            elif isinstance(result, BaseException):
                # A child cancelled on its own (or KeyboardInterrupt...): not an ExceptionGroup
                # member, so it propagates as itself.
                raise result
        if errors:
            raise TaskParallelError(
                f"{len(errors)} of {len(self._tasks)} tasks of parallel "
                f"{self.name or 'unnamed'!r} failed",
                errors,
            )
        return list(results)
