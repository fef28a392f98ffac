"""``Task``: one unit of async work with steps, labels, events, retries and a timeout."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypedDict, cast, overload

from typing_extensions import TypeVar, Unpack

from . import _clock, _events
from ._buffer import TaskBuffer
from ._clock import loop_facts, now_wall, to_datetime
from ._events import (
    EventSubject,
    StateCapture,
    TaskEvent,
    TaskEventType,
    _PendingEvent,
    _subscriber_raised,
    deliver_all,
)
from ._exceptions import TaskTimeoutError
from ._metadata import TaskMetadata, TaskStatus, make_metadata
from ._steps import StepSpec, StepTracker, TaskStepInfo, validate_steps
from ._validation import (
    check_count,
    check_error_filter,
    check_labels,
    check_number,
    check_optional_str,
    check_seconds,
    error_message,
    reraise_interrupt_later,
    safe_repr,
)

if TYPE_CHECKING:
    from datetime import datetime


__all__ = ("Task", "TaskOptions", "task")

logger = logging.getLogger("taskbuffer")
_monotonic = time.monotonic

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


class _CoreOptions(TypedDict, total=False):
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


class TaskOptions(_CoreOptions, total=False):
    """The keyword options every task kind accepts besides its function."""

    data: Any


def _arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments to pass: 0, 1 (input) or 2 (input, setup value)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: give them the input
        return 1
    positional = required = 0
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return 2
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional += 1
            required += param.default is param.empty
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            raise TypeError(
                f"task_function {fn!r} has a required keyword-only parameter {param.name!r}; "
                "it is called with 0, 1 (input) or 2 (input, setup value) positional arguments"
            )
    if required > 2:
        raise TypeError(
            f"task_function {safe_repr(fn)} requires {required} positional parameters; it is "
            "called with 0, 1 (input) or 2 (input, setup value) positional arguments"
        )
    return min(positional, 2)


def _warn_sync_timeout(task: Task[Any, Any], timeout: float) -> None:
    """Warn that ``timeout`` cannot stop the task's plain function, at its definition.

    Called once per task, when a run finds that the function returned a plain value: only
    then is it known to be sync (a plain function or lambda that returns an awaitable is
    timed out as usual, on that awaitable).
    """
    function = task._function
    message = (
        f"task {task._name or 'unnamed'!r}: timeout={timeout:g} cannot interrupt a plain (sync) "
        "task function: it runs on the event loop's thread, blocking the loop until it "
        "returns, and the time limit applies only to an awaitable it returns; make it an "
        "async def function (move blocking work into asyncio.to_thread) for the timeout to hold"
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


class Task(Generic[R, D, In]):
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

    __slots__ = (
        "__weakref__",
        "_after_task",
        "_buffer",
        "_buffer_max",
        "_call",
        "_cron_schedule",
        "_direct",
        "_event_subject",
        "_finished_runs",
        "_function",
        "_has_steps",
        "_is_async",
        "_last_error",
        "_last_run",
        "_last_run_at",
        "_name",
        "_next_run",
        "_outcome",
        "_plain",
        "_pre_task",
        "_retries",
        "_retry_backoff",
        "_retry_delay",
        "_retry_jitter",
        "_retry_max_delay",
        "_retry_on",
        "_route",
        "_routed",
        "_running",
        "_setup",
        "_setup_done",
        "_setup_task",
        "_setup_value",
        "_sink_counts",
        "_sinks",
        "_steps",
        "_sync_warned",
        "_timeout",
        "_total_duration",
        "catch_errors",
        "data",
        "error_count",
        "labels",
        "run_count",
        "version",
    )

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
        **options: Unpack[_CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, In],
        *,
        task_function: Callable[[In], R],
        data: D | None = None,
        **options: Unpack[_CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, None],
        *,
        task_function: Callable[[], Awaitable[R]],
        data: D | None = None,
        **options: Unpack[_CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, None],
        *,
        task_function: Callable[[], R],
        data: D | None = None,
        **options: Unpack[_CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, In],
        *,
        task_function: Callable[[In, Any], Awaitable[R]],
        data: D | None = None,
        **options: Unpack[_CoreOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: Task[R, D, In],
        *,
        task_function: Callable[[In, Any], R],
        data: D | None = None,
        **options: Unpack[_CoreOptions],
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
        version = check_optional_str("version", version)
        labels = check_labels("labels", labels)
        if buffered:
            if buffer_max is None:
                raise ValueError("buffer_max is required when buffered=True (an int >= 1)")
            check_count("buffer_max", buffer_max, minimum=1)
        elif buffer_max is not None:
            raise ValueError("buffer_max only applies to buffered tasks; pass buffered=True")
        check_count("retries", retries, minimum=0)
        check_number("retry_backoff", retry_backoff, minimum=1)
        # math.inf means no limit and is stored as None, which keeps to_dict() JSON-clean.
        timeout = check_seconds("timeout", timeout, positive=True, infinite=True, none=True)
        retry_delay = check_seconds("retry_delay", retry_delay) or 0.0
        retries_what = check_error_filter("retry_on", retry_on)
        check_number("retry_jitter", retry_jitter, minimum=0, maximum=1)
        retry_max_delay = check_seconds(
            "retry_max_delay", retry_max_delay, infinite=True, none=True
        )
        for label, ref in (("pre_task", pre_task), ("after_task", after_task)):
            if ref is not None and not isinstance(ref, Task) and not callable(ref):
                raise TypeError(
                    f"{label} must be a Task or a callable returning one, not {safe_repr(ref)}"
                )
        if task_setup is not None and not callable(task_setup):
            raise TypeError(f"task_setup must be callable or None, not {safe_repr(task_setup)}")

        self._function = task_function
        arity = _arity(task_function)
        # One callable taking the input, so a run never re-decides how to call the function.
        self._call: Callable[[Any], Any] = (
            task_function
            if arity == 1
            else (lambda _input: task_function())
            if arity == 0
            else (lambda input: task_function(input, self._setup_value))
        )
        self._plain = (
            task_setup is None
            and pre_task is None
            and after_task is None
            and retries == 0
            and timeout is None
        )
        self._is_async = inspect.iscoroutinefunction(task_function)
        self._name = name
        self.version = version
        self.data: D = data if data is not None else cast(D, {})
        self.labels: dict[str, str] = labels
        self._steps = StepTracker(validate_steps(steps))
        self._has_steps = bool(self._steps.steps)
        self._buffer_max = buffer_max if buffered else None
        self._buffer: TaskBuffer[R] | None = (
            TaskBuffer(self, buffer_max) if buffered and buffer_max is not None else None
        )
        # trigger() is _run() for an unbuffered task whose class keeps Task's trigger.
        self._direct = self._buffer is None and type(self)._trigger_coro is Task._trigger_coro
        self._pre_task = pre_task
        self._after_task = after_task
        self._setup = task_setup
        self._setup_done = False
        self._setup_value: Any = None
        self._setup_task: asyncio.Task[Any] | None = None
        self.catch_errors = catch_errors
        self._timeout = timeout
        self._sync_warned = False  # see _warn_sync_timeout
        self._retries = retries
        self._retry_delay = retry_delay
        self._retry_backoff = float(retry_backoff)
        self._retry_on = retries_what  # a tuple of classes, or a predicate
        self._retry_jitter = float(retry_jitter)
        self._retry_max_delay = retry_max_delay

        self._event_subject = EventSubject()
        # Other subjects that receive this task's events: the task_subject of each manager it
        # is registered with, or that a chain or parallel holding it is registered with (see
        # _add_sink). Each subject once, however many ways lead to it; a tuple so that
        # emitting never sees it change mid-iteration. _sink_counts says how many ways lead
        # to each (None while there is none).
        self._sinks: tuple[EventSubject, ...] = ()
        self._sink_counts: dict[EventSubject, int] | None = None
        # Where events go: None (nobody listens), a sole subscriber's callback, or _fan_out;
        # worked out again when _events.generation moves on (see _reroute).
        self._route: Callable[[TaskEvent], None] | None = None
        self._routed = -1
        self._running = 0
        self.run_count = 0
        self.error_count = 0
        self._last_error: BaseException | None = None
        self._last_run: float | None = None
        self._last_run_at: tuple[float, datetime] | None = None  # last_run as a datetime
        self._outcome: TaskStatus = "idle"
        self._finished_runs = 0
        self._total_duration = 0.0
        self._cron_schedule: str | None = None
        self._next_run: float | None = None

    # ----------------------------------------------------------------------------- state

    @property
    def name(self) -> str | None:
        """The task's name (``None`` if it has none)."""
        return self._name

    @property
    def running(self) -> bool:
        """True while at least one run of this task is in flight."""
        return self._running > 0

    @property
    def idle(self) -> bool:
        """True when no run of this task is in flight."""
        return self._running == 0

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

    @property
    def event_subject(self) -> EventSubject:
        """The reactivex subject carrying this task's :class:`TaskEvent` s."""
        return self._event_subject

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
        """Finish the active step and start step ``name``.

        :raises ValueError: ``name`` is not a declared step (the message lists them).
        """
        self._steps.notify(name)
        self._emit("step", None, step_name=name)

    def get_progress(self) -> int:
        """Progress 0-100: finished steps' percentages plus half of the active step's."""
        return self._steps.progress()

    def get_steps_metadata(self) -> list[TaskStepInfo]:
        """A snapshot of every declared step."""
        return self._steps.infos()

    def get_metadata(self) -> TaskMetadata:
        """A snapshot of the task's state."""
        return self._snapshot(None)

    def _status(self) -> TaskStatus:
        return "running" if self._running else self._outcome

    def _snapshot(self, status: TaskStatus | None) -> TaskMetadata:
        return _build_metadata(self._capture(status))

    def _capture(
        self,
        status: TaskStatus | None,
        kind: TaskEventType | None = None,
        timestamp: float | None = None,
        step_name: str | None = None,
        error: str | None = None,
    ) -> StateCapture:
        """Copy what can change of the task's state; the metadata is built from it later.

        The layout is ``StateCapture``'s (taskbuffer/_events.py): the event's fields (``None``
        for a plain snapshot), the task, then its state; ``_metadata_from`` reads it. ``_run``
        spells the same tuple out for its ``started`` and ``completed`` events.
        """
        return (
            kind,
            timestamp,
            step_name,
            error,
            self,
            status or self._status(),
            self.run_count,
            self.error_count,
            self._last_error,
            self._last_run,
            self.labels.copy() if self.labels else None,
            self._steps.capture() if self._has_steps else None,
            self._finished_runs,
            self._total_duration,
            self._next_run,
            self._cron_schedule,
        )

    def _metadata_from(self, capture: StateCapture) -> TaskMetadata:
        return _build_metadata(capture)

    # ---------------------------------------------------------------------------- events

    def _emit(
        self,
        type: TaskEventType,
        status: TaskStatus | None,
        *,
        step_name: str | None = None,
        error: BaseException | str | None = None,
        timestamp: float | None = None,
    ) -> None:
        route = self._route if self._routed == _events.generation else self._reroute()
        if route is not None:  # nothing is built unless somebody listens
            self._publish(
                route,
                type,
                status or self._status(),
                now_wall() if timestamp is None else timestamp,
                step_name,
                None if error is None else error_message(error),
            )

    def _add_sink(self, subject: EventSubject) -> None:
        """Forward this task's events to ``subject`` (a manager's) besides its own, and its
        members' events too (see ``_members``).

        Counted: a task reached by several ways (registered itself, a member of two
        registered chains...) delivers each event to ``subject`` once, until as many
        ``_drop_sink(subject)`` calls have undone them all.
        """
        counts = self._sink_counts
        if counts is None:
            counts = self._sink_counts = {}
        held = counts.get(subject, 0)
        counts[subject] = held + 1
        if not held:
            self._sinks = (*self._sinks, subject)
            self._routed = -1
            for member in self._members():
                member._add_sink(subject)

    def _drop_sink(self, subject: EventSubject) -> None:
        """Undo one ``_add_sink(subject)``; the last one stops the forwarding."""
        counts = self._sink_counts
        held = 0 if counts is None else counts.get(subject, 0)
        if not held:
            return
        assert counts is not None
        if held > 1:
            counts[subject] = held - 1
            return
        del counts[subject]
        if not counts:
            self._sink_counts = None
        self._sinks = tuple(s for s in self._sinks if s is not subject)
        self._routed = -1
        for member in self._members():
            member._drop_sink(subject)

    def _members(self) -> Iterable[Task[Any, Any]]:
        """The tasks this one runs as parts of itself, whose events go where its own go
        (a chain's or a parallel's tasks; none for a plain task)."""
        return ()

    def _reroute(self) -> Callable[[TaskEvent], None] | None:
        """Work out where events go now, and remember it until subscribers change."""
        self._routed = _events.generation  # read first: a change from now on is seen later
        listening = [s for s in (self._event_subject, *self._sinks) if s.observers]
        if not listening:
            route = None
        elif len(listening) == 1 and listening[0]._sole is not None:
            route = listening[0]._sole
        else:
            route = self._fan_out
        self._route = route
        return route

    def _fan_out(self, event: TaskEvent) -> None:
        """Hand ``event`` to the task's own subscribers, then to each manager's."""
        deliver_all((self._event_subject, *self._sinks), event)

    def _publish(
        self,
        route: Callable[[TaskEvent], None],
        kind: TaskEventType,
        status: TaskStatus,
        timestamp: float,
        step_name: str | None,
        error: str | None,
    ) -> None:
        """Build one event and hand it to ``route`` (see ``_reroute``).

        The event holds one tuple, the event's fields and a copy of the task's state; the
        metadata snapshot is built only if a subscriber reads ``event.task``. ``_run`` does
        the same in place for ``started`` and ``completed``.
        """
        event = _PendingEvent()
        event._capture = self._capture(status, kind, timestamp, step_name, error)
        try:
            route(event)
        except BaseException as exc:  # a sole subscriber's (deliver_all shields the rest)
            _subscriber_raised(event, exc)

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
        return self._run(input)

    def _trigger_coro(self, input: Any) -> Coroutine[Any, Any, R]:
        """The coroutine ``trigger(input)`` awaits, for callers that await it in place.

        Hot callers (manager, chain, parallel) skip even this call when ``_direct`` is set:
        then it is just ``_run(input)``.
        """
        if self._buffer is not None:
            return self._buffer.submit(input)
        return cast(Coroutine[Any, Any, R], self._run(input))

    async def trigger_unbuffered(self, input: In = None) -> R:  # type: ignore[assignment]
        """Run the task now, bypassing its buffer."""
        return await self._run(input)  # type: ignore[no-any-return]

    async def _run_for_result(self, input: Any) -> R:
        # ``_run`` returns None only under catch_errors, where None is the documented result.
        return await self._run(input)  # type: ignore[no-any-return]

    async def _run(self, input: Any, visited: set[Task[Any, Any]] | None = None) -> Any:
        """One run: setup, pre-task, function, after-task; with retries, timeout and events.

        This is the one entry point by which every trigger path (direct, buffered, manager,
        chain, cron) executes the task. It returns the result (``R``), or ``None`` when
        ``catch_errors`` swallowed a failure; typed ``Any`` so the hot path needs no casts.
        """
        loop = asyncio.get_running_loop()
        # The loop's wall-clock anchor and whether its clock is time.monotonic(), from
        # _clock's one-entry cache, read in place (hot path; see _clock.loop_facts). A loop
        # with its own clock (looptime's virtual time, uvloop) is asked as always.
        facts = _clock._last
        if facts is None or facts[0]() is not loop or facts[1] is not type(loop):
            facts = loop_facts(loop)
        monotonic = facts[3]
        start = _monotonic() if monotonic else loop.time()
        anchor = facts[2]
        self.run_count += 1
        self._running += 1
        self._last_run = anchor + start
        if self._has_steps:
            self._steps.reset()
        route = self._route if self._routed == _events.generation else self._reroute()
        if route is not None:
            # _publish() spelled out, with _capture()'s tuple: with a subscriber this runs on
            # every trigger, and the two calls cost a sixth of what a subscriber adds.
            event = _PendingEvent()
            event._capture = (
                "started",
                self._last_run,
                None,
                None,
                self,
                "running",
                self.run_count,
                self.error_count,
                self._last_error,
                self._last_run,
                self.labels.copy() if self.labels else None,
                self._steps.capture() if self._has_steps else None,
                self._finished_runs,
                self._total_duration,
                self._next_run,
                self._cron_schedule,
            )
            try:
                route(event)
            except BaseException as exc:  # a sole subscriber's (deliver_all shields the rest)
                _subscriber_raised(event, exc)
        try:
            if self._plain:
                # No setup, pre/after task, retries or timeout: call in place (hot path).
                call = self._call  # an attribute load, then a call: both specialise
                result = call(input)
                if self._is_async or inspect.isawaitable(result):
                    result = await result
            elif self._retries or self._timeout is not None:
                result = await self._attempts(input, visited)
            else:
                result = await self._attempt(input, visited)
        except asyncio.CancelledError:
            self._end_run(loop, start)
            self._emit("cancelled", None, error="cancelled")
            raise
        except BaseException as exc:
            # An Exception, or a BaseException that is not a cancellation (KeyboardInterrupt,
            # SystemExit, a custom one): a failed run either way, recorded before it goes on.
            self._end_run(loop, start)
            self._last_error = exc
            self.error_count += 1
            self._outcome = "failed"
            self._emit("failed", "failed", error=exc)
            logger.debug("task %r failed", self._name, exc_info=exc)
            if self.catch_errors and isinstance(exc, Exception):
                return None
            raise
        # _end_run inlined: this is the hot path.
        end = _monotonic() if monotonic else loop.time()
        self._running -= 1
        self._finished_runs += 1
        self._total_duration += end - start
        if self._has_steps:
            self._steps.finish_run()
        self._last_error = None
        self._outcome = "completed"
        route = self._route if self._routed == _events.generation else self._reroute()
        if route is not None:
            # _publish() spelled out, as for "started" above.
            event = _PendingEvent()
            event._capture = (
                "completed",
                anchor + end,
                None,
                None,
                self,
                "completed",
                self.run_count,
                self.error_count,
                self._last_error,
                self._last_run,
                self.labels.copy() if self.labels else None,
                self._steps.capture() if self._has_steps else None,
                self._finished_runs,
                self._total_duration,
                self._next_run,
                self._cron_schedule,
            )
            try:
                route(event)
            except BaseException as exc:  # a sole subscriber's (deliver_all shields the rest)
                _subscriber_raised(event, exc)
        return result

    def _end_run(self, loop: asyncio.AbstractEventLoop, start: float) -> None:
        self._running -= 1
        self._finished_runs += 1
        self._total_duration += loop.time() - start
        self._steps.finish_run()

    async def _attempts(self, input: Any, visited: set[Task[Any, Any]] | None) -> R:
        delay = self._retry_delay
        attempt = 0
        visited_before = frozenset(visited or ())
        while True:
            if attempt and visited is not None:
                # Every attempt starts from the pre-task: forget what a failed attempt visited.
                visited.intersection_update(visited_before)
            try:
                if self._timeout is None:
                    return await self._attempt(input, visited)
                return await self._attempt_with_timeout(input, visited, self._timeout)
            except Exception as exc:
                # Only an Exception is retried: a cancellation or an interrupt ends the run.
                if attempt >= self._retries or not self._should_retry(exc):
                    raise
                attempt += 1
                self._emit("retrying", "running", error=exc)
                logger.debug("task %r attempt %d failed; retrying", self._name, attempt)
                pause = self._pause(delay)
                if pause > 0:
                    await asyncio.sleep(pause)
                delay *= self._retry_backoff

    def _should_retry(self, error: Exception) -> bool:
        """Whether ``retry_on`` lets ``error`` be retried.

        A predicate that raises is a bug of its own, logged; the run then fails with the
        error it was asked about (retrying on a broken predicate could retry forever-failing
        work, and raising the predicate's error would hide the run's own).
        """
        retry_on = self._retry_on
        if isinstance(retry_on, tuple):
            return isinstance(error, retry_on)
        try:
            return bool(retry_on(error))
        except BaseException as exc:  # the run's own error goes on; this one is logged
            logger.error(
                "task %r: retry_on %s raised; the error is not retried",
                self._name,
                safe_repr(retry_on),
                exc_info=exc,
            )
            reraise_interrupt_later(exc)
            return False

    def _pause(self, delay: float) -> float:
        """The pause before a retry whose unjittered delay is ``delay``: times the jitter
        factor, then capped at ``retry_max_delay``."""
        jitter = self._retry_jitter
        if jitter:
            factor = random.uniform(1 - jitter, 1 + jitter)
            delay = delay * factor if factor else 0.0  # inf * 0 would be NaN
        cap = self._retry_max_delay
        if cap is not None and delay > cap:
            delay = cap
        return delay

    async def _attempt_with_timeout(
        self, input: Any, visited: set[Task[Any, Any]] | None, seconds: float
    ) -> R:
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await self._attempt(input, visited)
        except TimeoutError:
            if deadline.expired():
                raise TaskTimeoutError(self._name or "unnamed", seconds) from None
            raise

    def _run_linked(self, input: Any, visited: set[Task[Any, Any]]) -> Coroutine[Any, Any, Any]:
        """Run as another task's pre- or after-task.

        A plain task runs directly, sharing the ``visited`` set so that a task reached again
        within one run is not run twice. A buffered, run-once or debounced task keeps its own
        semantics and goes through its trigger.
        """
        if self._buffer is None and type(self)._trigger_coro is Task._trigger_coro:
            return self._run(input, visited)
        return self._trigger_coro(input)

    async def _attempt(self, input: Any, visited: set[Task[Any, Any]] | None) -> R:
        if self._setup is not None and not self._setup_done:
            await self._ensure_setup()
        pre, after = self._pre_task, self._after_task
        if pre is not None or after is not None:
            if visited is None:
                visited = {self}
            else:
                visited.add(self)
            if pre is not None:
                pre_task = _resolve(pre, "pre_task")
                if pre_task not in visited:
                    visited.add(pre_task)
                    await pre_task._run_linked(input, visited)
        value = self._call(input)
        if self._is_async or inspect.isawaitable(value):
            result: R = await cast(Awaitable[R], value)
        else:
            result = value
            if self._timeout is not None and not self._sync_warned:
                self._sync_warned = True
                _warn_sync_timeout(self, self._timeout)
        if after is not None:
            assert visited is not None
            after_task = _resolve(after, "after_task")
            if after_task not in visited:
                visited.add(after_task)
                await after_task._run_linked(result, visited)
        return result

    async def _ensure_setup(self) -> None:
        """Run ``task_setup`` once; concurrent first runs share one setup."""
        loop = asyncio.get_running_loop()
        setup_task = self._setup_task
        if setup_task is None or setup_task.get_loop() is not loop:
            setup_task = self._setup_task = loop.create_task(self._do_setup())
        await asyncio.shield(setup_task)

    async def _do_setup(self) -> None:
        assert self._setup is not None
        try:
            value = self._setup()
            if inspect.isawaitable(value):
                value = await value
        except BaseException:
            self._setup_task = None  # the next run tries again
            raise
        self._setup_value = value
        self._setup_done = True
        self._setup_task = None

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._name or 'unnamed'!r} status={self._status()} "
            f"runs={self.run_count} errors={self.error_count}>"
        )


