"""What a :class:`TaskManager` offers on top of its triggers: ``spawn()``, a one-off run
(``add_execute_remove_task``), and cron and one-off schedules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._clock import now_wall
from ._exceptions import TaskExecutionError, TaskManagerStoppedError, TaskNotFoundError
from ._lifecycle import Life, RunState
from ._metadata import ScheduledTaskInfo, TaskExecutionReport, TaskMetadata
from ._task import Task, completed_steps
from ._validation import check_count, safe_repr

if TYPE_CHECKING:
    from ._inflight import InFlight
    from ._run import RunInfo
    from ._scheduler import Scheduler

__all__ = ("ConveniencesMixin",)

logger = logging.getLogger("taskbuffer")

R = TypeVar("R")
In = TypeVar("In")  # a task's input type (see Task)


class ConveniencesMixin:
    """Members of :class:`TaskManager` (its base class) built on its registry and triggers."""

    __slots__ = ()

    # The manager's own attributes and methods this part of it uses.
    _life: Life
    _scheduler: Scheduler
    _spawns: dict[asyncio.Task[Any], bool]
    _tasks: dict[str, Task[Any, Any]]
    _flights: InFlight

    if TYPE_CHECKING:

        def add_task(self, task: Task[Any, Any]) -> None: ...
        def remove_task(self, task: Task[Any, Any]) -> None: ...
        def _require(self, name: str) -> Task[Any, Any]: ...
        def trigger_task_constrained(
            self, task: Task[Any, Any, Any], input: Any = None, *, priority: int = 0
        ) -> Coroutine[Any, Any, Any]: ...

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

    def get_active_runs(self, *, task_name: str | None = None) -> list[RunInfo]:
        """Snapshots of the runs started through this manager that wait or run: running ones
        first, then waiting ones in the order they would start. Runs of direct
        ``task.trigger()`` calls are not the manager's.

        :raises TaskNotFoundError: ``task_name`` is given and no task is registered so.
        """
        if task_name is not None and task_name not in self._tasks:
            raise TaskNotFoundError(task_name)
        return self._flights.active_runs(task_name)

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
        if self._life.state < RunState.CREATED:
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
