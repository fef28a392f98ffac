"""The lifecycle of a :class:`TaskManager`: start, stop and the graceful wind-down."""

from __future__ import annotations

import asyncio
from enum import IntEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ._admission import Admission, Claimer
from ._emitter import forward_events, stop_forwarding
from ._events import EventSubject
from ._exceptions import TaskManagerStoppedError
from ._inflight import InFlight, other_loop_error
from ._validation import check_seconds
from .distributed import AbstractDistributedCoordinator

if TYPE_CHECKING:
    from ._manager_jobs import JobSide
    from ._scheduler import Scheduler
    from ._task import Task

__all__ = ("Life", "LifecycleMixin", "RunState")


def _stopped_before_run() -> TaskManagerStoppedError:
    return TaskManagerStoppedError("the TaskManager stopped before this trigger could run")


class RunState(IntEnum):
    """Where a manager is in its lifecycle; from ``CREATED`` up it takes triggers and
    forwards its tasks' events."""

    STOPPED = 0  # stop() returned: triggers are refused, events not forwarded
    STOPPING = 1  # a stop() is winding down
    CREATED = 2  # never started: triggers run, cron does not
    STARTING = 3  # start() awaits the coordinator
    RUNNING = 4  # cron and the coordinator run


class Life:
    """A manager's lifecycle: its state, and what overlapping start() and stop() calls share."""

    __slots__ = ("hard_stop", "open", "state", "stop_calls", "stoppers", "stopping", "up")

    def __init__(self) -> None:
        self.state = RunState.CREATED
        self.up = False  # cron and the coordinator started (``started``), until a stop ends it
        self.hard_stop = False  # stop(timeout=...) ran out: admitted triggers must not start
        # From CREATED up and not hard_stop: a trigger may start at once (one read for a
        # by-name trigger's check, see TaskManager.trigger_task_by_name). Set with the two.
        self.open = True
        self.stopping = 0  # stop() calls under way (start() refuses to overlap them)
        self.stoppers = 0  # stop() calls waiting for the runs (they share flights.idle)
        self.stop_calls = 0  # stop() calls begun (a start() overtaken by one sees it)

    def __repr__(self) -> str:
        return f"<Life {self.state.name} stopping={self.stopping}>"

    def enter(self, state: RunState) -> None:
        """Move to ``state``."""
        self.state = state
        self.open = state >= RunState.CREATED and not self.hard_stop

    def harden(self, hard_stop: bool) -> None:
        """Set ``hard_stop``."""
        self.hard_stop = hard_stop
        self.open = self.state >= RunState.CREATED and not hard_stop