def _build_metadata(capture: StateCapture) -> TaskMetadata:
    """The metadata snapshot of a state captured by ``Task._capture``."""
    (
        _type,
        _timestamp,
        _step_name,
        _error,
        task,
        status,
        run_count,
        error_count,
        last_error,
        last_run,
        labels,
        step_state,
        finished_runs,
        total_duration,
        next_run,
        cron_schedule,
    ) = capture
    steps: StepTracker = task._steps
    if step_state is None:
        step_infos: list[TaskStepInfo] = []
        current_step = None
        progress = 0
    else:
        step_infos = steps.infos(step_state)
        current_step = steps.current_step(step_state)
        progress = steps.progress(step_state)
    if last_run is None:
        last_run_at = None
    else:
        # Both events of one run carry the same start: convert it once.
        cached = task._last_run_at
        if cached is None or cached[0] != last_run:
            cached = task._last_run_at = (last_run, to_datetime(last_run))
        last_run_at = cached[1]
    # In TaskMetadata's field order (make_metadata skips the dataclass __init__).
    return make_metadata(
        (
            task._name or "unnamed",
            task.version,
            status,
            step_infos,
            current_step,
            progress,
            run_count,
            labels or {},
            None if last_error is None else error_message(last_error),
            error_count,
            last_run_at,
            None if next_run is None else to_datetime(next_run),
            cron_schedule,
            task._buffer is not None,
            task._buffer_max,
            task._timeout,
            total_duration / finished_runs if finished_runs else None,
        )
    )


