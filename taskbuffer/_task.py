"""``Task``: one unit of async work with steps, labels, events, retries and a timeout.

This module holds the public surface; how a run executes is ``_runner.TaskRunner``'s, and
where events go is ``_emitter.EventSource``'s (the two bases of :class:`Task`).
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypedDict, cast, overload

from typing_extensions import TypeVar, Unpack

from ._buffer import TaskBuffer
from ._clock import to_datetime
from ._emitter import emit
from ._metadata import TaskMetadata
from ._run import find_run
from ._runner import TaskRunner, completed_steps, set_cron_schedule, set_next_run
from ._steps import StepSpec, StepTracker, TaskStepInfo, validate_steps
from ._validation import (
    check_count,
    check_labels,
    check_optional_str,
    safe_repr,
)

if TYPE_CHECKING:
    from datetime import datetime

    from ._events import TaskEventType

__all__ = (
    "CoreOptions",
    "Task",
    "TaskOptions",
    "completed_steps",
    "emit_notice",
    "set_cron_schedule",
    "set_next_run",
)

# Covariant: a Task[int] is usable where a Task[int | None] is expected (trigger only returns R).
R = TypeVar("R", covariant=True)
T = TypeVar("T")
D = TypeVar("D", default=dict[str, Any])
# The input trigger() accepts, read from the task function's input parameter (None for a
# function that takes none; Any where typing cannot tell). Contravariant: a task that accepts
# any object is usable where one that accepts an int is expected.
In = TypeVar("In", contravariant=True, default=Any)

TaskFunction = Callable[..., Awaitable[T]] | Callable[..., T]
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class CoreOptions(TypedDict, total=False):
    """The keyword options every task kind accepts besides its function and ``data``."""

    name: str | None
    version: str | None
    labels: Mapping[str, str] | None
    steps: Sequence[StepSpec]
    buffered: bool
    buffer_max: int | None
    pre_task: Task[Any, Any] | Callable[[], Task[Any, Any]] | None
    after_task: Task[Any, Any] | Callable[[], Task[Any, Any]] | None
    task_setup: Callable[[], Any] | None
    catch_errors: bool
    timeout: float | None
    retries: int
    retry_delay: float
    retry_backoff: float
    retry_on: RetryOn
    retry_jitter: float
    retry_max_delay: float | None


class TaskOptions(CoreOptions, total=False):
    """The keyword options every task kind accepts besides its function."""

    data: Any


class Task(TaskRunner, Generic[R, D, In]):
    """One unit of async work.

    Generic over the function's result ``R``, the type ``D`` of ``data`` and the input ``In``
    that ``trigger()`` accepts, read from the function's input parameter by mypy.

    The task function may be ``async def`` or a plain function taking 0, 1 (``input``) or 2
    (``input, setup_value``) positional parameters. Durations are float seconds.

    :param task_function: the work; its return value is what ``trigger()`` returns.
    :param buffered: coalesce triggers through a buffer of ``buffer_max`` runs.
    :param timeout: per-attempt time limit; a run past it fails with ``TaskTimeoutError``.
    :param retries: extra attempts after a failed one, ``retry_delay`` seconds apart, each
        further delay multiplied by ``retry_backoff``.
    :param retry_on: which errors are retried: an exception class, a tuple of them, or a
        predicate taking the error; any other error fails the run at once. An error that is
        not an ``Exception`` (``KeyboardInterrupt``, a cancellation...) is never retried.
    :param retry_jitter: 0-1; each delay is multiplied by a random factor in
        ``[1 - retry_jitter, 1 + retry_jitter]`` (drawn with :func:`random.uniform`).
    :param retry_max_delay: the longest one delay may be (after the jitter); ``None`` or
        ``math.inf`` for no cap.
    """

    __slots__ = ("_buffer", "_buffer_max", "_function", "_name", "data", "version")

    # One overload per shape of task function, so that the input type is read from its
    # parameter: one input, none (the input is None), or (input, setup value). Each comes as
    # async (Awaitable[R]) before plain (R), so R is the awaited result. Where the shape
    # cannot be told (Callable[..., X], a parameter typed Any), mypy finds several overloads
    # that fit and types the task Task[Any, Any, Any]: it accepts any input.
    @overload
    def __init__(
        self: Task[R, D, In],
        *,
        task_function: Callable[[In], Awaitable[R]],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, In],
        *,
        task_function: Callable[[In], R],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, None],
        *,
        task_function: Callable[[], Awaitable[R]],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, None],
        *,
        task_function: Callable[[], R],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, In],
        *,
        task_function: Callable[[In, Any], Awaitable[R]],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, In],
        *,
        task_function: Callable[[In, Any], R],
        data: D | None = None,
        **options: Unpack[CoreOptions],
    ) -> None: ...
    def __init__(
        self,
        *,
        task_function: TaskFunction[R],
        name: str | None = None,
        version: str | None = None,
        data: D | None = None,
        labels: Mapping[str, str] | None = None,
        steps: Sequence[StepSpec] = (),
        buffered: bool = False,
        buffer_max: int | None = None,
        pre_task: Task[Any, Any] | Callable[[], Task[Any, Any]] | None = None,
        after_task: Task[Any, Any] | Callable[[], Task[Any, Any]] | None = None,
        task_setup: Callable[[], Any] | None = None,
        catch_errors: bool = False,
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        retry_backoff: float = 2.0,
        retry_on: RetryOn = Exception,
        retry_jitter: float = 0.0,
        retry_max_delay: float | None = None,
    ) -> None:
        if not callable(task_function):
            raise TypeError(f"task_function must be callable, not {safe_repr(task_function)}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, not {name!r}")
        self._function = task_function
        self._name = name
        self.version = check_optional_str("version", version)
        self.data: D = data if data is not None else cast(D, {})
        self.labels = check_labels("labels", labels)
        self._buffer_max = _check_buffer(buffered, buffer_max)
        self._buffer: TaskBuffer[R] | None = (
            None if self._buffer_max is None else TaskBuffer(self._perform, self, self._buffer_max)
        )
        self._init_attempts(
            task_function,
            linked=self._run_linked,
            pre_task=pre_task,
            after_task=after_task,
            setup=task_setup,
            catch_errors=catch_errors,
            timeout=timeout,
            retries=retries,
            retry_delay=retry_delay,
            retry_backoff=retry_backoff,
            retry_on=retry_on,
            retry_jitter=retry_jitter,
            retry_max_delay=retry_max_delay,
        )
        self._steps = StepTracker(validate_steps(steps))
        self._init_state(
            direct=self._buffer is None and type(self).trigger is Task.trigger,
            trigger=self.trigger,
        )

    # ----------------------------------------------------------------------------- state

    @property
    def name(self) -> str | None:
        """The task's name (``None`` if it has none)."""
        return self._name

    @property
    def running(self) -> bool:
        """True while at least one run of this task is in flight."""
        return self._run_count != self._finished_runs

    @property
    def idle(self) -> bool:
        """True when no run of this task is in flight."""
        return self._run_count == self._finished_runs

    @property
    def buffered(self) -> bool:
        """Whether triggers go through a coalescing buffer."""
        return self._buffer is not None

    @property
    def buffer_max(self) -> int | None:
        """The buffer's capacity (``None`` when not buffered)."""
        return self._buffer_max

    @property
    def timeout(self) -> float | None:
        """The per-attempt time limit in seconds, or ``None``."""
        return self._timeout

    @property
    def last_error(self) -> BaseException | None:
        """The error of the latest failed run, until a run succeeds or ``clear_error()``."""
        return self._last_error

    @property
    def last_run(self) -> datetime | None:
        """When the latest run started (timezone-aware), or ``None``."""
        return None if self._last_run is None else to_datetime(self._last_run)

    def clear_error(self) -> None:
        """Forget ``last_error`` (``error_count`` stays)."""
        self._last_error = None

    def set_label(self, key: str, value: str) -> None:
        """Set label ``key`` to ``value``."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"labels are str -> str; got {key!r} -> {value!r}")
        self.labels[key] = value

    def get_label(self, key: str) -> str | None:
        """The value of label ``key``, or ``None``."""
        return self.labels.get(key)

    def remove_label(self, key: str) -> bool:
        """Remove label ``key``; returns whether it was there."""
        return self.labels.pop(key, None) is not None

    def has_label(self, key: str, value: str | None = None) -> bool:
        """Whether label ``key`` is set (to ``value``, if given)."""
        if value is None:
            return key in self.labels
        return self.labels.get(key) == value

    # ----------------------------------------------------------------------------- steps

    def notify_step(self, name: str) -> None:
        """Finish the active step of the current run of this task and start step ``name``.

        The run is found in the asyncio context: call it anywhere in the run's code, including
        code the task function awaits and asyncio tasks it creates.

        :raises ValueError: ``name`` is not a declared step (the message lists them).
        :raises RuntimeError: called outside any run of this task.
        """
        target = self._steps.check(name)
        run = find_run(self)
        if run is None or run.steps is None:
            raise RuntimeError(
                f"notify_step({name!r}) was called outside any run of task "
                f"{self._name or 'unnamed'!r}: call it from the task function (or code it "
                "awaits), where the run it moves is known"
            )
        run.steps.move_to(target)
        self._emit("step", None, run, step_name=name)

    def get_progress(self) -> int:
        """Progress 0-100 of the most recently started run still in flight, else of the last
        finished one: finished steps' percentages plus half of the active step's."""
        steps = self._shown_steps()
        return 0 if steps is None else steps.progress()

    def get_steps_metadata(self) -> list[TaskStepInfo]:
        """A snapshot of every declared step, as ``get_progress()``'s run sees them."""
        steps = self._shown_steps()
        return [] if steps is None else steps.infos()

    def get_metadata(self) -> TaskMetadata:
        """A snapshot of the task's state."""
        return self._snapshot()

    # ------------------------------------------------------------------------------ runs

    def trigger(self, input: In = None) -> Coroutine[Any, Any, R]:  # type: ignore[assignment]
        """Run the task (through its buffer, if buffered); awaiting it gives the function's
        result.

        With ``catch_errors=True`` a failed run returns ``None`` instead of raising. This is
        a plain method returning the run's own coroutine, so ``await task.trigger()`` costs
        no wrapper coroutine (one less frame per trigger); it is used exactly like an
        ``async def`` method, ``asyncio.create_task(task.trigger())`` included.
        """
        if self._buffer is not None:
            return self._buffer.submit(input)
        return self._perform(input)

    async def trigger_unbuffered(self, input: In = None) -> R:  # type: ignore[assignment]
        """Run the task now, bypassing its buffer."""
        return await self._perform(input)  # type: ignore[no-any-return]

    def _warn_sync_timeout(self, timeout: float) -> None:
        """Warn that ``timeout`` cannot stop the task's plain function, at its definition.

        Called once per task, when a run finds that the function returned a plain value: only
        then is it known to be sync (a plain function or lambda that returns an awaitable is
        timed out as usual, on that awaitable).
        """
        function = self._function
        message = (
            f"task {self._name or 'unnamed'!r}: timeout={timeout:g} cannot interrupt a plain "
            "(sync) task function: it runs on the event loop's thread, blocking the loop until it "
            "returns, and the time limit applies only to an awaitable it returns; make it an "
            "async def function (move blocking work into asyncio.to_thread) for the timeout to "
            "hold"
        )
        target = getattr(function, "func", function)  # a functools.partial: what it wraps
        code = getattr(target, "__code__", None) or getattr(type(target).__call__, "__code__", None)
        if code is None:  # a builtin or C callable: no definition to point at
            warnings.warn(message, UserWarning, stacklevel=2)
        else:
            warnings.warn_explicit(
                message,
                UserWarning,
                code.co_filename,
                code.co_firstlineno,
                module=getattr(target, "__module__", None),
            )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._name or 'unnamed'!r} status={self._status()} "
            f"runs={self.run_count} errors={self.error_count}>"
        )


def _check_buffer(buffered: bool, buffer_max: int | None) -> int | None:
    """The buffer's capacity (``None``: not buffered), checked."""
    if buffered:
        if buffer_max is None:
            raise ValueError("buffer_max is required when buffered=True (an int >= 1)")
        check_count("buffer_max", buffer_max, minimum=1)
        return buffer_max
    if buffer_max is not None:
        raise ValueError("buffer_max only applies to buffered tasks; pass buffered=True")
    return None


def emit_notice(task: Task[Any, Any], type: TaskEventType, message: str) -> None:
    """Emit an event of ``task`` not tied to one run, carrying ``message`` as its error (the
    scheduler's ``missed`` and ``skipped``)."""
    emit(task, type, None, error=message)
