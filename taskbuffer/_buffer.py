"""Coalescing buffer of a ``buffered=True`` task.

The buffer holds at most ``buffer_max`` runs: the one in progress plus those waiting. A trigger
that finds room adds a run; one that finds the buffer full joins the last waiting run and its
input replaces that run's input (the newest input wins). With ``buffer_max=1`` there is no
waiting run, so a trigger during a run joins the run in progress. Runs go one at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from ._shared import SharedRun, current_task_in

__all__ = ("TaskBuffer",)

R = TypeVar("R")


class _Named(Protocol):
    @property
    def name(self) -> str | None: ...


class _BufferedRun(SharedRun[R]):
    __slots__ = ("input", "queue")

    def __init__(
        self,
        buffer: TaskBuffer[R],
        loop: asyncio.AbstractEventLoop,
        input: Any,
        queue: deque[_BufferedRun[R]],
    ) -> None:
        super().__init__(loop, buffer.abandon)
        self.input = input
        self.queue = queue  # the queue of its event loop (see ``TaskBuffer.submit``)
        # ``abandoned`` (given up by all its awaiters but still winding down): it keeps the
        # next run from starting, but nobody may join it and it takes no room.


class TaskBuffer(Generic[R]):
    """The run queue of one buffered task."""

    __slots__ = ("_execute", "_max", "_owner", "_runs")

    def __init__(
        self,
        run: Callable[[Any], Coroutine[Any, Any, R]],
        owner: _Named,
        buffer_max: int,
    ) -> None:
        self._execute = run  # the task's run coroutine: each buffered run is one run of it
        self._owner = owner  # the task, for messages
        self._max = buffer_max
        self._runs: deque[_BufferedRun[R]] = deque()

    def __repr__(self) -> str:
        return f"<TaskBuffer max={self._max} runs={len(self._runs)}>"

    async def submit(self, input: Any) -> R:
        loop = asyncio.get_running_loop()
        runs = self._runs
        if runs and runs[0].future.get_loop() is not loop:
            # The runs of another loop drain there, in their own queue; this loop starts anew.
            runs = self._runs = deque()
        elif runs and runs[0].task is not None and runs[0].task is current_task_in(loop):
            # Joining the run in progress or queueing behind it: either waits for that run,
            # which is the caller.
            raise RuntimeError(
                f"buffered task {self._owner.name or 'unnamed'!r} was triggered from inside "
                "its own run: it would wait for itself forever. Call trigger_unbuffered() "
                "from inside the run, or trigger it from outside"
            )
        if not runs or len(runs) - runs[0].abandoned < self._max:
            run = _BufferedRun(self, loop, input, runs)
            runs.append(run)
            if len(runs) == 1:
                self._start(run)
        else:
            run = runs[-1]
            if run.task is None:
                run.input = input
        return await run.join()

    def _start(self, run: _BufferedRun[R]) -> None:
        run.start(self._execute(run.input), partial(self._on_done, run.queue))

    def _on_done(self, queue: deque[_BufferedRun[R]], _finished: asyncio.Task[R]) -> None:
        queue.popleft()
        if queue:
            self._start(queue[0])

    def abandon(self, shared: SharedRun[R]) -> None:
        """All awaiters of ``shared`` left: cancel it, or drop it if it has not started."""
        run = shared
        assert isinstance(run, _BufferedRun)
        if run.task is not None:
            run.task.cancel()
        else:
            run.queue.remove(run)
            run.future.cancel()
