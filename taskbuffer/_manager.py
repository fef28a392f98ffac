"""``TaskManager``: a registry of tasks run through constraint groups, cron and a coordinator."""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

from ._clock import now_wall
from ._constraints import TaskConstraintGroup
from ._events import EventSubject
from ._exceptions import TaskExecutionError, TaskManagerStoppedError, TaskNotFoundError
from ._metadata import ScheduledTaskInfo, TaskExecutionReport, TaskMetadata
from ._scheduler import Scheduler
from ._task import Task
from ._waiting import GO, Claim, Shared, Waiter, enqueue, leave, release, share, try_acquire
from .distributed import AbstractDistributedCoordinator

__all__ = ("TaskManager", "TaskManagerStatistics")

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
        "_forwarding",
        "_groups",
        "_hard_stop",
        "_idle",
        "_ref",
        "_running",
        "_scheduler",
        "_seq",
        "_started",
        "_stop_cancelled",
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
                f"not {distributed_coordinator!r}"
            )
        if timezone is not None and not isinstance(timezone, tzinfo):
            raise TypeError(f"timezone must be a datetime.tzinfo or None, not {timezone!r}")
        self.distributed_coordinator = distributed_coordinator
        self.timezone = timezone
        self.task_subject = EventSubject()
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._groups: list[TaskConstraintGroup] = []
        self._forwarding = True
        self._accepting = True
        self._started = False
        # Caller asyncio tasks with a run of ours in flight (value: how many, for nesting),
        # so that stop(timeout=...) can cancel exactly those.
        self._active: set[asyncio.Task[Any]] = set()
        self._stop_cancelled: set[asyncio.Task[Any]] = set()
        self._running = 0
        self._waiting = 0
        # Triggers past the queue (holding their slots) and not yet finished: in
        # should_execute, or running. stop() waits for them too.
        self._admitted = 0
        self._hard_stop = False  # stop(timeout=...) ran out: admitted triggers must not start
        self._seq = itertools.count()
        self._idle: asyncio.Future[None] | None = None
        self._scheduler = Scheduler(self)
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
            raise TypeError(f"add_task takes a Task, not {task!r}")
        name = task.name
        if name is None:
            raise ValueError("a task needs a name to be added to a TaskManager")
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already registered")
        self._tasks[name] = task
        if self._forwarding:
            task._forward_to((*task._sinks, self.task_subject))

    def remove_task(self, task: Task[Any, Any]) -> None:
        """Unregister ``task``: stop forwarding its events and drop its schedules.

        :raises TaskNotFoundError: ``task`` is not registered here.
        """
        name = task.name
        if name is None or self._tasks.get(name) is not task:
            raise TaskNotFoundError(str(name))
        del self._tasks[name]
        self._unsink(task)
        self._scheduler.remove(task)

    def _unsink(self, task: Task[Any, Any]) -> None:
        task._forward_to(tuple(s for s in task._sinks if s is not self.task_subject))

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
            raise TypeError(f"add_constraint_group takes a TaskConstraintGroup, not {group!r}")
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
            self._active.add(current)
        self._admitted += 1
        self._running += 1
        try:
            return await (task._run(input) if task._direct else task._trigger_coro(input))
        except asyncio.CancelledError:
            self._raise_if_stopping(current, task)
            raise
        finally:
            self._running -= 1
            self._admitted -= 1
            if tracked:
                self._active.discard(current)
            if self._idle is not None:
                self._check_idle()

    async def trigger_task_constrained(
        self, task: Task[R, Any], input: Any = None, *, priority: int = 0
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
            raise TypeError(f"priority must be an int, not {priority!r}")
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
            except Exception as exc:
                now = loop.time()
                for st in claims:
                    st.group.maybe_drop(st, now)
                task._emit("failed", "failed", error=exc)
                raise
            # A newcomer ranks after every waiter of its priority or higher (seq = inf).
            taken_at = loop.time()
            blocked = try_acquire(claims, taken_at, priority, owner=self._ref)
            if blocked is not None:
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
                        taken_at = waiter.taken_at
                except asyncio.CancelledError:
                    future = waiter.future
                    if future.cancelled():  # still in the queue
                        leave(waiter, loop.time())
                    elif future.exception() is None and future.result() is GO:
                        # Woken, then cancelled before it could run: hand the slots on.
                        release(claims, loop.time(), ran=False, taken_at=waiter.taken_at)
                    task._emit("cancelled", None, error="cancelled while waiting")
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
            self._active.add(current)
        ran = refused = False
        try:
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
            try:
                result = await (task._run(input) if task._direct else task._trigger_coro(input))
            finally:
                self._running -= 1
            if claims:
                share(claims, result, loop.time(), owner=self._ref)
            return result
        except asyncio.CancelledError:
            if not ran:  # cancelled inside an async should_execute
                task._emit("cancelled", None, error="cancelled before it started")
            self._raise_if_stopping(current, task)
            raise
        except Exception as exc:
            if not ran and not refused:  # should_execute raised
                task._emit("failed", "failed", error=exc)
            raise
        finally:
            if claims is not None:
                release(claims, loop.time(), ran=ran, taken_at=taken_at)
            self._end_admitted(current, tracked)

    # Same signature with an optional ``priority``; an alias so it costs no extra frame.
    trigger_task = trigger_task_constrained

    def _raise_if_stopping(self, current: asyncio.Task[Any], task: Task[Any, Any]) -> None:
        """Turn a cancellation that ``stop(timeout=...)`` caused into its error."""
        if current in self._stop_cancelled:
            self._stop_cancelled.discard(current)
            current.uncancel()
            raise TaskManagerStoppedError(
                f"task {task.name!r} was cancelled because the TaskManager stopped"
            ) from None

    def _end_admitted(self, current: asyncio.Task[Any], tracked: bool) -> None:
        if tracked:
            self._active.discard(current)
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
                steps_completed=task._steps.completed_names(),
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

    # ------------------------------------------------------------------------ scheduling

    def add_and_schedule_task(self, task: Task[Any, Any], cron: str) -> None:
        """Register ``task`` and schedule it with ``cron``; a bad cron string registers
        nothing.

        :raises InvalidCronExpressionError: ``cron`` cannot be parsed.
        """
        self._scheduler.validate(cron)
        self.add_task(task)
        self._scheduler.schedule(task, cron)

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
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, not {limit!r}")
        return self._scheduler.next_runs(limit)

    # -------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start cron and the coordinator; accept triggers again after a ``stop()``."""
        self._accepting = True
        if not self._forwarding:
            self._forwarding = True
            for task in self._tasks.values():
                task._forward_to((*task._sinks, self.task_subject))
        if self.distributed_coordinator is not None:
            await self.distributed_coordinator.start()
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
        """
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or math.isnan(timeout)
            or timeout < 0
        ):
            raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")
        self._accepting = False
        self._scheduler.stop()
        if self._forwarding:
            self._forwarding = False
            for task in self._tasks.values():
                self._unsink(task)
        if not drain:
            self._fail_waiters()
        if self._running or self._waiting or self._admitted:
            loop = asyncio.get_running_loop()
            idle = self._idle = loop.create_future()
            self._check_idle()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(idle)
            except TimeoutError:
                self._hard_stop = True
                self._fail_waiters()
                for caller in list(self._active):
                    self._stop_cancelled.add(caller)
                    caller.cancel()
                self._check_idle()
                await asyncio.shield(idle)
            finally:
                self._idle = None
                self._hard_stop = False
        # Cron ticks still reporting to the coordinator: done before the coordinator stops.
        await self._scheduler.wait_stopped()
        self._stop_cancelled.clear()
        if self.distributed_coordinator is not None and self._started:
            await self.distributed_coordinator.stop()
        self._started = False

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
