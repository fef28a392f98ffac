"""How a task executes one run: its identity, bookkeeping, events and outcome.

``TaskRunner`` is the execution half of :class:`~taskbuffer.Task` (which adds the public
surface): it owns the task's run bookkeeping (counts, last error, durations, the runs in
flight) and ``_perform``, the one coroutine through which every path executes a run (see
``taskbuffer/_run.py``). Other modules start runs through :func:`run_task`,
:func:`start_run` and :func:`member_entry`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from contextvars import Token
from typing import TYPE_CHECKING, Any, TypeAlias

from . import _clock
from ._attempts import Attempts
from ._clock import loop_facts
from ._emitter import STALE, send
from ._run import CURRENT, Run, new_linked_run
from ._snapshot import Capture, metadata
from ._steps import RunSteps, StepTracker

if TYPE_CHECKING:
    from ._events import TaskEventType
    from ._metadata import TaskMetadata, TaskStatus

__all__ = (
    "TaskRunner",
    "completed_steps",
    "member_entry",
    "run_entry",
    "run_task",
    "set_cron_schedule",
    "set_next_run",
)

logger = logging.getLogger("taskbuffer")
_monotonic = time.monotonic
Seen: TypeAlias = "set[Any] | None"  # pre- and after-tasks one run already ran
# The running loop, handed on by a caller that has it: on Python 3.11 every
# asyncio.get_running_loop() is a getpid() system call, a tenth of a by-name trigger's time.
Loop: TypeAlias = asyncio.AbstractEventLoop
_current_get = CURRENT.get
_current_set = CURRENT.set
_current_reset = CURRENT.reset


# How a run ends as cancelled: a cancellation, or its coroutine closed (a pending asyncio task
# that nobody holds, collected; close() on a suspended trigger): abandoned, not failed. The
# garbage collector closes such a coroutine in whatever context is current then, where an
# outermost run's token does not apply (and whose own current run must not change): the value
# stays in the run's context, as an ended run that readers walk past.
_ABANDONED = (asyncio.CancelledError, GeneratorExit)


class TaskRunner(Attempts):
    """The execution half of a task (see the module docstring)."""

    __slots__ = (
        "_cron_schedule",
        "_direct",
        "_entry",
        "_finished_runs",
        "_has_steps",
        "_inflight",
        "_last_error",
        "_last_run",
        "_last_steps",
        "_next_run",
        "_outcome",
        "_steps",
        "_total_duration",
        "error_count",
        "labels",
        "_run_count",
    )

    _steps: StepTracker
    labels: dict[str, str]

    def _init_state(
        self, *, direct: bool, trigger: Callable[[Any], Coroutine[Any, Any, Any]]
    ) -> None:
        """The bookkeeping of a task that has not run yet (after ``_init_attempts``).

        ``direct``: a trigger is just a run (no buffer, and the class keeps Task's trigger);
        ``trigger`` is the task's trigger, what executes a trigger of a task that is not.
        """
        self._direct = direct
        self._entry = self._perform if direct else trigger
        self._run_count = 0  # runs started (read-only: running is derived from it)
        self.error_count = 0
        self._last_error: BaseException | None = None
        self._last_run: float | None = None
        self._outcome: TaskStatus = "idle"
        self._finished_runs = 0
        self._total_duration = 0.0
        self._cron_schedule: str | None = None
        self._next_run: float | None = None
        self._has_steps = bool(self._steps.steps)
        # The runs in flight, in the order they started, and the steps of the last finished
        # one: what get_progress() describes (kept only for a task with steps).
        self._inflight: dict[Run, None] = {}
        self._last_steps: RunSteps | None = self._steps.start() if self._has_steps else None

    @property
    def run_count(self) -> int:
        """How many runs started (failed ones included; retries of one run do not add)."""
        return self._run_count

    def _status(self) -> TaskStatus:
        return "running" if self._run_count != self._finished_runs else self._outcome

    def _shown_steps(self) -> RunSteps | None:
        """The steps of the most recently started run in flight, else of the last finished."""
        inflight = self._inflight
        if inflight:
            return next(reversed(inflight)).steps
        return self._last_steps

    def _capture(
        self,
        kind: TaskEventType,
        timestamp: float,
        step_name: str | None,
        error: str | None,
        status: TaskStatus,
        run: Run | None,
    ) -> Capture:
        """Copy what can change of the task's and the run's state; the one place that does.

        The tuple is a :data:`~taskbuffer._snapshot.Capture`, in the order ``_snapshot``
        names its positions (built here in place: a call with 22 arguments would cost a
        third of what an event costs).
        """
        labels = self.labels
        live = shown = None
        if self._has_steps:
            live = self._shown_steps()
            shown = None if live is None else live.copy()
        if run is None:
            state, attempt, blocked_by, finished, steps = None, 1, None, None, None
        else:
            state, attempt, blocked_by, finished = (
                run.state,
                run.attempt,
                run.blocked_by,
                run.finished,
            )
            steps = run.steps
            # A run that has not started has no steps of its own (not the running one's).
            steps = None if steps is None else shown if steps is live else steps.copy()
        return (
            kind,
            timestamp,
            step_name,
            error,
            self,
            status,
            self._run_count,
            self.error_count,
            self._last_error,
            self._last_run,
            labels.copy() if labels else None,
            self._finished_runs,
            self._total_duration,
            self._next_run,
            self._cron_schedule,
            shown,
            run,
            state,
            attempt,
            blocked_by,
            finished,
            steps,
        )

    def _snapshot(self) -> TaskMetadata:
        """The task's metadata snapshot now."""
        return metadata(self._capture("started", 0.0, None, None, self._status(), None))

    # --------------------------------------------------------------------------- runs

    async def _perform(
        self, input: Any, run: Run | None = None, visited: Seen = None, loop: Loop | None = None
    ) -> Any:
        """One run (the caller's, maybe one that waited, or a new one): see _execute."""
        if loop is None:  # (a caller that knows the running loop says: see Loop)
            loop = asyncio.get_running_loop()
        # _clock's one-entry cache, read in place (see _clock.loop_facts).
        loop_ref, loop_class, anchor, monotonic = _clock.last
        if loop_ref() is not loop or loop_class is not type(loop):
            _, _, anchor, monotonic = loop_facts(loop)
        start = _monotonic() if monotonic else loop.time()
        if run is None:  # Run's fields, less those that starting sets (see _run.fill)
            run = Run()
            run.task = self
            run.input = input
            run.attempt = 1
            run.finished = run.steps = run.drawn_id = None
        run.started = self._last_run = anchor + start
        run.state = "running"
        # Enter the run (see _run.CURRENT): its parent is the innermost running run here.
        parent = _current_get()
        while parent is not None and parent.state != "running":
            parent = parent.parent  # ended: it only lingers in the context
        run.parent = parent
        token: Token[Run | None] | None = _current_set(run)
        if parent is not None:  # only an outermost run resets it as it ends
            token = None
        self._run_count += 1
        if self._has_steps:
            self._start_steps(run)
        route = self._route
        if route is STALE:
            route = self._reroute()
        if route is not None:
            send(route, self._capture("started", run.started, None, None, "running", run))
        try:
            if self._bare:  # an async function with nothing around it: called in place
                result = await self._call(input)
            else:
                result = await self._execute(input, visited, run)
        except BaseException as exc:
            return self._run_failed(loop, start, run, exc, token)
        if token is not None:
            _current_reset(token)
        end = _monotonic() if monotonic else loop.time()
        run.finished = anchor + end
        run.state = "completed"
        self._finished_runs += 1
        self._total_duration += end - start
        if self._has_steps:
            self._end_steps(run)
        self._last_error = None
        self._outcome = "completed"
        route = self._route
        if route is STALE:
            route = self._reroute()
        if route is not None:
            send(route, self._capture("completed", anchor + end, None, None, "completed", run))
        return result

    async def _execute(self, input: Any, visited: set[Any] | None, run: Run) -> Any:
        """A run's setup, pre-task, function and after-task, with retries and timeout (of a
        task that is not bare). Returns the result, or ``None`` when ``catch_errors``
        swallowed a failure."""
        if self._plain:  # a plain function, or one that returns an awaitable
            result = self._call(input)
            return (await result) if inspect.isawaitable(result) else result
        if self._retries or self._timeout is not None:
            return await self._attempts(input, visited, run)
        return await self._attempt(input, visited)

    def _run_linked(self, input: Any, visited: set[Any]) -> Coroutine[Any, Any, Any]:
        """Run as another task's pre- or after-task, inside that task's run.

        A plain task runs directly, sharing the ``visited`` set so that a task reached again
        within one run is not run twice; its run is marked ``linked``, so that
        ``current_run()`` in it is its owner's. A buffered, run-once or debounced task keeps
        its own semantics and goes through its trigger.
        """
        if self._direct:
            return self._perform(input, new_linked_run(self, input), visited)
        return self._entry(input)

    def _run_failed(
        self,
        loop: asyncio.AbstractEventLoop,
        start: float,
        run: Run,
        exc: BaseException,
        token: Token[Run | None] | None,
    ) -> Any:
        """End a run that raised ``exc``: ``None`` under ``catch_errors``, else raise it.

        ``token`` resets the current-run variable as an outermost run ends (see _perform).
        """
        if token is not None:
            try:
                _current_reset(token)
            except ValueError:  # closed from another context: see _ABANDONED
                pass
        end = loop.time()
        run.finished = _clock.wall_anchor(loop) + end
        self._finished_runs += 1
        self._total_duration += end - start
        if self._has_steps:
            self._end_steps(run)
        if isinstance(exc, _ABANDONED):
            run.state = "cancelled"
            self._emit("cancelled", None, run, error="cancelled")
            raise exc
        # An Exception, or a BaseException that is not a cancellation (KeyboardInterrupt,
        # SystemExit, a custom one): a failed run either way, recorded before it goes on.
        run.state = "failed"
        self._last_error = exc
        self.error_count += 1
        self._outcome = "failed"
        self._emit("failed", "failed", run, error=exc)
        logger.debug("task %r failed", self._task_name(), exc_info=exc)
        if self.catch_errors and isinstance(exc, Exception):
            return None
        raise exc

    def _start_steps(self, run: Run) -> None:
        run.steps = self._steps.start()
        self._inflight[run] = None

    def _end_steps(self, run: Run) -> None:
        steps = run.steps
        assert steps is not None
        steps.finish()
        del self._inflight[run]
        self._last_steps = steps

    def _task_name(self) -> str:
        name: str | None = getattr(self, "name", None)
        return name or "unnamed"


MemberEntry: TypeAlias = Callable[[Any, None, None, Loop], Coroutine[Any, Any, Any]]


def member_entry(task: TaskRunner) -> MemberEntry:
    """What executes a trigger of ``task`` with an input in the running loop, called as
    ``entry(input, None, None, loop)``: its run coroutine for a plain task, its trigger for a
    buffered, run-once or debounced one (chains and parallels keep one per member, so that a
    member's trigger costs no call more than its run)."""
    if task._direct:
        return task._perform
    trigger = task._entry

    def through_trigger(input: Any, run: None, visited: None, loop: Loop) -> Any:
        return trigger(input)

    return through_trigger


RunEntry: TypeAlias = Callable[[Any, Run, None, Loop], Coroutine[Any, Any, Any]]


def run_entry(task: TaskRunner) -> RunEntry:
    """What executes a run of ``task`` that cannot wait (a manager's by-name trigger without
    constraint groups, which keeps one per task), called as ``entry(input, run, None, loop)``
    in the running ``loop`` and awaited at once. ``run`` is new, with ``_run.fill``'s stores
    less ``state``, ``started`` and ``parent``, which the entry sets: the task's run coroutine
    for a plain task (as for a run it makes itself); its trigger, which ``run`` follows, for a
    buffered, run-once or debounced one."""
    if task._direct:
        return task._perform
    trigger = task._entry

    def through_trigger(input: Any, run: Run, visited: None, loop: Loop) -> Any:
        run.state = "waiting"
        run.started = run.parent = None
        return _run_through_trigger(trigger, run)

    return through_trigger


def run_task(task: TaskRunner, run: Run, loop: Loop) -> Coroutine[Any, Any, Any]:
    """Execute ``run`` (made by the caller, maybe one that waited) of ``task`` in the running
    ``loop``."""
    if task._direct:
        return task._perform(run.input, run, None, loop)
    return _run_through_trigger(task._entry, run)


async def _run_through_trigger(trigger: Callable[[Any], Coroutine[Any, Any, Any]], run: Run) -> Any:
    """A manager's run of a buffered, run-once or debounced task: the task's own semantics
    decide how it executes (maybe joining a run in progress, whose events it then shares);
    ``run`` follows the trigger from its start to its outcome."""
    loop = asyncio.get_running_loop()
    run.state = "running"
    run.started = _clock.wall_anchor(loop) + loop.time()
    try:
        result = await trigger(run.input)
    except _ABANDONED:
        run.state = "cancelled"
        raise
    except BaseException:
        run.state = "failed"
        raise
    finally:
        run.finished = _clock.wall_anchor(loop) + loop.time()
    run.state = "completed"
    return result


def set_cron_schedule(task: TaskRunner, expression: str | None) -> None:
    """Show ``task``'s cron expression in its metadata and events (the scheduler owns it)."""
    task._cron_schedule = expression


def set_next_run(task: TaskRunner, when: float | None) -> None:
    """Show ``task``'s next scheduled run (epoch seconds) in its metadata and events (the
    scheduler owns it)."""
    task._next_run = when


def completed_steps(task: TaskRunner) -> list[str]:
    """The steps that ``task``'s shown run (see ``Task.get_progress``) reached."""
    steps = task._shown_steps()
    return [] if steps is None else steps.completed_names()
