"""What runs the services of one ``ServiceManager``: start and stop waves, the health watchers
and recoveries, and every change of state (its event, and the waiters it wakes).

The manager (``_service_manager.py``) keeps the registry and the public API and hands the
running to its :class:`Supervisor`; see the manager's module docstring for how it works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Protocol, TypeAlias

from ._clock import now_wall
from ._events import EventSubject
from ._exceptions import ServiceHealthCheckError
from ._service import Service, runtime_of
from ._service_graph import all_dependants, run_wave
from ._service_info import ServiceEvent, ServiceState
from ._service_runtime import effective_limit, is_cancellation
from ._validation import error_message, reraise_interrupt_later

__all__ = ("Phase", "Supervisor", "SupervisorHost")

logger = logging.getLogger("taskbuffer")

Phase: TypeAlias = Literal["stopped", "starting", "running", "stopping"]
Waiters: TypeAlias = dict[asyncio.Future[None], Callable[[], bool]]


class SupervisorHost(Protocol):
    """What the supervisor reads of its manager (a ``ServiceManager``): its default limits,
    which may change at any time, and its event stream."""

    @property
    def start_timeout(self) -> float | None: ...

    @property
    def stop_timeout(self) -> float | None: ...

    @property
    def service_subject(self) -> EventSubject[ServiceEvent]: ...


class Supervisor:
    """Runs the services of one manager; bound to the loop of the latest ``start()``."""

    __slots__ = (
        "dependants",
        "host",
        "lock",
        "loop",
        "phase",
        "recovery_stops",
        "services",
        "waiters",
        "watchers",
    )

    def __init__(self, host: SupervisorHost, services: Mapping[str, Service[Any]]) -> None:
        self.host = host
        self.services = services  # the manager's registry, by name
        # name -> names of the services that depend on it (worked out by start()).
        self.dependants: dict[str, list[str]] = {}
        self.phase: Phase = "stopped"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock: asyncio.Lock | None = None
        self.watchers: dict[str, asyncio.Task[None]] = {}
        # The watcher stopping services for a recovery, if any: stop() lets it finish those
        # stops (each within its stop_timeout) rather than cut them short.
        self.recovery_stops: asyncio.Task[None] | None = None
        # name -> {future: condition}: futures resolved at the first change of that service
        # (None: of any service) after which the condition holds (wait_for_state; tasks
        # waiting for services).
        self.waiters: dict[str | None, Waiters] = {}

    def __repr__(self) -> str:
        return f"<Supervisor {self.phase} services={len(self.services)}>"

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Work in ``loop``. What was left in another loop (closed, or never stopped) is
        dropped: its tasks and futures cannot be awaited from here."""
        if loop is self.loop:
            return
        if self.loop is not None:
            for service in self.services.values():
                runtime_of(service).reset()
            self.watchers.clear()
            self.waiters.clear()
            self.lock = None
            self.phase = "stopped"
        self.loop = loop

    async def cancel_watchers(self) -> None:
        """End the health watchers (but one stopping services for a recovery: that one ends
        after its stops) and wait for them."""
        watchers = list(self.watchers.values())
        self.watchers.clear()
        for watcher in watchers:
            if watcher is not self.recovery_stops:
                watcher.cancel()
        if watchers:
            await asyncio.wait(watchers)

    # ---------------------------------------------------------------------------- waves

    async def start_wave(self, members: list[Service[Any]]) -> dict[str, BaseException]:
        """Start ``members`` in dependency order, independent ones at once.

        A member needing a service that is neither running nor a member is skipped, and so is
        everything in the wave that depends on a skipped or failed member. Returns the errors
        of the starts that failed.
        """
        return await run_wave(
            members, self.services, self.dependants, forward=True, act=self._start_one
        )

    async def stop_wave(self, members: list[Service[Any]]) -> None:
        """Stop ``members``, each after the members that depend on it."""
        await run_wave(members, self.services, self.dependants, forward=False, act=self.halt)

    async def _start_one(self, service: Service[Any]) -> BaseException | None:
        """Start one service (as part of a wave); returns the error if it failed."""
        self.set(service, "starting")
        try:
            await runtime_of(service).open(
                effective_limit(service.start_timeout, self.host.start_timeout)
            )
        except BaseException as exc:
            if is_cancellation(exc):
                self.set(service, "stopped")
                raise
            self.set(service, "failed", exc)
            reraise_interrupt_later(exc)
            return exc
        self.set(service, "running")
        self._watch(service)
        return None

    async def halt(
        self,
        service: Service[Any],
        final: ServiceState = "stopped",
        error: BaseException | None = None,
    ) -> None:
        """Stop one service: end its watcher, run its ``stop``, enter ``final``."""
        watcher = self.watchers.pop(service.name, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.wait([watcher])
        try:
            runtime = runtime_of(service)
            if runtime.opened:
                self.set(service, "stopping")
                await runtime.close(effective_limit(service.stop_timeout, self.host.stop_timeout))
        finally:
            if service.state != final or error is not None:
                self.set(service, final, error)

    # --------------------------------------------------------------- health and restarts

    def _watch(self, service: Service[Any]) -> None:
        if runtime_of(service).health_check is not None and self.phase in ("starting", "running"):
            assert self.loop is not None
            self.watchers[service.name] = self.loop.create_task(
                self._supervise(service), name=f"taskbuffer: watch service {service.name!r}"
            )

    async def _supervise(self, service: Service[Any]) -> None:
        """The watcher of a running service: health checks, then recovery when unhealthy."""
        runtime = runtime_of(service)
        failures = 0
        while True:
            await asyncio.sleep(service.health_interval)
            problem = await runtime.probe(
                effective_limit(service.health_timeout, service.health_interval)
            )
            if problem is None:
                failures = 0
                continue
            failures += 1
            if failures < service.unhealthy_threshold:
                continue
            failures = 0
            error = ServiceHealthCheckError(service.name, service.unhealthy_threshold, problem[0])
            error.__cause__ = problem[1]
            if not await self._recover(service, error):
                return

    async def _recover(self, service: Service[Any], error: BaseException) -> bool:
        """Restart an unhealthy service (with backoff), or fail it; True if it runs again."""
        self.set(service, "unhealthy", error)
        logger.info("service %r is unhealthy: %s", service.name, error_message(error))
        while True:
            if service.restart == "never" or (
                service.max_restarts is not None and service.restart_count >= service.max_restarts
            ):
                await self._fail(service, error)
                return False
            await asyncio.sleep(service.restart_delay_for(service.restart_count + 1))
            assert self.lock is not None
            async with self.lock:
                outcome = await self._restart(service, error)
                if isinstance(outcome, BaseException):
                    error = outcome  # tried again after the next delay
                    continue
                if outcome == "stopping":
                    return False  # stop() began meanwhile: it stops this one, nothing starts
                self.set(service, "running")
                await self._resume_dependants(service)
            return True

    async def _fail(self, service: Service[Any], error: BaseException) -> None:
        """Give up on an unhealthy service: stop what depends on it, then fail it."""
        reason = (
            "restart='never'"
            if service.restart == "never"
            else f"max_restarts={service.max_restarts} reached"
        )
        logger.error("service %r failed (%s): %s", service.name, reason, error_message(error))
        assert self.lock is not None
        async with self.lock:
            with self._stopping_for_recovery():
                await self._halt_dependants(service)
                await self.halt(service, "failed", error)

    async def _restart(
        self, service: Service[Any], error: BaseException
    ) -> Literal["started", "stopping"] | BaseException:
        """One restart attempt, under the lock: ``"started"``, the error if its start failed,
        or ``"stopping"`` if ``stop()`` began meanwhile (nothing was started)."""
        runtime = runtime_of(service)
        runtime.count_restart()
        self.set(service, "restarting", error)
        logger.info("restarting service %r (restart %d)", service.name, service.restart_count)
        with self._stopping_for_recovery():
            await self._halt_dependants(service)
            if runtime.opened:
                await runtime.close(effective_limit(service.stop_timeout, self.host.stop_timeout))
        if self.phase not in ("starting", "running"):
            return "stopping"
        try:
            await runtime.open(effective_limit(service.start_timeout, self.host.start_timeout))
        except BaseException as exc:
            if is_cancellation(exc):
                self.set(service, "stopped")
                raise
            reraise_interrupt_later(exc)
            logger.warning(
                "restart %d of service %r failed: %s",
                service.restart_count,
                service.name,
                error_message(exc),
            )
            runtime.enter("restarting", exc)
            return exc
        return "started"

    @contextlib.contextmanager
    def _stopping_for_recovery(self) -> Iterator[None]:
        """Mark the current watcher as stopping services for a recovery (see ``stop()``)."""
        self.recovery_stops = asyncio.current_task()
        try:
            yield
        finally:
            self.recovery_stops = None

    async def _halt_dependants(self, service: Service[Any]) -> None:
        await self.stop_wave(
            [
                s
                for s in all_dependants(service.name, self.services, self.dependants)
                if s.state not in ("stopped", "failed")
            ]
        )

    async def _resume_dependants(self, service: Service[Any]) -> None:
        """Start the stopped dependants whose dependencies all run again."""
        failed = await self.start_wave(
            [
                s
                for s in all_dependants(service.name, self.services, self.dependants)
                if s.state == "stopped"
            ]
        )
        for name, error in failed.items():
            logger.error("service %r failed to start again: %s", name, error_message(error))

    # --------------------------------------------------------------------- states, events

    def set(
        self, service: Service[Any], state: ServiceState, error: BaseException | None = None
    ) -> None:
        """Move ``service`` to ``state``: emit the event, wake whoever waits for it."""
        runtime_of(service).enter(state, error)
        subject = self.host.service_subject
        if subject.observers:
            subject.on_next(
                ServiceEvent(
                    type=state,
                    service=service.get_metadata(),
                    timestamp=now_wall(),
                    error=None if error is None else error_message(error),
                )
            )
        for key in (service.name, None):
            waiters = self.waiters.get(key)
            if waiters:
                _wake(waiters)

    def started(self) -> None:
        """A start wave ended: the manager runs, unless ``stop()`` began meanwhile."""
        if self.phase == "starting":
            self.set_phase("running")

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        for waiters in self.waiters.values():
            _wake(waiters)

    async def wait_until(
        self, name: str | None, condition: Callable[[], bool], limit: float | None
    ) -> None:
        """Wait (up to ``limit`` seconds) for a change of service ``name`` (``None``: of any
        service) or of the manager after which ``condition()`` holds.

        :raises TimeoutError: ``limit`` passed first (a bare one; callers word it).
        """
        loop = asyncio.get_running_loop()
        self.bind(loop)
        future: asyncio.Future[None] = loop.create_future()
        waiters = self.waiters.setdefault(name, {})
        waiters[future] = condition
        try:
            async with asyncio.timeout(limit):
                await future
        finally:
            waiters.pop(future, None)
            if not waiters and self.waiters.get(name) is waiters:
                del self.waiters[name]

    def fail_waiters(self, name: str, error: BaseException) -> None:
        """Fail the waits for service ``name`` with ``error`` (it was removed)."""
        for future in self.waiters.pop(name, {}):
            if not future.done():
                future.set_exception(error)


def _wake(waiters: Waiters) -> None:
    for future, condition in list(waiters.items()):
        if future.done():
            del waiters[future]
            continue
        try:
            met = condition()
        except Exception as exc:  # the waiter gets it; the state change goes on
            del waiters[future]
            future.set_exception(exc)
            continue
        if met:
            del waiters[future]
            future.set_result(None)