def _resolve(ref: Task[Any, Any] | Callable[[], Task[Any, Any]], label: str) -> Task[Any, Any]:
    if isinstance(ref, Task):
        return ref
    resolved = ref()
    if not isinstance(resolved, Task):
        raise TypeError(f"{label} factory must return a Task, not {safe_repr(resolved)}")
    return resolved


@overload
def task(function: Callable[[In], Awaitable[T]], /) -> Task[T, dict[str, Any], In]: ...
@overload
def task(function: Callable[[In], T], /) -> Task[T, dict[str, Any], In]: ...
@overload
def task(function: Callable[[], Awaitable[T]], /) -> Task[T, dict[str, Any], None]: ...
@overload
def task(function: Callable[[], T], /) -> Task[T, dict[str, Any], None]: ...
@overload
def task(function: Callable[[In, Any], Awaitable[T]], /) -> Task[T, dict[str, Any], In]: ...
@overload
def task(function: Callable[[In, Any], T], /) -> Task[T, dict[str, Any], In]: ...
@overload
def task(function: None = None, /, **options: Unpack[TaskOptions]) -> _TaskDecorator: ...
def task(
    function: Callable[..., Any] | None = None, /, **options: Unpack[TaskOptions]
) -> Task[Any] | _TaskDecorator:
    """Build a :class:`Task` from a function: ``@task`` or ``@task(name="greet", ...)``."""
    if function is not None:
        return Task(task_function=function, **options)
    return _TaskDecorator(options)


