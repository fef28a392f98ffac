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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._clock import now_wall
from ._constraints import TaskConstraintGroup
from ._events import EventSubject
from ._exceptions import (
    ServiceHealthCheckError,
    ServiceNotFoundError,
    ServiceStartError,
    ServiceUnavailableError,
)
from ._service import SERVICE_STATES, Service, ServiceEvent, ServiceState, _is_cancellation
from ._validation import check_seconds, error_message, reraise_interrupt_later, safe_repr

if TYPE_CHECKING:
    from ._task import Task

__all__ = ("ServiceManager", "ServiceManagerStatistics")

logger = logging.getLogger("taskbuffer")

Phase: TypeAlias = Literal["stopped", "starting", "running", "stopping"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceManagerStatistics:
    """A snapshot: how many services are registered, and how many are in each state."""

    services: int
    stopped: int
    starting: int
    running: int
    unhealthy: int
    restarting: int
    stopping: int
    failed: int

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return {
            "services": self.services,
            "stopped": self.stopped,
            "starting": self.starting,
            "running": self.running,
            "unhealthy": self.unhealthy,
            "restarting": self.restarting,
            "stopping": self.stopping,
            "failed": self.failed,
        }


def _check_timeout(name: str, value: float | None, *, allow_zero: bool = False) -> float | None:
    """A time limit as float seconds; ``None`` or ``math.inf`` = no limit (returned as None)."""
    return check_seconds(name, value, positive=not allow_zero, infinite=True, none=True)


def _cycle_in(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle of ``graph`` (name -> names it depends on) as a closed path, or
    ``None``. Iterative depth-first search: a chain of thousands of services is fine."""
    done: set[str] = set()
    for root in graph:
        if root in done:
            continue
        path = [root]
        on_path = {root}
        stack = [iter(graph[root])]
        while stack:
            for dep in stack[-1]:
                if dep in on_path:
                    return [*path[path.index(dep) :], dep]
                if dep not in done:
                    path.append(dep)
                    on_path.add(dep)
                    stack.append(iter(graph[dep]))
                    break
            else:
                stack.pop()
                node = path.pop()
                on_path.discard(node)
                done.add(node)
    return None


class ServiceManager:
    """Starts services in dependency order, watches their health, restarts and stops them.

    :param start_timeout: seconds a start may take, for services that set no ``start_timeout``
        of their own (``None``: no limit).
    :param stop_timeout: the same for stops.
    """

    __slots__ = (
        "_dependants",
        "_lock",
        "_loop",
        "_phase",
        "_recovery_stops",
        "_services",
        "_waiters",
        "_watchers",
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
        # name -> names of the services that depend on it (worked out by start()).
        self._dependants: dict[str, list[str]] = {}
        self._phase: Phase = "stopped"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # The watcher stopping services for a recovery, if any: stop() lets it finish those
        # stops (each within its stop_timeout) rather than cut them short.
        self._recovery_stops: asyncio.Task[None] | None = None
        # name -> {future: condition}: futures resolved at the first change of that service
        # (None: of any service) after which the condition holds (wait_for_state; tasks
        # waiting for services).
        self._waiters: dict[str | None, dict[asyncio.Future[None], Callable[[], bool]]] = {}

    def __repr__(self) -> str:
        counts = self.statistics().to_dict()
        total = counts.pop("services")
        states = " ".join(f"{state}={n}" for state, n in counts.items() if n)
        return f"<ServiceManager {self._phase} services={total}{' ' if states else ''}{states}>"

    # -------------------------------------------------------------------------- registry

    @property
    def service_map(self) -> Mapping[str, Service[Any]]:
        """A read-only view of the registered services by name."""
        return MappingProxyType(self._services)

    @property
    def started(self) -> bool:
        """Whether ``start()`` was called (and ``stop()`` not since)."""
        return self._phase in ("starting", "running")

    def add_service(self, service: Service[Any]) -> None:
        """Register ``service``. Dependencies are checked by ``start()``, so services may be
        added in any order.

        :raises ValueError: the name is taken, or the service is in another manager.
        :raises RuntimeError: the manager is started (add services before ``start()``).
        """
        if not isinstance(service, Service):
            raise TypeError(f"add_service takes a Service, not {safe_repr(service)}")
        if self._phase != "stopped":
            raise RuntimeError(
                f"cannot add service {service.name!r}: the ServiceManager is {self._phase}; "
                "add services before start() or after stop()"
            )
        if service.name in self._services:
            raise ValueError(f"a service named {service.name!r} is already registered")
        if service._owner is not None:
            raise ValueError(f"service {service.name!r} is registered with another ServiceManager")
        service._owner = self
        self._services[service.name] = service

    def remove_service(self, name: str) -> None:
        """Unregister service ``name``; it must be stopped (or failed), and nothing registered
        may depend on it. Waits for its states fail with :class:`ServiceNotFoundError`.

        :raises ServiceNotFoundError: no such service.
        :raises RuntimeError: it is not stopped or failed, or ``start()``/``stop()`` is running.
        :raises ValueError: other services depend on it.
        """
        service = self._require(name)
        if service.state not in ("stopped", "failed") or self._phase in ("starting", "stopping"):
            raise RuntimeError(
                f"cannot remove service {name!r} while it is {service.state} (the ServiceManager "
                f"is {self._phase}); it can be removed when stopped or failed"
            )
        if self._lock is not None and self._lock.locked():
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
        service._owner = None
        self._dependants.pop(name, None)
        for dep in service.depends_on:
            names = self._dependants.get(dep)
            if names is not None and name in names:
                names.remove(name)
        for future in self._waiters.pop(name, {}):
            if not future.done():
                future.set_exception(ServiceNotFoundError(name))

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
        self._bind(asyncio.get_running_loop())
        if self._phase != "stopped":
            raise RuntimeError(f"the ServiceManager is already {self._phase}; stop() it first")
        self._dependants = self._check_graph()
        for service in self._services.values():
            service._reset()
        lock = self._lock = asyncio.Lock()
        self._set_phase("starting")
        failed: dict[str, BaseException] = {}
        try:
            async with lock:
                failed = await self._start_wave(list(self._services.values()))
        finally:
            self._started()
        if failed:
            raise ServiceStartError(failed)

    def _started(self) -> None:
        if self._phase == "starting":  # stop() may have begun meanwhile
            self._set_phase("running")

    async def stop(self) -> None:
        """Stop every service in reverse dependency order, each after all that depend on it.

        Health checks and pending restarts end first. A ``stop`` callback that raises or passes
        its timeout is logged and the others still stop; this method does not raise for them.
        Afterwards no task or timer of the manager is left. Safe to call without ``start()``
        and more than once.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._bind(loop)
            return
        if self._phase == "stopped":
            return
        self._set_phase("stopping")
        watchers = list(self._watchers.values())
        self._watchers.clear()
        for watcher in watchers:
            if watcher is not self._recovery_stops:  # that one ends after its stops
                watcher.cancel()
        if watchers:
            await asyncio.wait(watchers)
        assert self._lock is not None
        async with self._lock:
            await self._stop_wave(
                [s for s in self._services.values() if s.state not in ("stopped", "failed")]
            )
        self._set_phase("stopped")

    async def __aenter__(self) -> ServiceManager:
        """``start()``; if it raises, what did start is stopped again before the error
        propagates."""
        try:
            await self.start()
        except BaseException:
            if self._phase != "stopped" and self._loop is asyncio.get_running_loop():
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

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Work in ``loop``. What was left in another loop (closed, or never stopped) is
        dropped: its tasks and futures cannot be awaited from here."""
        if loop is self._loop:
            return
        if self._loop is not None:
            for service in self._services.values():
                service._reset()
            self._watchers.clear()
            self._waiters.clear()
            self._lock = None
            self._phase = "stopped"
        self._loop = loop

    def _check_graph(self) -> dict[str, list[str]]:
        """The dependants of each service; raises ``ValueError`` for unknown names or a cycle."""
        services = self._services
        unknown = [
            f"{s.name!r} depends on {dep!r}"
            for s in services.values()
            for dep in s.depends_on
            if dep not in services
        ]
        if unknown:
            raise ValueError(
                f"unknown service dependencies: {'; '.join(unknown)}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not registered"
            )
        cycle = _cycle_in({name: s.depends_on for name, s in services.items()})
        if cycle is not None:
            raise ValueError(
                "services depend on each other in a cycle: "
                + " -> ".join(map(repr, cycle))
                + " (each depends on the next)"
            )
        dependants: dict[str, list[str]] = {name: [] for name in services}
        for s in services.values():
            for dep in s.depends_on:
                dependants[dep].append(s.name)
        return dependants

    # ---------------------------------------------------------------------------- waves

    async def _start_wave(self, members: list[Service[Any]]) -> dict[str, BaseException]:
        """Start ``members`` in dependency order, independent ones at once.

        A member needing a service that is neither running nor a member is skipped, and so is
        everything in the wave that depends on a skipped or failed member. Returns the errors
        of the starts that failed.
        """
        return await self._wave(members, forward=True)

    async def _stop_wave(self, members: list[Service[Any]]) -> None:
        """Stop ``members``, each after the members that depend on it."""
        await self._wave(members, forward=False)

    async def _wave(
        self, members: list[Service[Any]], *, forward: bool
    ) -> dict[str, BaseException]:
        services = self._services
        names = {s.name: s for s in members}

        def before(name: str) -> Iterable[str]:  # what must be done before ``name``
            return services[name].depends_on if forward else self._dependants[name]

        def after(name: str) -> Iterable[str]:  # what waits for ``name``
            return self._dependants[name] if forward else services[name].depends_on

        loop = asyncio.get_running_loop()
        finished: asyncio.Queue[tuple[str, asyncio.Task[BaseException | None]]] = asyncio.Queue()
        # Per member, how many of what must be done before it are not done yet. A member
        # that fails, or needs a service outside the wave that is not running, never
        # brings the counts of what waits for it to zero: those are skipped.
        pending: dict[str, int] = {}
        failed: dict[str, BaseException] = {}
        tasks: set[asyncio.Task[BaseException | None]] = set()

        def launch(name: str) -> None:
            service = names[name]
            coro = self._start_one(service) if forward else self._halt(service)
            task = loop.create_task(coro)
            tasks.add(task)
            task.add_done_callback(lambda t: finished.put_nowait((name, t)))

        for name in names:
            pending[name] = sum(
                other in names or (forward and services[other].state != "running")
                for other in before(name)
            )
        for name, count in pending.items():
            if count == 0:
                launch(name)
        try:
            while tasks:
                name, task = await finished.get()
                tasks.discard(task)
                error = None if task.cancelled() else task.result()
                if error is not None or task.cancelled():
                    if error is not None:
                        failed[name] = error
                    continue
                for other in after(name):
                    if other in names:
                        pending[other] -= 1
                        if pending[other] == 0:
                            launch(other)
        except BaseException:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            raise
        return failed

    async def _start_one(self, service: Service[Any]) -> BaseException | None:
        """Start one service (as part of a wave); returns the error if it failed."""
        self._set(service, "starting")
        try:
            await service._open(self.start_timeout)
        except BaseException as exc:
            if _is_cancellation(exc):
                self._set(service, "stopped")
                raise
            self._set(service, "failed", exc)
            reraise_interrupt_later(exc)
            return exc
        self._set(service, "running")
        self._watch(service)
        return None

    async def _halt(
        self,
        service: Service[Any],
        final: ServiceState = "stopped",
        error: BaseException | None = None,
    ) -> None:
        """Stop one service: end its watcher, run its ``stop``, enter ``final``."""
        watcher = self._watchers.pop(service.name, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.wait([watcher])
        try:
            if service._is_open:
                self._set(service, "stopping")
                await service._close(self.stop_timeout)
        finally:
            if service.state != final or error is not None:
                self._set(service, final, error)

    # --------------------------------------------------------------- health and restarts

    def _watch(self, service: Service[Any]) -> None:
        if service._has_health_check and self._phase in ("starting", "running"):
            assert self._loop is not None
            self._watchers[service.name] = self._loop.create_task(
                self._supervise(service), name=f"taskbuffer: watch service {service.name!r}"
            )

    async def _supervise(self, service: Service[Any]) -> None:
        """The watcher of a running service: health checks, then recovery when unhealthy."""
        failures = 0
        while True:
            await asyncio.sleep(service.health_interval)
            problem = await service._probe()
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
        self._set(service, "unhealthy", error)
        logger.info("service %r is unhealthy: %s", service.name, error_message(error))
        while True:
            if service.restart == "never" or (
                service.max_restarts is not None and service.restart_count >= service.max_restarts
            ):
                reason = (
                    "restart='never'"
                    if service.restart == "never"
                    else f"max_restarts={service.max_restarts} reached"
                )
                logger.error(
                    "service %r failed (%s): %s", service.name, reason, error_message(error)
                )
                assert self._lock is not None
                async with self._lock:
                    with self._stopping_for_recovery():
                        await self._halt_dependants(service)
                        await self._halt(service, "failed", error)
                return False
            await asyncio.sleep(service.restart_delay_for(service.restart_count + 1))
            assert self._lock is not None
            async with self._lock:
                service._count_restart()
                self._set(service, "restarting", error)
                logger.info(
                    "restarting service %r (restart %d)", service.name, service.restart_count
                )
                with self._stopping_for_recovery():
                    await self._halt_dependants(service)
                    if service._is_open:
                        await service._close(self.stop_timeout)
                if self._phase not in ("starting", "running"):
                    return False  # stop() began meanwhile: it stops this one, nothing starts
                try:
                    await service._open(self.start_timeout)
                except BaseException as exc:
                    if _is_cancellation(exc):
                        self._set(service, "stopped")
                        raise
                    reraise_interrupt_later(exc)
                    logger.warning(  # tried again after the next delay
                        "restart %d of service %r failed: %s",
                        service.restart_count,
                        service.name,
                        error_message(exc),
                    )
                    error = exc
                    service._enter("restarting", exc)
                    continue
                self._set(service, "running")
                await self._resume_dependants(service)
            return True

    @contextlib.contextmanager
    def _stopping_for_recovery(self) -> Iterator[None]:
        """Mark the current watcher as stopping services for a recovery (see ``stop()``)."""
        self._recovery_stops = asyncio.current_task()
        try:
            yield
        finally:
            self._recovery_stops = None

    def _all_dependants(self, service: Service[Any]) -> list[Service[Any]]:
        """Every service that depends on ``service``, directly or through others."""
        seen: dict[str, Service[Any]] = {}
        todo = list(self._dependants.get(service.name, ()))
        while todo:
            name = todo.pop()
            if name not in seen:
                seen[name] = self._services[name]
                todo.extend(self._dependants[name])
        return list(seen.values())

    async def _halt_dependants(self, service: Service[Any]) -> None:
        await self._stop_wave(
            [s for s in self._all_dependants(service) if s.state not in ("stopped", "failed")]
        )

    async def _resume_dependants(self, service: Service[Any]) -> None:
        """Start the stopped dependants whose dependencies all run again."""
        failed = await self._start_wave(
            [s for s in self._all_dependants(service) if s.state == "stopped"]
        )
        for name, error in failed.items():
            logger.error("service %r failed to start again: %s", name, error_message(error))

    # --------------------------------------------------------------------- states, events

    def _set(
        self, service: Service[Any], state: ServiceState, error: BaseException | None = None
    ) -> None:
        """Move ``service`` to ``state``: emit the event, wake whoever waits for it."""
        service._enter(state, error)
        subject = self.service_subject
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
            waiters = self._waiters.get(key)
            if waiters:
                self._wake(waiters)

    def _set_phase(self, phase: Phase) -> None:
        self._phase = phase
        for waiters in self._waiters.values():
            self._wake(waiters)

    @staticmethod
    def _wake(waiters: dict[asyncio.Future[None], Callable[[], bool]]) -> None:
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

    async def _wait_until(
        self, name: str | None, condition: Callable[[], bool], limit: float | None
    ) -> None:
        """Wait (up to ``limit`` seconds) for a change of service ``name`` (``None``: of any
        service) or of the manager after which ``condition()`` holds.

        :raises TimeoutError: ``limit`` passed first (a bare one; callers word it).
        """
        loop = asyncio.get_running_loop()
        self._bind(loop)
        future: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters.setdefault(name, {})
        waiters[future] = condition
        try:
            async with asyncio.timeout(limit):
                await future
        finally:
            waiters.pop(future, None)
            if not waiters and self._waiters.get(name) is waiters:
                del self._waiters[name]

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
            await self._wait_until(name, lambda: service.state == state, limit)
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
        dependencies = self._dependencies(service)
        if service.state == "running" and all(s.state == "running" for s in dependencies):
            return True
        if service.state == "failed":
            error = service.last_error
            return f"it failed: {'?' if error is None else error_message(error)}"
        if self._phase in ("stopped", "stopping"):
            return f"the ServiceManager is {self._phase}"
        blocker = next((s for s in dependencies if s.state == "failed"), None)
        if blocker is not None:
            return f"it depends on service {blocker.name!r}, which failed"
        return False

    def _dependencies(self, service: Service[Any]) -> list[Service[Any]]:
        """Every service ``service`` depends on, directly or through others."""
        seen: dict[str, Service[Any]] = {}
        todo = list(service.depends_on)
        while todo:
            name = todo.pop()
            if name not in seen and name in self._services:
                seen[name] = self._services[name]
                todo.extend(seen[name].depends_on)
        return list(seen.values())

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
                    await self._wait_until(None, decided, remaining)
                except TimeoutError:
                    state = self._services[name].state
                    raise ServiceUnavailableError(
                        name, f"it was not running within {limit:g} s (it is {state!r})"
                    ) from None
        return True
