"""``TaskOnce``: a task that runs successfully at most once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, overload

from typing_extensions import Unpack

from ._shared import SharedRun, current_task_in
from ._task import CoreOptions, D, In, R, Task, TaskFunction, TaskOptions

__all__ = ("TaskOnce",)

T = TypeVar("T")


class _OnceRun(SharedRun[T]):
    __slots__ = ("after",)

    def __init__(self, loop: asyncio.AbstractEventLoop, after: tuple[asyncio.Task[T], ...]) -> None:
        super().__init__(loop)
        # Abandoned runs still winding down when this one was made: it starts after them.
        self.after = after


class TaskOnce(Task[R, D, In]):
    """Runs at most once successfully.

    Concurrent triggers share the first run; later triggers return its cached result without
    running. If that run fails, its waiters get the error and the next trigger tries again.
    """

    __slots__ = ("_has_result", "_has_triggered", "_once_run", "_result")

    # As Task's: the input type is read from the task function's parameter.
    @overload
    def __init__(
        self: TaskOnce[R, D, In],
        *,
        task_function: Callable[[In], Awaitable[R]],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskOnce[R, D, In],
        *,
        task_function: Callable[[In], R],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskOnce[R, D, None],
        *,
        task_function: Callable[[], Awaitable[R]],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskOnce[R, D, None],
        *,
        task_function: Callable[[], R],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskOnce[R, D, In],
        *,
        task_function: Callable[[In, Any], Awaitable[R]],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskOnce[R, D, In],
        *,
        task_function: Callable[[In, Any], R],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    def __init__(self, *, task_function: TaskFunction[R], **options: Unpack[TaskOptions]) -> None:
        super().__init__(task_function=task_function, **options)
        self._has_triggered = False
        self._has_result = False
        self._result: R | None = None
        self._once_run: _OnceRun[R] | None = None

    @property
    def has_triggered(self) -> bool:
        """True once a run has started."""
        return self._has_triggered

    async def trigger(self, input: In = None) -> R:  # type: ignore[assignment]
        """Run once (sharing a run in progress) or return the cached result."""
        if self._has_result:
            return self._result  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        run = self._once_run
        if run is not None and run.task is not None and run.task is current_task_in(loop):
            raise RuntimeError(
                f"TaskOnce {self.name or 'unnamed'!r} was triggered from inside its own run: "
                "it would wait for itself forever. Do not trigger a TaskOnce from its own "
                "function (or from a task it runs in the same asyncio task)"
            )
        if run is None or run.abandoned or run.future.get_loop() is not loop:
            # A run being cancelled (all its awaiters left) is not joined: a fresh run
            # follows it, once it has wound down.
            after: tuple[asyncio.Task[R], ...] = ()
            if run is not None and run.abandoned and run.future.get_loop() is loop:
                # Also the runs that one waited for: it may have been abandoned while waiting.
                assert run.task is not None
                after = tuple(task for task in (*run.after, run.task) if not task.done())
            run = self._once_run = _OnceRun(loop, after)
            self._has_triggered = True
            run.start(self._run_once(input, after), partial(self._forget_run, run))
        return await run.join()

    trigger_unbuffered = trigger

    async def _run_once(self, input: Any, previous: tuple[asyncio.Task[R], ...] = ()) -> R:
        if previous:
            # Never two runs at once: if an abandoned run succeeded after all (its function
            # swallowed the cancellation), that was the one successful run.
            await asyncio.wait(previous)
            if self._has_result:
                return self._result  # type: ignore[return-value]
        errors_before = self.error_count
        result = await Task.trigger(self, input)
        if self.error_count == errors_before:  # not a failure swallowed by catch_errors
            self._result = result
            self._has_result = True
        return result

    def _forget_run(self, run: _OnceRun[R], _finished: asyncio.Task[R]) -> None:
        # Not if a fresh run replaced it (it was abandoned); nor while a run it waited for
        # winds down (it was abandoned while waiting): the next run must wait for that one.
        if self._once_run is run and all(task.done() for task in run.after):
            self._once_run = None