class _TaskDecorator:
    __slots__ = ("_options",)

    def __init__(self, options: TaskOptions) -> None:
        self._options = options

    @overload
    def __call__(
        self, function: Callable[[In], Awaitable[T]], /
    ) -> Task[T, dict[str, Any], In]: ...
    @overload
    def __call__(self, function: Callable[[In], T], /) -> Task[T, dict[str, Any], In]: ...
    @overload
    def __call__(
        self, function: Callable[[], Awaitable[T]], /
    ) -> Task[T, dict[str, Any], None]: ...
    @overload
    def __call__(self, function: Callable[[], T], /) -> Task[T, dict[str, Any], None]: ...
    @overload
    def __call__(
        self, function: Callable[[In, Any], Awaitable[T]], /
    ) -> Task[T, dict[str, Any], In]: ...
    @overload
    def __call__(self, function: Callable[[In, Any], T], /) -> Task[T, dict[str, Any], In]: ...
    def __call__(self, function: Callable[..., Any], /) -> Task[Any]:
        return Task(task_function=function, **self._options)


# ------------------------------------------------------------------ for the scheduler


def set_cron_schedule(task: Task[Any, Any], expression: str | None) -> None:
    """Show ``task``'s cron expression in its metadata and events (the scheduler owns it)."""
    task._cron_schedule = expression


def set_next_run(task: Task[Any, Any], when: float | None) -> None:
    """Show ``task``'s next scheduled run (epoch seconds) in its metadata and events (the
    scheduler owns it)."""
    task._next_run = when


def emit_notice(task: Task[Any, Any], type: TaskEventType, message: str) -> None:
    """Emit an event of ``task`` that carries ``message`` as its error (the scheduler's
    ``missed`` and ``skipped``)."""
    task._emit(type, None, error=message)
