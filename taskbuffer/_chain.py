"""``Taskchain``: tasks in sequence, each result the next input."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from typing_extensions import Unpack

from ._emitter import forward_events, stop_forwarding
from ._exceptions import TaskChainError
from ._runner import MemberEntry, member_entry
from ._task import Task, TaskOptions
from ._validation import safe_repr

__all__ = ("Taskchain",)


class Taskchain(Task[Any]):
    """Runs ``task_array`` in order, passing each result on as the next input.

    Returns the last task's result (the input itself for an empty chain). A failure raises
    :class:`TaskChainError` naming the chain, the failing task and its 0-based index.
    """

    __slots__ = ("_entries", "_plan", "_tasks")

    def __init__(
        self, *, task_array: Sequence[Task[Any, Any]] = (), **options: Unpack[TaskOptions]
    ) -> None:
        self._tasks: list[Task[Any, Any]] = []
        # What runs each member (see member_entry), kept beside it.
        self._entries: list[MemberEntry] = []
        # Both as tuples, made again on every change: what a run goes through (a snapshot:
        # tasks added or removed while the chain runs apply to the next run).
        self._plan: tuple[tuple[Task[Any, Any], ...], tuple[MemberEntry, ...]] = ((), ())
        super().__init__(task_function=self._run_chain, **options)
        for task in task_array:
            self.add_task(task)

    @property
    def task_array(self) -> list[Task[Any, Any]]:
        """A copy of the chain's tasks, in order."""
        return list(self._tasks)

    def add_task(self, task: Task[Any, Any]) -> None:
        """Append ``task`` to the chain."""
        if not isinstance(task, Task):
            raise TypeError(f"a Taskchain holds Task objects, not {safe_repr(task)}")
        self._tasks.append(task)
        self._entries.append(member_entry(task))
        self._replan()
        for subject in self._sinks:  # a registered chain's members' events go where its own go
            forward_events(task, subject)

    def remove_task(self, task: Task[Any, Any]) -> bool:
        """Remove the first occurrence of ``task``; returns whether it was there."""
        try:
            index = self._tasks.index(task)
        except ValueError:
            return False
        del self._tasks[index], self._entries[index]
        self._replan()
        self._left(task)
        return True

    def shift_task(self) -> Task[Any, Any] | None:
        """Remove and return the first task, or ``None`` if the chain is empty."""
        if not self._tasks:
            return None
        task = self._tasks.pop(0)
        del self._entries[0]
        self._replan()
        self._left(task)
        return task

    def _replan(self) -> None:
        self._plan = (tuple(self._tasks), tuple(self._entries))

    def _left(self, task: Task[Any, Any]) -> None:
        for subject in self._sinks:
            stop_forwarding(task, subject)

    def _members(self) -> tuple[Task[Any, Any], ...]:
        return tuple(self._tasks)

    async def _run_chain(self, input: Any) -> Any:
        value = input
        tasks, entries = self._plan
        loop = asyncio.get_running_loop()  # asked once for every member (see _runner.Loop)
        for index, entry in enumerate(entries):
            try:
                value = await entry(value, None, None, loop)
            except Exception as exc:
                raise TaskChainError(
                    self.name or "unnamed", tasks[index].name or "unnamed", index, exc
                ) from exc
        return value
