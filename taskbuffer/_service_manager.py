"""``ServiceManager``: starts services in dependency order, watches them, restarts them.

How it works, in one place:

- ``start()`` checks the dependency graph (unknown names, cycles) before anything starts, then
  runs a *wave*: every service whose dependencies are all running is started at once, each in
  an asyncio task of its own, and a finished start releases the services waiting only for it
  (Kahn's algorithm, linear in services + dependencies). A failed start skips its dependants.
  ``stop()`` runs the same wave on the reversed graph.
- Every running service with a health check has one *watcher* task: it sleeps
  ``health_interval``, checks, and after ``unhealthy_threshold`` failures in a row recovers the
  service (restart with backoff, or fail it). The recovery runs in the watcher itself, so a
  service has at most one task acting for it.
- Changes to the set of running services (a start wave, a restart, a stop) are serialised by
  one lock, taken after the restart delay and released between attempts. A restart stops the
  running dependants first, then starts every stopped dependant whose dependencies run again.
  ``stop()`` cancels the watchers, but not one stopping services for a recovery: it lets
  those stop callbacks finish (within their ``stop_timeout``), then starts nothing more.
- A callback fails by raising anything, ``BaseException`` subclasses and a ``CancelledError``
  of its own included; only the cancellation of the task running it passes through.
- Invariant: a service runs only while every service it depends on runs (or is unhealthy and
  about to be restarted, which stops it first).
- Everything is bound to the loop of the latest ``start()``; nothing is made at construction.

The manager keeps the registry and the public API; its :class:`~taskbuffer._service_supervisor.
Supervisor` runs the services (waves, watchers, recoveries, states and their waiters), over the
graph functions of ``_service_graph.py`` and each service's runtime (``_service_runtime.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from ._constraints import TaskConstraintGroup
from ._events import EventSubject
from ._exceptions import ServiceNotFoundError, ServiceStartError, ServiceUnavailableError
from ._service import Service, runtime_of
from ._service_graph import all_dependencies, dependants_of
from ._service_info import SERVICE_STATES, ServiceEvent, ServiceState
from ._service_info import ServiceManagerStatistics as ServiceManagerStatistics
from ._service_supervisor import Supervisor
from ._validation import check_seconds, error_message, safe_repr

if TYPE_CHECKING:
    from ._task import Task

__all__ = ("ServiceManager", "ServiceManagerStatistics")


def _check_timeout(name: str, value: float | None, *, allow_zero: bool = False) -> float | None:
    """A time limit as float seconds; ``None`` or ``math.inf`` = no limit (returned as None)."""
    return check_seconds(name, value, positive=not allow_zero, infinite=True, none=True)


class ServiceManager:
    """Starts services in dependency order, watches their health, restarts and stops them.

    :param start_timeout: seconds a start may take, for services that set no ``start_timeout``
        of their own (``None``: no limit).
    :param stop_timeout: the same for stops.
    """

    __slots__ = (
        "_runner",
        "_services",
        "service_subject",
        "start_timeout",
        "stop_timeout",
    )

    def __init__(
        self, *, start_timeout: float | None = None, stop_timeout: float | None = None
    ) -> None:
        self.start_timeout = _check_timeout("start_timeout", start_timeout)
        self.stop_timeout = _check_timeout("stop_timeout", stop_timeout)
        self.service_subject: EventSubject[ServiceEvent] = EventSubject()
        self._services: dict[str, Service[Any]] = {}
        self._runner = Supervisor(self, self._services)

    def __repr__(self) -> str:
        counts = self.statistics().to_dict()
        total = counts.pop("services")
        states = " ".join(f"{state}={n}" for state, n in counts.items() if n)
        return (
            f"<ServiceManager {self._runner.phase} services={total}{' ' if states else ''}{states}>"
        )

    # -------------------------------------------------------------------------- registry

    @property
    def service_map(self) -> Mapping[str, Service[Any]]:
        """A read-only view of the registered services by name."""
        return MappingProxyType(self._services)

    @property
    def started(self) -> bool:
        """Whether ``start()`` was called (and ``stop()`` not since)."""
        return self._runner.phase in ("starting", "running")

    def add_service(self, service: Service[Any]) -> None:
        """Register ``service``. Dependencies are checked by ``start()``, so services may be
        added in any order.

        :raises ValueError: the name is taken, or the service is in another manager.
        :raises RuntimeError: the manager is started (add services before ``start()``).
        """
        if not isinstance(service, Service):
            raise TypeError(f"add_service takes a Service, not {safe_repr(service)}")
        phase = self._runner.phase
        if phase != "stopped":
            raise RuntimeError(
                f"cannot add service {service.name!r}: the ServiceManager is {phase}; "
                "add services before start() or after stop()"
            )
        if service.name in self._services:
            raise ValueError(f"a service named {service.name!r} is already registered")
        runtime = runtime_of(service)
        if runtime.owner is not None:
            raise ValueError(f"service {service.name!r} is registered with another ServiceManager")
        runtime.owner = self
        self._services[service.name] = service

    def remove_service(self, name: str) -> None:
        """Unregister service ``name``; it must be stopped (or failed), and nothing registered
        may depend on it. Waits for its states fail with :class:`ServiceNotFoundError`.

        :raises ServiceNotFoundError: no such service.
        :raises RuntimeError: it is not stopped or failed, or ``start()``/``stop()`` is running.
        :raises ValueError: other services depend on it.
        """
        service = self._require(name)
        runner = self._runner
        if service.state not in ("stopped", "failed") or runner.phase in ("starting", "stopping"):
            raise RuntimeError(
                f"cannot remove service {name!r} while it is {service.state} (the ServiceManager "
                f"is {runner.phase}); it can be removed when stopped or failed"
            )
        if runner.lock is not None and runner.lock.locked():
            # A wave in flight holds its members by name: one may be about to start.
            raise RuntimeError(
                f"cannot remove service {name!r} while services are being started, stopped or "
                "restarted; wait for the restart to end (wait_for_state) or stop() first"
            )
        dependants = [s.name for s in self._services.values() if name in s.depends_on]
        if dependants:
            raise ValueError(
                f"cannot remove service {name!r}: {', '.join(map(repr, dependants))} "
                "depend(s) on it; remove them first"
            )
        del self._services[name]
        runtime_of(service).owner = None
        runner.dependants.pop(name, None)
        for dep in service.depends_on:
            names = runner.dependants.get(dep)
            if names is not None and name in names:
                names.remove(name)
        runner.fail_waiters(name, ServiceNotFoundError(name))

    def get_service(self, name: str) -> Service[Any] | None:
        """The service registered as ``name``, or ``None``."""
        return self._services.get(name)

    def get_services_by_label(self, key: str, value: str) -> list[Service[Any]]:
        """The registered services whose label ``key`` is ``value``, in the order added."""
        return [s for s in self._services.values() if s.labels.get(key) == value]

    def statistics(self) -> ServiceManagerStatistics:
        """How many services are registered, and how many are in each state."""
        counts = dict.fromkeys(SERVICE_STATES, 0)
        for service in self._services.values():
            counts[service.state] += 1
        return ServiceManagerStatistics(services=len(self._services), **counts)

    def _require(self, name: str) -> Service[Any]:
        try:
            return self._services[name]
        except KeyError:
            raise ServiceNotFoundError(name) from None

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start every service in dependency order, independent ones concurrently.

        A service whose start fails (or passes its timeout) is ``failed`` and the services that
        depend on it are not started; the others are. Health checks and restarts run from then
        on, until ``stop()``.

        :raises ValueError: a dependency is not registered, or dependencies form a cycle;
            checked before anything starts.
        :raises RuntimeError: the manager is already started.
        :raises ServiceStartError: one or more services failed to start (``.failed``).
        """
        runner = self._runner
        runner.bind(asyncio.get_running_loop())
        if runner.phase != "stopped":
            raise RuntimeError(f"the ServiceManager is already {runner.phase}; stop() it first")
        runner.dependants = dependants_of(self._services)
        for service in self._services.values():
            runtime_of(service).reset()
        lock = runner.lock = asyncio.Lock()
        runner.set_phase("starting")
        failed: dict[str, BaseException] = {}
        try:
            async with lock:
                failed = await runner.start_wave(list(self._services.values()))
        finally:
            runner.started()
        if failed:
            raise ServiceStartError(failed)

    async def stop(self) -> None:
        """Stop every service in reverse dependency order, each after all that depend on it.

        Health checks and pending restarts end first. A ``stop`` callback that raises or passes
        its timeout is logged and the others still stop; this method does not raise for them.
        Afterwards no task or timer of the manager is left. Safe to call without ``start()``
        and more than once.
        """
        loop = asyncio.get_running_loop()
        runner = self._runner
        if runner.loop is not loop:
            runner.bind(loop)
            return
        if runner.phase == "stopped":
            return
        runner.set_phase("stopping")
        await runner.cancel_watchers()
        assert runner.lock is not None
        async with runner.lock:
            await runner.stop_wave(
                [s for s in self._services.values() if s.state not in ("stopped", "failed")]
            )
        runner.set_phase("stopped")

    async def __aenter__(self) -> ServiceManager:
        """``start()``; if it raises, what did start is stopped again before the error
        propagates."""
        try:
            await self.start()
        except BaseException:
            runner = self._runner
            if runner.phase != "stopped" and runner.loop is asyncio.get_running_loop():
                await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------------ readiness

    async def wait_for_state(
        self,
        name: str,
        state: ServiceState,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the API contract names it so
    ) -> None:
        """Return once service ``name`` is in ``state`` (at once if it already is).

        Every state entered counts, even one left again right away (such as ``stopping``).

        :raises ServiceNotFoundError: no such service (or it is removed while waiting).
        :raises ValueError: ``state`` is not a service state.
        :raises TimeoutError: ``timeout`` seconds passed first.
        """
        service = self._require(name)
        if state not in SERVICE_STATES:
            raise ValueError(
                f"state must be one of {', '.join(map(repr, SERVICE_STATES))}, "
                f"not {safe_repr(state)}"
            )
        limit = _check_timeout("timeout", timeout, allow_zero=True)
        if service.state == state:
            return
        try:
            await self._runner.wait_until(name, lambda: service.state == state, limit)
        except TimeoutError:
            raise TimeoutError(
                f"service {name!r} did not become {state!r} within {timeout:g} s "
                f"(it is {service.state!r})"
            ) from None

    async def wait_for_running(
        self,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the API contract names it so
    ) -> None:
        """``wait_for_state(name, "running", timeout=timeout)``."""
        await self.wait_for_state(name, "running", timeout=timeout)

    async def wait_for_stopped(
        self,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the API contract names it so
    ) -> None:
        """``wait_for_state(name, "stopped", timeout=timeout)``."""
        await self.wait_for_state(name, "stopped", timeout=timeout)

    # -------------------------------------------------------------- tasks needing services

    def constraint_group(
        self, *, name: str = "services", label: str = "requires", timeout: float | None = None
    ) -> TaskConstraintGroup:
        """A constraint group that makes tasks wait for the services they need.

        Add it to a ``TaskManager``; a task labelled ``{label: "db"}`` (or ``"db,cache"`` for
        several) then starts only while those services, and every service they depend on,
        are ``running``. A trigger waits while they are starting, unhealthy or being
        restarted, and fails with :class:`ServiceUnavailableError` when one is ``failed``,
        cannot start because a dependency failed, or the manager is stopped, or when
        ``timeout`` seconds pass first. An unknown name fails it with
        :class:`ServiceNotFoundError`. Tasks without the label are not affected. The check
        is made when a run starts; a run in progress is not stopped.
        """
        if not isinstance(label, str):
            raise TypeError(f"label must be a str, not {type(label).__qualname__} {label!r}")
        if not label:
            raise ValueError("label must be a non-empty string, not ''")
        limit = _check_timeout("timeout", timeout)

        def key(task: Task[Any, Any], input: Any) -> str | None:
            value = task.labels.get(label)
            return value or None

        def should_execute(task: Task[Any, Any], input: Any) -> bool | Awaitable[bool]:
            value = task.labels.get(label)
            if not value:
                return True
            names = [n for n in (part.strip() for part in value.split(",")) if n]
            if all(self._availability(n) is True for n in names):
                return True  # the usual case: answered without a coroutine
            return self._wait_for_services(names, limit)

        return TaskConstraintGroup(
            name=name, constraint_key_for_execution=key, should_execute=should_execute
        )

    def _availability(self, name: str) -> bool | str:
        """Whether service ``name`` can be used: True when it and everything it depends on
        run; False when not yet, but they may; a string saying why they will not.

        :raises ServiceNotFoundError: no such service.
        """
        service = self._require(name)
        dependencies = all_dependencies(service, self._services)
        if service.state == "running" and all(s.state == "running" for s in dependencies):
            return True
        if service.state == "failed":
            error = service.last_error
            return f"it failed: {'?' if error is None else error_message(error)}"
        phase = self._runner.phase
        if phase in ("stopped", "stopping"):
            return f"the ServiceManager is {phase}"
        blocker = next((s for s in dependencies if s.state == "failed"), None)
        if blocker is not None:
            return f"it depends on service {blocker.name!r}, which failed"
        return False

    async def _wait_for_services(self, names: list[str], limit: float | None) -> bool:
        """Wait until every service of ``names`` is running (True), or raise why not."""
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        for name in names:
            while (verdict := self._availability(name)) is not True:
                if isinstance(verdict, str):
                    raise ServiceUnavailableError(name, verdict)

                def decided(name: str = name) -> bool:
                    return self._availability(name) is not False

                remaining = None if deadline is None else deadline - loop.time()
                try:  # woken by a change of any service: its dependencies count too
                    await self._runner.wait_until(None, decided, remaining)
                except TimeoutError:
                    state = self._services[name].state
                    raise ServiceUnavailableError(
                        name, f"it was not running within {limit:g} s (it is {state!r})"
                    ) from None
        return True