class LifecycleMixin:
    """``start()``, ``stop()`` and ``async with`` of :class:`TaskManager` (its base class)."""

    __slots__ = ()

    # The manager's own attributes this part of it uses.
    distributed_coordinator: AbstractDistributedCoordinator | None
    task_subject: EventSubject
    _admission: Admission
    _claimers: list[Claimer]
    _flights: InFlight
    _jobs: JobSide | None
    _life: Life
    _ref: object
    _scheduler: Scheduler
    _spawns: dict[asyncio.Task[Any], bool]
    _tasks: dict[str, Task[Any, Any]]

    @property
    def started(self) -> bool:
        """Whether ``start()`` was called (and ``stop()`` not since)."""
        return self._life.up

    async def start(self) -> None:
        """Start cron and the coordinator; accept triggers again after a ``stop()``.

        :raises RuntimeError: a ``stop()`` is still under way (await it first).
        :raises TaskManagerStoppedError: ``stop()`` was called while the coordinator started;
            the later call wins and the manager stays stopped.
        """
        life = self._life
        if life.stopping:
            # Started in the middle of it, the manager would take triggers that the stop
            # then cancels, and be left accepting triggers with started False.
            raise RuntimeError(
                "TaskManager.start() was called while a stop() is under way: await the "
                "stop() first, then start()"
            )
        if self._jobs is not None:
            await self._jobs.open()  # a store that cannot open fails start() before anything
        if life.state < RunState.CREATED:  # stopped: forward the tasks' events again
            for task in self._tasks.values():
                forward_events(task, self.task_subject)
        life.enter(RunState.STARTING)
        if self.distributed_coordinator is not None:
            stop_calls = life.stop_calls
            try:
                await self.distributed_coordinator.start()
            except BaseException:
                if life.state is RunState.STARTING:
                    life.enter(RunState.RUNNING if life.up else RunState.CREATED)
                raise
            if life.stop_calls != stop_calls:
                # That stop() found nothing started to stop; starting now would leave cron
                # and the coordinator running after it returned, with triggers refused.
                await self.distributed_coordinator.stop()
                raise TaskManagerStoppedError(
                    "stop() was called while start() was under way; the TaskManager stays stopped"
                )
        self._scheduler.start()
        life.up = True
        life.enter(RunState.RUNNING)
        if self._jobs is not None:
            self._jobs.start_worker()
            await self._scheduler.catch_up(self._jobs)

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
        flights = self._flights
        if current is not None and flights.in_run(current):
            raise RuntimeError(
                "TaskManager.stop() was awaited from inside a run of that manager: it would "
                "wait for the run, and the run for it. Stop the manager from outside its "
                "runs (for one run to stop it, start the stop without awaiting it: "
                "asyncio.create_task(manager.stop()))"
            )
        if flights.in_other_loop(asyncio.get_running_loop()):
            raise other_loop_error()
        life = self._life
        life.stop_calls += 1
        life.stopping += 1
        try:
            if not all(self._spawns.values()):
                # Spawned before this call, not yet started: their first steps run before
                # this one goes on, so that they meet the stop as the triggers made before it
                # they are.
                await asyncio.sleep(0)
            await self._wind_down(timeout, drain)
        finally:
            life.stopping -= 1
            if not life.stopping and life.state is RunState.STOPPING:
                life.enter(RunState.STOPPED)

    async def _wind_down(self, seconds: float | None, drain: bool) -> None:
        life = self._life
        forwarding = life.state >= RunState.CREATED
        life.enter(RunState.STOPPING)
        self._scheduler.stop()
        if self._jobs is not None:
            await self._jobs.stop_claiming()
        if forwarding:
            for task in self._tasks.values():
                stop_forwarding(task, self.task_subject)
        if not drain:
            self._fail_waiters()
        flights = self._flights
        if flights.busy():
            # Overlapping calls share one future: whichever call's deadline passes first
            # cancels the runs, and every call returns when they are over.
            idle = flights.idle
            if idle is None or idle.done():
                idle = flights.idle = asyncio.get_running_loop().create_future()
            life.stoppers += 1
            flights.check_idle()
            try:
                async with asyncio.timeout(seconds):
                    await asyncio.shield(idle)
            except TimeoutError:
                self._cancel_runs()
                await asyncio.shield(idle)
            finally:
                life.stoppers -= 1
                if not life.stoppers:
                    flights.idle = None
                    life.harden(False)
        # Cron ticks still reporting to the coordinator: done before the coordinator stops.
        await self._scheduler.wait_stopped()
        if not life.stoppers:
            flights.stop_cancelled.clear()
        if self.distributed_coordinator is not None and life.up:
            life.up = False  # an overlapping call must not stop it a second time
            await self.distributed_coordinator.stop()
        life.up = False
        if self._jobs is not None and not life.stoppers:
            await self._jobs.finish_stop()  # commit outcomes, release what never ran

    def _cancel_runs(self) -> None:
        """A stop's deadline passed: refuse what was admitted, cancel what runs."""
        self._life.harden(True)
        self._fail_waiters()
        self._flights.cancel_runs()

    def _fail_waiters(self) -> None:
        """Fail every trigger of ours that waits in a queue."""
        self._admission.fail_waiters(
            [table for _, table in self._claimers], self._ref, _stopped_before_run
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
