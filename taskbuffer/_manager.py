"""``TaskManager``: a registry of tasks run through constraint groups, cron and a coordinator."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import partial
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar, overload

from ._clock import now_wall
from ._constraints import TaskConstraintGroup
from ._events import EventSubject
from ._exceptions import TaskExecutionError, TaskManagerStoppedError, TaskNotFoundError
from ._metadata import ScheduledTaskInfo, TaskExecutionReport, TaskMetadata
from ._scheduler import Scheduler
from ._shared import current_task_in
from ._task import Task, completed_steps
from ._validation import check_count, check_seconds, safe_repr
from ._waiting import (
    GO,
    Claim,
    Shared,
    SharingRun,
    Waiter,
    begin,
    enqueue,
    leave,
    release,
    share,
    sharing,
    try_acquire,
)
from .distributed import AbstractDistributedCoordinator

__all__ = ("TaskManager", "TaskManagerStatistics")

logger = logging.getLogger("taskbuffer")

if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task  # implemented in C
else:
    # On 3.11 asyncio.current_task() is a Python function costing more than the rest of an
    # unconstrained trigger's bookkeeping; this is the dict it reads, looked up directly.
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

    def _current_task() -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = _current_tasks[asyncio.get_running_loop()]
        return task


R = TypeVar("R")
In = TypeVar("In")  # a task's input type (see Task)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskManagerStatistics:
    """A snapshot: registered tasks, runs in flight, triggers waiting, schedules pending."""

    tasks: int
    running: int
    waiting: int
    scheduled: int


class TaskManager:
    """Registers tasks and runs them through constraint groups, cron and a coordinator.

    :param distributed_coordinator: consulted before each cron tick (see
        :mod:`taskbuffer.distributed`).
    :param timezone: the time zone cron expressions and naive datetimes are read in; local
        time by default.
    """

    __slots__ = (
        "__weakref__",
        "_accepting",
        "_active",
        "_admitted",
        "_callers",
        "_forwarding",
        "_groups",
        "_hard_stop",
        "_held",
        "_idle",
        "_ref",
        "_running",
        "_scheduler",
        "_seq",
        "_spawns",
        "_started",
        "_stop_cancelled",
        "_stop_calls",
        "_stoppers",
        "_stopping",
        "_tasks",
        "_waiting",
        "distributed_coordinator",
        "task_subject",
        "timezone",
    )

    def __init__(
        self,
        *,
        distributed_coordinator: AbstractDistributedCoordinator | None = None,
        timezone: tzinfo | None = None,
    ) -> None:
        if distributed_coordinator is not None and not isinstance(
            distributed_coordinator, AbstractDistributedCoordinator
        ):
            raise TypeError(
                "distributed_coordinator must be an AbstractDistributedCoordinator or None, "
                f"not {safe_repr(distributed_coordinator)}"
            )
        if timezone is not None and not isinstance(timezone, tzinfo):
            raise TypeError(
                f"timezone must be a datetime.tzinfo or None, not {safe_repr(timezone)}"
            )
        self.distributed_coordinator = distributed_coordinator
        self.timezone = timezone
        self.task_subject = EventSubject()
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._groups: list[TaskConstraintGroup] = []
        self._forwarding = True
        self._accepting = True
        self._started = False
        # Caller asyncio tasks with a run of ours in flight, so that stop(timeout=...) can
        # cancel exactly those; in the order their runs began (see _cancel_runs).
        self._active: dict[asyncio.Task[Any], None] = {}
        self._stop_cancelled: set[asyncio.Task[Any]] = set()
        # Per caller asyncio task, the claims of its constrained runs in flight, outermost
        # first: a nested trigger that needs a slot only its own callers hold would wait
        # forever (see _check_self_deadlock).
        self._held: dict[asyncio.Task[Any], list[list[Claim]]] = {}
        # A share-latest run's own asyncio task -> the asyncio task of the caller that awaits
        # it (until the caller leaves): its callers' slots are held for it too.
        self._callers: dict[asyncio.Task[Any], asyncio.Task[Any]] = {}
        self._running = 0
        self._waiting = 0
        # Triggers past the queue (holding their slots) and not yet finished: in
        # should_execute, or running. stop() waits for them too.
        self._admitted = 0
        self._hard_stop = False  # stop(timeout=...) ran out: admitted triggers must not start
        self._seq = itertools.count()
        self._idle: asyncio.Future[None] | None = None
        self._stoppers = 0  # stop() calls waiting for the runs (they share _idle)
        self._stopping = 0  # stop() calls under way (start() refuses to overlap them)
        self._stop_calls = 0  # how many stop() calls began (a start() overtaken by one sees it)
        self._scheduler = Scheduler(self)
        # The asyncio tasks of spawn(), kept until they end (the loop holds only weak
        # references); the value says whether the trigger has reached the manager yet.
        self._spawns: dict[asyncio.Task[Any], bool] = {}
        # Our token as the owner of groups and waiters: weak, so that a group does not keep
        # a manager alive that nothing else uses (and is then free to join another).
        self._ref = weakref.ref(self)

    def __repr__(self) -> str:
        return (
            f"<TaskManager running={self._running} queued={self._waiting} tasks={len(self._tasks)}>"
        )

    # -------------------------------------------------------------------------- registry

    @property
    def task_map(self) -> Mapping[str, Task[Any, Any]]:
        """A read-only view of the registered tasks by name."""
        return MappingProxyType(self._tasks)

    @property
    def constraint_groups(self) -> tuple[TaskConstraintGroup, ...]:
        """The constraint groups, in the order they apply."""
        return tuple(self._groups)

    @property
    def started(self) -> bool:
        """Whether ``start()`` was called (and ``stop()`` not since)."""
        return self._started

    def add_task(self, task: Task[Any, Any]) -> None:
        """Register ``task`` under its name.

        :raises ValueError: the task has no name, or the name is taken.
        """
        if not isinstance(task, Task):
            raise TypeError(f"add_task takes a Task, not {safe_repr(task)}")
        name = task.name
        if name is None:
            raise ValueError("a task needs a name to be added to a TaskManager")
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already registered")
        self._tasks[name] = task
        if self._forwarding:
            task._add_sink(self.task_subject)  # a chain's or parallel's members' events too

    def remove_task(self, task: Task[Any, Any]) -> None:
        """Unregister ``task``: stop forwarding its events and drop its schedules.

        :raises TaskNotFoundError: ``task`` is not registered here.
        """
        name = task.name
        if name is None or self._tasks.get(name) is not task:
            raise TaskNotFoundError(str(name))
        del self._tasks[name]
        if self._forwarding:
            task._drop_sink(self.task_subject)
        self._scheduler.remove(task)

    def get_task_by_name(self, name: str) -> Task[Any, Any] | None:
        """The task registered as ``name``, or ``None``."""
        return self._tasks.get(name)

    def _require(self, name: str) -> Task[Any, Any]:
        try:
            return self._tasks[name]
        except KeyError:
            raise TaskNotFoundError(name) from None

    def get_task_metadata(self, name: str) -> TaskMetadata | None:
        """A snapshot of task ``name``, or ``None`` if there is none."""
        task = self._tasks.get(name)
        return None if task is None else task.get_metadata()

    def get_all_tasks_metadata(self) -> list[TaskMetadata]:
        """Snapshots of every registered task."""
        return [task.get_metadata() for task in self._tasks.values()]

    def get_tasks_by_label(self, key: str, value: str) -> list[Task[Any, Any]]:
        """The registered tasks whose label ``key`` is ``value``."""
        return [task for task in self._tasks.values() if task.labels.get(key) == value]

    def get_tasks_metadata_by_label(self, key: str, value: str) -> list[TaskMetadata]:
        """Snapshots of the registered tasks whose label ``key`` is ``value``."""
        return [task.get_metadata() for task in self.get_tasks_by_label(key, value)]

    # ------------------------------------------------------------------------ constraints

    def add_constraint_group(self, group: TaskConstraintGroup) -> None:
        """Apply ``group`` to triggers from now on (after the groups added before it).

        A group belongs to one manager at a time; ``remove_constraint_group`` frees it.

        :raises ValueError: a group with the same name is already added, or ``group`` is
            added to another manager.
        """
        if not isinstance(group, TaskConstraintGroup):
            raise TypeError(
                f"add_constraint_group takes a TaskConstraintGroup, not {safe_repr(group)}"
            )
        if any(g.name == group.name for g in self._groups):
            raise ValueError(f"a constraint group named {group.name!r} is already added")
        owner = group._owner
        other = None if owner is None else owner()
        if other is not None:
            raise ValueError(
                f"constraint group {group.name!r} is already added to another TaskManager, "
                f"{other!r}; a group constrains one manager at a time: remove it there first "
                f"(remove_constraint_group({group.name!r}))"
            )
        group._owner = self._ref
        self._groups.append(group)

    def remove_constraint_group(self, name: str) -> None:
        """Stop applying the group ``name``; triggers waiting only on it are re-offered.

        :raises KeyError: no group of that name is added.
        """
        for i, group in enumerate(self._groups):
            if group.name == name:
                del self._groups[i]
                group._owner = None
                try:
                    now = asyncio.get_running_loop().time()
                except RuntimeError:
                    return
                from ._waiting import reoffer

                reoffer(group, now)
                return
        raise KeyError(f"no constraint group named {name!r} is added")

    # ---------------------------------------------------------------------------- triggers

    async def trigger_task_by_name(self, name: str, input: Any = None) -> Any:
        """Trigger the task registered as ``name`` through the constraints.

        :raises TaskNotFoundError: no such task.
        """
        task = self._tasks.get(name)
        if task is None:
            raise TaskNotFoundError(name)
        if self._groups or not self._accepting or self._hard_stop:
            return await self.trigger_task_constrained(task, input)
        # No constraint group: the bookkeeping of trigger_task_constrained's run phase, here,
        # so that the hot by-name path pays for one coroutine frame and not two.
        current = _current_task()
        tracked = current not in self._active  # a nested run is tracked by the outer one
        if tracked:
            # Another asyncio task's run in flight (the oldest): it must be in this loop.
            if self._active and next(iter(self._active)).get_loop() is not current.get_loop():
                raise self._other_loop_error()
            self._active[current] = None
        self._admitted += 1
        self._running += 1
        try:
            return await (task._run(input) if task._direct else task._trigger_coro(input))
        except asyncio.CancelledError:
            if tracked:  # a nested level lets the cancellation reach the runs around it
                self._raise_if_stopping(current, task)
            raise
        finally:
            self._running -= 1
            self._admitted -= 1
            if tracked:
                del self._active[current]
            if self._idle is not None:
                self._check_idle()

    async def trigger_task_constrained(
        self,
        task: Task[R, Any, In],
        input: In = None,  # type: ignore[assignment]
        *,
        priority: int = 0,
    ) -> R | None:
        """Run ``task`` once every constraint group lets it.

        Returns the task's result, or ``None`` when a group's ``should_execute`` said no. A
        trigger that must wait emits ``queued``; waiting triggers start by ``priority``
        (higher first), then in arrival order. The run happens in the caller's asyncio task,
        which ``stop(timeout=...)`` may cancel; that reaches the caller as
        ``TaskManagerStoppedError``.

        :raises TaskManagerStoppedError: the manager is stopped or stopping.
        """
        # This one coroutine is every trigger's whole path (trigger_task is this method):
        # each frame more would cost time on the hot path and memory for every waiter.
        if type(priority) is not int:  # bool is not accepted either
            raise TypeError(f"priority must be an int, not {safe_repr(priority)}")
        if not self._accepting:
            raise TaskManagerStoppedError("the TaskManager is stopped; call start() to use it")
        claims: list[Claim] | None = None
        waited = False
        if self._groups:
            loop = asyncio.get_running_loop()
            claims = []
            try:
                for group in self._groups:
                    key = group.get_constraint_key(task, input)
                    if key is not None:
                        claims.append(group._ensure(key, loop))
            except BaseException as exc:  # a KeyboardInterrupt or one of the user's own too
                now = loop.time()
                for st in claims:
                    st.group.maybe_drop(st, now)
                if not isinstance(exc, asyncio.CancelledError):
                    task._emit("failed", "failed", error=exc)
                raise
            # A newcomer ranks after every waiter of its priority or higher (seq = inf).
            blocked = try_acquire(claims, loop.time(), priority, owner=self._ref)
            if blocked is not None:
                if self._held:
                    # Without a current task (None) nothing is held: .get gives None.
                    held = self._held.get(current_task_in(loop))  # type: ignore[arg-type]
                    if held:
                        self._check_self_deadlock(task, claims, held)
                waited = True
                waiter = Waiter(claims, loop.create_future(), priority, next(self._seq), self._ref)
                enqueue(waiter, *blocked)
                blocked = None  # not kept alive for as long as the trigger waits
                self._waiting += 1
                if task._event_subject.observers or task._sinks:
                    task._emit("queued", None)
                try:
                    outcome = await waiter.future
                    if outcome is GO:
                        # Counted before the idle check below: this trigger goes on to run.
                        self._admitted += 1
                except asyncio.CancelledError:
                    future = waiter.future
                    if future.cancelled():  # still in the queue
                        leave(waiter, loop.time())
                    elif future.exception() is None and future.result() is GO:
                        # Woken, then cancelled before it could run: hand the slots on.
                        release(claims, loop.time(), ran=False)
                    task._emit("cancelled", None, error="cancelled while waiting")
                    raise
                except TaskManagerStoppedError:  # failed by stop(): it ends, as it began, seen
                    task._emit("cancelled", None, error="the TaskManager stopped")
                    raise
                finally:
                    self._waiting -= 1
                    if self._idle is not None:
                        self._check_idle()
                if type(outcome) is Shared:
                    return outcome.value  # type: ignore[no-any-return]
        if not waited:
            self._admitted += 1
        # From here the trigger holds its slots; stop() waits for it and, past its timeout,
        # cancels it, whether it is in should_execute or running.
        current = _current_task()
        tracked = current not in self._active  # a nested run is tracked by the outer one
        if tracked:
            self._active[current] = None
        if claims:
            held = self._held.get(current)
            if held is None:
                self._held[current] = [claims]
            else:
                held.append(claims)
        ran = refused = handed_off = False
        try:
            # Another asyncio task's run in flight (the oldest; current came last): this loop's?
            if (
                tracked
                and len(self._active) > 1
                and next(iter(self._active)).get_loop() is not current.get_loop()
            ):
                raise self._other_loop_error()
            if self._hard_stop:
                refused = True
                task._emit("cancelled", None, error="the TaskManager stopped")
                raise TaskManagerStoppedError(
                    f"task {task.name!r} was not started because the TaskManager stopped"
                )
            if claims is not None:
                for group in self._groups:
                    if group.should_execute is not None and not (
                        await group.check_should_execute(task, input)
                    ):
                        task._emit("skipped", None)
                        return None
            ran = True
            self._running += 1
            if claims:
                if sharing(claims):
                    handed_off = True  # the run gives back its slots (and counts) when it ends
                    return await self._run_shared(task, input, claims)  # type: ignore[no-any-return]
                for st in claims:
                    if st.pending:  # a rate-limited key: its window counts the run from now
                        begin(claims, loop.time())
                        break
            try:
                result = await (task._run(input) if task._direct else task._trigger_coro(input))
            finally:
                self._running -= 1
            return result
        except asyncio.CancelledError:
            if not ran:  # cancelled inside an async should_execute
                task._emit("cancelled", None, error="cancelled before it started")
            if tracked:  # a nested level lets the cancellation reach the runs around it
                self._raise_if_stopping(current, task)
            raise
        except BaseException as exc:  # not a cancellation (caught above)
            if not ran and not refused:  # should_execute raised (or the loop check)
                task._emit("failed", "failed", error=exc)
            raise
        finally:
            if claims is not None:
                if not handed_off:
                    release(claims, loop.time(), ran=ran)
                if claims:  # _held's entry, taken above (inlined: every constrained run)
                    held = self._held[current]
                    held.pop()
                    if not held:
                        del self._held[current]
            self._end_admitted(current, tracked)

    # Same signature with an optional ``priority``; an alias so it costs no extra frame.
    trigger_task = trigger_task_constrained

    def _check_self_deadlock(
        self, task: Task[Any, Any], claims: list[Claim], held: list[list[Claim]]
    ) -> None:
        """Refuse a blocked trigger that waits for a key only its own callers hold.

        The runs in flight in the calling asyncio task (the run that triggers, and the runs
        that triggered it), whose claims are ``held``, wait for this trigger, so slots they
        hold are never given back while it waits.
        """
        held = list(held)
        caller = self._callers.get(_current_task())
        while caller is not None:
            # A share-latest run in a task of its own: its caller's runs wait for it too
            # (their list of a run's claims is the very list its own task holds).
            held.extend(c for c in self._held.get(caller, ()) if not any(c is h for h in held))
            caller = self._callers.get(caller)
        for st in claims:
            group = st.group
            if group not in self._groups:  # removed: it no longer blocks
                continue
            mine = sum(1 for outer in held for claim in outer if claim is st)
            if mine and mine >= group.max_concurrent:
                error = RuntimeError(
                    f"task {task.name!r} would wait forever for key {st.key!r} of constraint "
                    f"group {group.name!r}: every slot of it (max_concurrent="
                    f"{group.max_concurrent}) is held by the run that triggers it or by that "
                    "run's callers, which wait for this trigger. Give the nested trigger "
                    "another key (or None), raise max_concurrent, or call the inner task "
                    "directly (task.trigger()) instead of through the TaskManager"
                )
                now = asyncio.get_running_loop().time()
                for claim in claims:
                    claim.group.maybe_drop(claim, now)
                task._emit("failed", "failed", error=error)
                raise error

    @staticmethod
    def _other_loop_error() -> RuntimeError:
        """A trigger or stop() from another event loop than that of the runs in flight."""
        return RuntimeError(
            "this TaskManager has runs in flight in another event loop (another "
            "thread?); a TaskManager serves one event loop at a time: use one "
            "TaskManager per loop, or let the other loop's runs finish first"
        )

    async def _run_shared(self, task: Task[Any, Any], input: Any, claims: list[Claim]) -> Any:
        """Run a trigger that holds a ``share-latest`` key, in a task of its own.

        The triggers waiting for that key await the run as much as its caller does: if the
        caller is cancelled while any of them waits, it just leaves and the run goes on (it
        is cancelled when the last of them leaves, see ``SharingRun``); else the run is
        cancelled and the caller waits for it to end, as for a run in its own task.
        """
        run = SharingRun(claims)
        runner = run.task = asyncio.get_running_loop().create_task(self._drive(task, input, run))
        self._active[runner] = None  # stop(timeout=...) reaches it even once its caller left
        # A trigger nested in the run that waits for a slot the run (or its callers) holds
        # would wait forever: _check_self_deadlock follows the run to its callers.
        self._held[runner] = [claims]
        self._callers[runner] = _current_task()
        runner.add_done_callback(partial(self._shared_done, task, run))
        try:
            return await asyncio.shield(runner)
        except asyncio.CancelledError:
            if not runner.done():
                if run.has_sharers():
                    del self._callers[runner]  # its callers go on without waiting for it
                    run.detach()
                else:
                    run.abandon()
                    await asyncio.wait((runner,))
            raise

    async def _drive(self, task: Task[Any, Any], input: Any, run: SharingRun) -> Any:
        run.began = True
        begin(run.claims, asyncio.get_running_loop().time())  # rate windows count it from here
        result = None
        succeeded = False
        try:
            result = await (task._run(input) if task._direct else task._trigger_coro(input))
            succeeded = True
        finally:
            # In the run's last step, as for a run in its caller's task: a trigger woken
            # in between would start without the cooldown of this end.
            self._end_shared(run, succeeded, result)
        return result

    def _end_shared(self, run: SharingRun, succeeded: bool, result: Any) -> None:
        """A shared run ended: share its result, give back its slots and counts, once."""
        runner = run.task
        assert runner is not None
        now = runner.get_loop().time()
        run.end()
        self._running -= 1
        self._active.pop(runner, None)
        self._stop_cancelled.discard(runner)
        del self._held[runner]
        self._callers.pop(runner, None)
        if succeeded and not run.abandoned:
            share(run.claims, result, now, owner=self._ref)
        release(run.claims, now, ran=run.began)
        if self._idle is not None:
            self._check_idle()

    def _shared_done(
        self, task: Task[Any, Any], run: SharingRun, runner: asyncio.Task[Any]
    ) -> None:
        if not run.began:  # cancelled before its first step: it never ran
            task._emit("cancelled", None, error="cancelled before it started")
            self._end_shared(run, False, None)
        elif not runner.cancelled():
            # Retrieved: a failure whose caller left is not "never retrieved" (the run
            # reported it on the event stream and the logger).
            runner.exception()

    def _raise_if_stopping(self, current: asyncio.Task[Any], task: Task[Any, Any]) -> None:
        """Turn a cancellation that ``stop(timeout=...)`` caused into its error.

        Called only at the outermost trigger of the caller's asyncio task: the runs nested
        inside it must see the cancellation as such (no retry, no failure), all the way up.
        Only stop's own cancellation becomes the error: one that someone else asked for too
        goes on as such. That is also how runs nested across asyncio tasks (a buffered or
        TaskOnce run, a parallel's children, a task a run spawned and awaits) stay cancelled:
        the run around such a task, cancelled first (see _cancel_runs), cancels it as well.
        """
        if current in self._stop_cancelled:
            self._stop_cancelled.discard(current)
            if current.cancelling() > 1:
                return
            current.uncancel()
            raise TaskManagerStoppedError(
                f"task {task.name!r} was cancelled because the TaskManager stopped"
            ) from None

    def _end_admitted(self, current: asyncio.Task[Any], tracked: bool) -> None:
        if tracked:
            del self._active[current]
        self._admitted -= 1
        if self._idle is not None:
            self._check_idle()

    async def add_execute_remove_task(
        self, task: Task[Any, Any], *, schedule: str | None = None
    ) -> TaskExecutionReport:
        """Register ``task``, run it once through the constraints, unregister it.

        With ``schedule``, the task is also cron-scheduled while it is registered.

        :raises TaskExecutionError: the run failed; ``.report`` holds the report and the
            original error is the ``__cause__``.
        """
        self.add_task(task)
        try:
            if schedule is not None:
                self.schedule_task_by_name(task.name or "", schedule)
            errors_before = task.error_count
            start = now_wall()
            error: BaseException | None = None
            result: Any = None
            try:
                result = await self.trigger_task_constrained(task)
            except Exception as exc:
                error = exc
            if error is None and task.error_count > errors_before:
                error = task.last_error  # failed under catch_errors: reported, not raised
            end = now_wall()
            report = TaskExecutionReport(
                task_name=task.name or "unnamed",
                start_time=start,
                end_time=end,
                duration=end - start,
                steps=task.get_steps_metadata(),
                steps_completed=completed_steps(task),
                progress=task.get_progress(),
                result=result,
                error=error,
            )
            if error is not None and not task.catch_errors:
                raise TaskExecutionError(report) from error
            return report
        finally:
            if self._tasks.get(task.name or "") is task:
                self.remove_task(task)

    # ----------------------------------------------------------------------------- spawn

    @overload
    def spawn(
        self,
        task_or_name: Task[R, Any, In],
        input: In = None,  # type: ignore[assignment]
        *,
        priority: int = 0,
    ) -> asyncio.Task[R | None]: ...
    @overload
    def spawn(
        self, task_or_name: str, input: Any = None, *, priority: int = 0
    ) -> asyncio.Task[Any]: ...
    def spawn(
        self, task_or_name: Task[Any, Any] | str, input: Any = None, *, priority: int = 0
    ) -> asyncio.Task[Any]:
        """Trigger a task through the constraints without awaiting it.

        Safe to call from synchronous code running in the loop (an event subscriber, a loop
        callback). The trigger goes on in an asyncio task of its own, which the manager keeps
        until it ends; awaiting it is optional and gives what ``trigger_task_constrained``
        would (the result, ``None`` when skipped, or the error). A failure is logged to the
        ``taskbuffer`` logger (the run emitted ``failed`` already) and never left as an
        exception nobody retrieved; a trigger that the manager's stop refused or cancelled
        (``TaskManagerStoppedError``) is logged at debug level. ``stop()`` treats a spawned
        trigger as any other, including one spawned just before it was called. A task
        object need not be registered, as with ``trigger_task``.

        :raises TaskNotFoundError: no task is registered as ``task_or_name``.
        :raises TaskManagerStoppedError: the manager is stopped or stopping.
        :raises RuntimeError: no event loop is running in this thread.
        """
        if isinstance(task_or_name, str):
            task = self._require(task_or_name)
        elif isinstance(task_or_name, Task):
            task = task_or_name
        else:
            raise TypeError(
                "task_or_name must be a Task or the name of a registered task, not "
                f"{safe_repr(task_or_name)}"
            )
        if type(priority) is not int:  # bool is not accepted either
            raise TypeError(f"priority must be an int, not {safe_repr(priority)}")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "TaskManager.spawn() needs a running event loop in this thread: call it from "
                "code running in the loop the manager serves (a coroutine, a subscriber, a "
                "loop callback); from another thread, use asyncio.run_coroutine_threadsafe("
                "manager.trigger_task(...), loop)"
            ) from None
        if not self._accepting:
            raise TaskManagerStoppedError("the TaskManager is stopped; call start() to use it")
        runner = loop.create_task(
            self._spawned(task, input, priority), name=f"taskbuffer spawn {task.name!r}"
        )
        self._spawns[runner] = False
        runner.add_done_callback(self._spawn_done)
        return runner

    async def _spawned(self, task: Task[Any, Any], input: Any, priority: int) -> Any:
        """A spawned trigger, in its own asyncio task: the failure is logged here, since
        nobody may await it (``_spawn_done`` retrieves it)."""
        runner = asyncio.current_task()
        assert runner is not None
        self._spawns[runner] = True  # it reaches the manager in this step
        try:
            return await self.trigger_task_constrained(task, input, priority=priority)
        except TaskManagerStoppedError as exc:
            logger.debug("spawned trigger of task %r did not complete: %s", task.name, exc)
            raise
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            logger.error("spawned run of task %r failed", task.name, exc_info=exc)
            raise

    def _spawn_done(self, runner: asyncio.Task[Any]) -> None:
        del self._spawns[runner]
        if not runner.cancelled():
            runner.exception()  # logged by _spawned: not "never retrieved"

    # ------------------------------------------------------------------------ scheduling

    def add_and_schedule_task(self, task: Task[Any, Any], cron: str) -> None:
        """Register ``task`` and schedule it with ``cron``; a bad cron string registers
        nothing.

        :raises InvalidCronExpressionError: ``cron`` cannot be parsed.
        """
        parsed = self._scheduler.parse(cron)  # before registering: a bad string adds nothing
        self.add_task(task)
        self._scheduler.schedule(task, parsed)

    def schedule_task_by_name(self, name: str, cron: str) -> None:
        """Schedule the registered task ``name`` with ``cron``, replacing its cron schedule.

        :raises TaskNotFoundError: no such task.
        :raises InvalidCronExpressionError: ``cron`` cannot be parsed.
        """
        self._scheduler.schedule(self._require(name), cron)

    def deschedule_task_by_name(self, name: str) -> None:
        """Drop the cron schedule and pending one-off runs of task ``name`` (it stays registered).

        :raises TaskNotFoundError: no such task.
        """
        self._scheduler.remove(self._require(name))

    def schedule_task_at(self, name: str, when: datetime, input: Any = None) -> None:
        """Run task ``name`` once at ``when``, through the constraints, with ``input``.

        A naive ``when`` is read in the manager's time zone. An instant in the past runs as
        soon as the manager is started.

        :raises TaskNotFoundError: no such task.
        :raises TypeError: ``when`` is not a datetime.
        """
        self._scheduler.schedule_at(self._require(name), when, input)

    def get_scheduled_tasks(self) -> list[ScheduledTaskInfo]:
        """Each task with a cron schedule or a pending one-off run, with its next and last run.

        ``schedule`` is the cron string, or ``"once"`` for a task with only one-off runs.
        """
        return self._scheduler.scheduled_tasks()

    def get_next_scheduled_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """The next ``limit`` runs, soonest first: ``{"task_name", "next_run", "schedule"}``.

        One entry per cron schedule (its next tick) and one per pending one-off run (whose
        ``schedule`` is ``"once"``).
        """
        check_count("limit", limit, minimum=0)
        return self._scheduler.next_runs(limit)

    # -------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start cron and the coordinator; accept triggers again after a ``stop()``.

        :raises RuntimeError: a ``stop()`` is still under way (await it first).
        :raises TaskManagerStoppedError: ``stop()`` was called while the coordinator started;
            the later call wins and the manager stays stopped.
        """
        if self._stopping:
            # Started in the middle of it, the manager would take triggers that the stop
            # then cancels, and be left accepting triggers with started False.
            raise RuntimeError(
                "TaskManager.start() was called while a stop() is under way: await the "
                "stop() first, then start()"
            )
        self._accepting = True
        if not self._forwarding:
            self._forwarding = True
            for task in self._tasks.values():
                task._add_sink(self.task_subject)
        if self.distributed_coordinator is not None:
            stop_calls = self._stop_calls
            await self.distributed_coordinator.start()
            if self._stop_calls != stop_calls:
                # That stop() found nothing started to stop; starting now would leave cron
                # and the coordinator running after it returned, with triggers refused.
                await self.distributed_coordinator.stop()
                raise TaskManagerStoppedError(
                    "stop() was called while start() was under way; the TaskManager stays stopped"
                )
        self._scheduler.start()
        self._started = True

    async def stop(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the API contract names it so
        drain: bool = False,
    ) -> None:
        """Stop cron and event forwarding, refuse new triggers, then wind down.

        With ``drain=False`` waiting triggers fail with :class:`TaskManagerStoppedError`;
        with ``drain=True`` they still run. Then it waits up to ``timeout`` seconds (``None``:
        as long as it takes) for the runs, and cancels what is left; their awaiters get
        ``TaskManagerStoppedError``. Safe to call without ``start()`` and more than once.

        A call made while another is winding down joins it: every call returns once the
        runs are over, the runs are cancelled when the earliest deadline among the calls
        passes (a shorter ``timeout`` tightens the stop in progress, a longer one does not
        loosen it), and a call with ``drain=False`` fails the triggers still waiting.

        Triggers spawned before the call (``spawn()``) that have not started yet reach the
        manager first, so they are waited for, failed or cancelled as any other.

        :raises RuntimeError: awaited from inside a run of this manager (it would wait for
            itself), or from an event loop other than that of the runs in flight.
        """
        timeout = check_seconds("timeout", timeout, infinite=True, none=True)
        current = asyncio.current_task()
        if current is not None and current in self._active:
            raise RuntimeError(
                "TaskManager.stop() was awaited from inside a run of that manager: it would "
                "wait for the run, and the run for it. Stop the manager from outside its "
                "runs (for one run to stop it, start the stop without awaiting it: "
                "asyncio.create_task(manager.stop()))"
            )
        if self._active and next(iter(self._active)).get_loop() is not asyncio.get_running_loop():
            raise self._other_loop_error()
        self._stop_calls += 1
        self._stopping += 1
        try:
            if not all(self._spawns.values()):
                # Spawned before this call, not yet started: their first steps run before
                # this one goes on, so that they meet the stop as the triggers made before it
                # they are.
                await asyncio.sleep(0)
            await self._wind_down(timeout, drain)
        finally:
            self._stopping -= 1

    async def _wind_down(self, seconds: float | None, drain: bool) -> None:
        self._accepting = False
        self._scheduler.stop()
        if self._forwarding:
            self._forwarding = False
            for task in self._tasks.values():
                task._drop_sink(self.task_subject)
        if not drain:
            self._fail_waiters()
        if self._running or self._waiting or self._admitted:
            # Overlapping calls share one future: whichever call's deadline passes first
            # cancels the runs, and every call returns when they are over.
            idle = self._idle
            if idle is None or idle.done():
                idle = self._idle = asyncio.get_running_loop().create_future()
            self._stoppers += 1
            self._check_idle()
            try:
                async with asyncio.timeout(seconds):
                    await asyncio.shield(idle)
            except TimeoutError:
                self._cancel_runs()
                await asyncio.shield(idle)
            finally:
                self._stoppers -= 1
                if not self._stoppers:
                    self._idle = None
                    self._hard_stop = False
        # Cron ticks still reporting to the coordinator: done before the coordinator stops.
        await self._scheduler.wait_stopped()
        if not self._stoppers:
            self._stop_cancelled.clear()
        if self.distributed_coordinator is not None and self._started:
            self._started = False  # an overlapping call must not stop it a second time
            await self.distributed_coordinator.stop()
        self._started = False

    def _cancel_runs(self) -> None:
        """A stop's deadline passed: refuse what was admitted, cancel what runs."""
        self._hard_stop = True
        self._fail_waiters()
        # Outermost first: a run that awaits a run of another asyncio task cancels that one
        # before that one handles stop's cancellation (see _raise_if_stopping).
        for caller in list(self._active):
            if caller not in self._stop_cancelled:  # once, however many stops time out
                self._stop_cancelled.add(caller)
                caller.cancel()
        self._check_idle()

    def _check_idle(self) -> None:
        idle = self._idle
        if (
            idle is not None
            and not idle.done()
            and not self._running
            and not self._waiting
            and not self._admitted
        ):
            idle.set_result(None)

    def _fail_waiters(self) -> None:
        """Fail every trigger of ours that waits in a queue."""
        waiters: list[Waiter] = []
        for group in self._groups:
            for st in group._state.values():
                waiters.extend(
                    entry[2]
                    for entry in st.heap
                    if entry[2].parked is st and entry[2].owner is self._ref
                )
        if not waiters:
            return
        now = asyncio.get_running_loop().time()
        for waiter in waiters:
            leave(waiter, now)
            if waiter.future.done():  # cancelled in this loop turn; its trigger cleans up
                continue
            waiter.future.set_exception(
                TaskManagerStoppedError("the TaskManager stopped before this trigger could run")
            )
            waiter.future.exception()  # the trigger's awaiter gets it; do not log it as lost

    async def __aenter__(self) -> TaskManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def statistics(self) -> TaskManagerStatistics:
        """A snapshot: tasks, runs in flight, triggers waiting, schedules pending."""
        return TaskManagerStatistics(
            tasks=len(self._tasks),
            running=self._running,
            waiting=self._waiting,
            scheduled=self._scheduler.count(),
        )
