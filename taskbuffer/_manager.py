"""``TaskManager``: a registry of tasks run through constraint groups, cron and a coordinator."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from ._admission import GO, Claim, Claimer, Shared
from ._constraints import TaskConstraintGroup, key_table
from ._conveniences import ConveniencesMixin
from ._emitter import forward_events, stop_forwarding
from ._events import EventSubject
from ._exceptions import TaskManagerStoppedError, TaskNotFoundError
from ._inflight import InFlight
from ._job_members import JobMembers
from ._lifecycle import Life, LifecycleMixin, RunState
from ._manager_jobs import job_side_for
from ._run import Run, new_run
from ._runner import RunEntry, run_entry, run_task
from ._scheduler import Scheduler
from ._shared import current_task_in
from ._task import Task
from ._validation import safe_repr
from ._waiting import LOCAL_ADMISSION
from .distributed import AbstractDistributedCoordinator

if TYPE_CHECKING:
    from .jobs import JobStore

__all__ = ("TaskManager", "TaskManagerStatistics", "override_job_options")

logger = logging.getLogger("taskbuffer")

# From this state up a manager takes triggers and forwards its tasks' events.
ACCEPTING = FORWARDING = RunState.CREATED

R = TypeVar("R")
In = TypeVar("In")  # a task's input type (see Task)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskManagerStatistics:
    """A snapshot: registered tasks, runs in flight, triggers waiting, schedules pending."""

    tasks: int
    running: int
    waiting: int
    scheduled: int


class TaskManager(ConveniencesMixin, LifecycleMixin, JobMembers):
    """Registers tasks and runs them through constraint groups, cron and a coordinator.

    :param distributed_coordinator: consulted before each cron tick (see
        :mod:`taskbuffer.distributed`).
    :param timezone: the time zone cron expressions and naive datetimes are read in; local
        time by default.
    :param job_store: where durable jobs live (a :class:`~taskbuffer.jobs.JobStore` or a URL
        such as ``sqlite:///jobs.db``); with one, cron ticks and one-off runs are jobs too.
    :param job_concurrency: jobs this manager runs at once when started (0: enqueue only).
    :param worker_id: names this manager in the jobs' audit trail (default host:pid:random).
    """

    __slots__ = (
        "__weakref__",
        "_admission",
        "_claimers",
        "_entries",
        "_flights",
        "_groups",
        "_jobs",
        "_life",
        "_ref",
        "_scheduler",
        "_spawns",
        "_tasks",
        "distributed_coordinator",
        "task_subject",
        "timezone",
    )

    def __init__(
        self,
        *,
        distributed_coordinator: AbstractDistributedCoordinator | None = None,
        timezone: tzinfo | None = None,
        job_store: JobStore | str | None = None,
        job_concurrency: int = 10,
        worker_id: str | None = None,
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
        self._entries: dict[str, tuple[Task[Any, Any], RunEntry]] = {}  # see run_entry
        self._groups: list[TaskConstraintGroup] = []
        # Per group, in order: what claims its key for a trigger, and its key table.
        self._claimers: list[Claimer] = []
        self._life = Life()
        self._scheduler = Scheduler(self)
        # The asyncio tasks of spawn(), kept until they end (the loop holds only weak
        # references); the value says whether the trigger has reached the manager yet.
        self._spawns: dict[asyncio.Task[Any], bool] = {}
        # Our token as the owner of groups and waiters: weak, so that a group does not keep
        # a manager alive that nothing else uses (and is then free to join another).
        self._ref = weakref.ref(self)
        self._admission = LOCAL_ADMISSION
        self._flights = InFlight(self._admission, self._ref)
        self._use_jobs(job_store, job_concurrency, worker_id)

    def _use_jobs(self, job_store: Any, job_concurrency: Any, worker_id: Any) -> None:
        # Durable jobs (its own module): the store, the worker, cron ticks as jobs.
        self._jobs = job_side_for(
            job_store,
            job_concurrency=job_concurrency,
            worker_id=worker_id,
            timezone=self.timezone,
            lookup=self.get_task_by_name,
            run=lambda task, job: self._trigger(task, job.input, job.priority, job.id),
            task_names=lambda: list(self._tasks),
        )
        self._scheduler.ticks_as_jobs = self._jobs

    def _override_jobs(self, job_store: Any, job_concurrency: Any) -> bool:
        side = self._jobs  # None of the two overrides keeps what the manager has
        store = side.store if job_store is None and side is not None else job_store
        default = 10 if side is None else side.concurrency
        concurrency = default if job_concurrency is None else job_concurrency
        self._use_jobs(store, concurrency, None if side is None else side.worker_id)
        return self._jobs is not None

    def __repr__(self) -> str:
        return (
            f"<TaskManager running={self._flights.running_total()} queued={self._flights.waiting} "
            f"tasks={len(self._tasks)}>"
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
        self._entries[name] = (task, run_entry(task))
        if self._life.state >= FORWARDING:
            forward_events(task, self.task_subject)  # a chain's or parallel's members' events too
        if self._jobs is not None:
            self._jobs.task_added()

    def remove_task(self, task: Task[Any, Any]) -> None:
        """Unregister ``task``: stop forwarding its events and drop its schedules.

        :raises TaskNotFoundError: ``task`` is not registered here.
        """
        name = task.name
        if name is None or self._tasks.get(name) is not task:
            raise TaskNotFoundError(str(name))
        del self._tasks[name]
        del self._entries[name]
        if self._life.state >= FORWARDING:
            stop_forwarding(task, self.task_subject)
        self._scheduler.remove(task)

    def get_task_by_name(self, name: str) -> Task[Any, Any] | None:
        """The task registered as ``name``, or ``None``."""
        return self._tasks.get(name)

    def _require(self, name: str) -> Task[Any, Any]:
        try:
            return self._tasks[name]
        except KeyError:
            raise TaskNotFoundError(name) from None

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
        table = key_table(group)
        owner = table.owner
        other = None if owner is None else owner()  # type: ignore[operator]
        if other is not None:
            raise ValueError(
                f"constraint group {group.name!r} is already added to another TaskManager, "
                f"{other!r}; a group constrains one manager at a time: remove it there first "
                f"(remove_constraint_group({group.name!r}))"
            )
        table.owner = self._ref
        self._groups.append(group)
        self._claimers.append((group, table))

    def remove_constraint_group(self, name: str) -> None:
        """Stop applying the group ``name``; triggers waiting only on it are re-offered.

        :raises KeyError: no group of that name is added.
        """
        for i, group in enumerate(self._groups):
            if group.name == name:
                del self._groups[i]
                del self._claimers[i]
                table = key_table(group)
                table.owner = None
                try:
                    now = asyncio.get_running_loop().time()
                except RuntimeError:
                    return
                self._admission.reoffer(table, now)
                return
        raise KeyError(f"no constraint group named {name!r} is added")

    # ---------------------------------------------------------------------------- triggers

    async def trigger_task_by_name(self, name: str, input: Any = None) -> Any:
        """Trigger the task registered as ``name`` through the constraints.

        :raises TaskNotFoundError: no such task.
        """
        entry = self._entries.get(name)
        if entry is None:
            raise TaskNotFoundError(name)
        task, execute = entry
        if self._groups or not self._life.open:  # (not accepting, or hard-stopped)
            return await self.trigger_task_constrained(task, input)
        # No constraint group: trigger_task_constrained's run phase, here (one coroutine frame
        # and not two); nothing waits nor holds a slot: a plain run (see InFlight.runs).
        flights = self._flights
        loop = asyncio.get_running_loop()
        current = current_task_in(loop)
        if flights.loop is not loop:  # other asyncio tasks' runs must be in this loop
            flights.check_loop(loop)
        run = Run()  # (_run.fill's stores, less those that execute makes: see run_entry)
        run.task = task
        run.input = input
        run.attempt = 1
        run.finished = run.steps = run.drawn_id = None
        running = execute(input, run, None, loop)
        runs = flights.runs
        runs[run] = current  # (counted as running by being there: see InFlight.runs)
        try:
            return await running
        except asyncio.CancelledError:
            if current in flights.stop_cancelled:  # (the outermost run of current says so)
                flights.plain_cancelled(current, run)
            raise
        finally:
            del runs[run]
            if flights.idle is not None:
                flights.check_idle()

    def trigger_task_constrained(
        self,
        task: Task[R, Any, In],
        input: In = None,  # type: ignore[assignment]
        *,
        priority: int = 0,
    ) -> Coroutine[Any, Any, R | None]:
        """Run ``task`` once every constraint group lets it.

        Returns the task's result, or ``None`` when a group's ``should_execute`` said no. A
        trigger that must wait emits ``queued``; waiting triggers start by ``priority``
        (higher first), then in arrival order. The run happens in the caller's asyncio task,
        which ``stop(timeout=...)`` may cancel (the caller gets ``TaskManagerStoppedError``).

        :raises TaskManagerStoppedError: the manager is stopped or stopping.
        """
        # A plain method returning the coroutine (as Task.trigger): no frame more.
        return self._trigger(task, input, priority, None)

    async def _trigger(self, task: Task[Any, Any], input: Any, priority: int, job_id: Any) -> Any:
        """``trigger_task_constrained``, for a durable job too (``job_id``, see ``run_job``)."""
        # This one coroutine is every trigger's whole path (trigger_task is this method):
        # each frame more would cost time on the hot path and memory for every waiter.
        if type(priority) is not int:  # bool is not accepted either
            raise TypeError(f"priority must be an int, not {safe_repr(priority)}")
        if self._life.state < ACCEPTING:
            raise TaskManagerStoppedError("the TaskManager is stopped; call start() to use it")
        flights = self._flights
        claims: list[Claim] | None = None
        waited = False
        run = new_run(task, input, priority, job_id)
        runs = flights.runs
        runs[run] = None
        loop = asyncio.get_running_loop()
        current: asyncio.Task[Any] = asyncio.current_task(loop)  # type: ignore[assignment]
        if self._groups:
            admission = self._admission
            try:
                claims = admission.claim(self._claimers, task, input, loop)
            except BaseException as exc:  # a KeyboardInterrupt or one of the user's own too
                del runs[run]
                flights.claim_failed(run, exc)
                raise
            # A newcomer ranks after every waiter of its priority or higher (seq = inf).
            now = loop.time()
            blocked = admission.acquire(claims, now, priority, owner=self._ref)
            if blocked is not None:
                try:
                    waiter = flights.park(run, claims, blocked, loop, now, current)
                except BaseException:
                    del runs[run]
                    raise
                blocked = None  # not kept alive for as long as the trigger waits
                waited = True
                try:
                    outcome = await waiter.future
                    if outcome is GO:  # counted before the idle check below: it goes on to run
                        flights.admitted += 1
                    else:  # Shared: out of ``runs`` before the idle check below
                        del runs[run]
                except BaseException as exc:
                    del runs[run]
                    flights.waiting_failed(run, waiter, exc, loop)
                    raise
                finally:
                    flights.waiting -= 1
                    if flights.idle is not None:
                        flights.check_idle()
                if type(outcome) is Shared:
                    flights.shared(run)
                    return outcome.value
        # From here the trigger holds its slots; stop() waits for it and, past its timeout,
        # cancels it, whether it is in should_execute or running.
        if not waited:
            flights.admitted += 1
        tracked = current not in flights.active  # a nested run is tracked by the outer one
        if tracked:
            flights.active[current] = claims  # the slots it holds (see check_self_deadlock)
        elif claims:
            held = flights.held.get(current)
            if held is None:
                flights.held[current] = [claims]
            else:
                held.append(claims)
        ran = refused = handed_off = False
        try:
            # Other asyncio tasks' runs in flight (current came last): this loop's?
            if tracked and flights.loop is not loop:
                flights.check_loop(loop)
            if self._life.hard_stop:
                refused = True
                flights.refuse(run)
            if claims is not None:
                for group in self._groups:
                    if group.should_execute is not None and not (
                        await group.check_should_execute(task, input)
                    ):
                        flights.end(run, "skipped")
                        return None
            ran = True
            flights.running += 1
            if claims:
                for st in claims:  # (one pass over the claims for two rare cases)
                    if st.pending or st.sharers is not None:
                        if admission.sharing(claims):
                            handed_off = True  # it gives back its slots (and counts) when it ends
                            return await flights.run_shared(run, claims)
                        # A rate-limited key: its window counts the run from now.
                        admission.begin(claims, loop.time())
                        break
            try:
                result = await run_task(task, run, loop)
            finally:
                flights.running -= 1
            return result
        except BaseException as exc:
            flights.run_failed(run, exc, current if tracked else None, ran or refused)
            raise
        finally:
            if claims is not None:
                if not handed_off:
                    admission.release(claims, loop.time(), ran=ran)
                if claims and not tracked:  # flights.held's entry, taken above
                    held = flights.held[current]
                    held.pop()
                    if not held:
                        del flights.held[current]
            if not handed_off:
                del runs[run]
            flights.end_admitted(current, tracked)

    # Same signature with an optional ``priority``; an alias so it costs no extra frame.
    trigger_task = trigger_task_constrained

    def statistics(self) -> TaskManagerStatistics:
        """A snapshot: tasks, runs in flight, triggers waiting, schedules pending."""
        return TaskManagerStatistics(
            tasks=len(self._tasks),
            running=self._flights.running_total(),
            waiting=self._flights.waiting,
            scheduled=self._scheduler.count(),
        )


def override_job_options(
    manager: TaskManager, *, job_store: JobStore | str | None, job_concurrency: int | None
) -> bool:
    """Another store or job concurrency for a manager not started (``None`` keeps its own),
    as ``taskbuffer worker --store/--concurrency`` do; False when it has no store then."""
    if manager.started:
        raise RuntimeError("the job options of a started TaskManager cannot change")
    return manager._override_jobs(job_store, job_concurrency)
