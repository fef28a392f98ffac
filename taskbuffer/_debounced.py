"""``TaskDebounced``: bursts of triggers coalesce into one run after a quiet period."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, overload

from reactivex.abc import DisposableBase
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import Subject
from typing_extensions import Unpack

from ._shared import SharedRun
from ._task import CoreOptions, D, In, R, Task, TaskFunction, TaskOptions
from ._validation import check_seconds

__all__ = ("TaskDebounced",)


class _Pipeline:
    """The reactivex debounce pipeline bound to one event loop."""

    __slots__ = ("batch", "loop", "subject", "subscription")

    def __init__(self, loop: asyncio.AbstractEventLoop, subject: Subject[Any]) -> None:
        self.loop = loop
        self.subject = subject
        self.batch: SharedRun[Any] | None = None
        self.subscription: DisposableBase | None = None


class TaskDebounced(Task[R, D, In]):
    """Triggers within ``debounce_time`` seconds of each other coalesce into one run.

    The run starts after the quiet period with the last trigger's input; every coalesced
    ``trigger()`` returns (or raises) that run's result. Built on reactivex's ``debounce``.
    """

    __slots__ = ("_debounce_time", "_pipeline")

    # As Task's: the input type is read from the task function's parameter.
    @overload
    def __init__(
        self: TaskDebounced[R, D, In],
        *,
        task_function: Callable[[In], Awaitable[R]],
        debounce_time: float,
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskDebounced[R, D, In],
        *,
        task_function: Callable[[In], R],
        debounce_time: float,
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskDebounced[R, D, None],
        *,
        task_function: Callable[[], Awaitable[R]],
        debounce_time: float,
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskDebounced[R, D, None],
        *,
        task_function: Callable[[], R],
        debounce_time: float,
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskDebounced[R, D, In],
        *,
        task_function: Callable[[In, Any], Awaitable[R]],
        debounce_time: float,
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: TaskDebounced[R, D, In],
        *,
        task_function: Callable[[In, Any], R],
        debounce_time: float,
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    def __init__(
        self,
        *,
        task_function: TaskFunction[R],
        debounce_time: float,
        **options: Unpack[TaskOptions],
    ) -> None:
        seconds = check_seconds("debounce_time", debounce_time)
        super().__init__(task_function=task_function, **options)
        self._debounce_time = seconds or 0.0
        self._pipeline: _Pipeline | None = None

    @property
    def debounce_time(self) -> float:
        """The quiet period in seconds."""
        return self._debounce_time

    async def trigger(self, input: In = None) -> R:  # type: ignore[assignment]
        """Join the current burst; resolves with the run that follows the quiet period."""
        pipeline = self._pipeline_for(asyncio.get_running_loop())
        batch = pipeline.batch
        if batch is None:
            batch = pipeline.batch = SharedRun(pipeline.loop)
        pipeline.subject.on_next((input, batch))
        result: R = await batch.join()
        return result

    trigger_unbuffered = trigger

    def _pipeline_for(self, loop: asyncio.AbstractEventLoop) -> _Pipeline:
        import reactivex.operators as ops  # lazily: import taskbuffer stays fast

        pipeline = self._pipeline
        if pipeline is not None and pipeline.loop is loop:
            return pipeline
        if pipeline is not None and pipeline.subscription is not None:
            pipeline.subscription.dispose()  # bound to a loop that is gone
        subject: Subject[tuple[Any, SharedRun[Any]]] = Subject()
        pipeline = self._pipeline = _Pipeline(loop, subject)
        pipeline.subscription = subject.pipe(
            ops.debounce(self._debounce_time, scheduler=AsyncIOScheduler(loop))
        ).subscribe(on_next=self._fire)
        return pipeline

    def _fire(self, item: tuple[Any, SharedRun[Any]]) -> None:
        input, batch = item
        pipeline = self._pipeline
        if pipeline is not None and pipeline.batch is batch:
            pipeline.batch = None  # triggers from now on form the next burst
        if batch.awaiters == 0:  # everyone who asked for it was cancelled
            batch.future.cancel()
            return
        batch.start(Task.trigger(self, input))
