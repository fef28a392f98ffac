"""``Service``: a long-running part of an application, with its start, stop and health check.

A service is what its ``start`` callback returns (a database pool, a consumer, a server), kept
between a start and a stop. It holds its options and shows its state; the state lives in its
:class:`~taskbuffer._service_runtime.ServiceRuntime` (handed out by :func:`runtime_of`), which a
:class:`ServiceManager` (``_service_manager.py``) drives: it decides when the service starts,
stops and restarts.

Two ways to build one: ``Service(name=..., start=..., stop=..., ...)``, or ``@service`` on an
async generator function whose code before ``yield`` is the start, the yielded value the
instance and the code after it the stop, the way ``contextlib.asynccontextmanager`` reads.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar, cast, overload

from typing_extensions import Unpack

from ._clock import to_datetime
from ._service_info import SERVICE_STATES as SERVICE_STATES
from ._service_info import RestartPolicy
from ._service_info import ServiceEvent as ServiceEvent
from ._service_info import ServiceEventType as ServiceEventType
from ._service_info import ServiceMetadata as ServiceMetadata
from ._service_info import ServiceState as ServiceState
from ._service_runtime import ServiceRuntime
from ._validation import (
    check_count,
    check_labels,
    check_number,
    check_seconds,
    error_message,
    safe_repr,
)

__all__ = (
    "SERVICE_STATES",
    "Service",
    "ServiceEvent",
    "ServiceEventType",
    "ServiceMetadata",
    "ServiceOptions",
    "ServiceState",
    "runtime_of",
    "service",
)

T = TypeVar("T")

# ----------------------------------------------------------------------------- validation


def _duration(name: str, value: float, *, allow_zero: bool = False) -> float:
    """A finite duration option as float seconds (the package's wording: ``_validation``)."""
    seconds = check_seconds(name, value, positive=not allow_zero)
    assert seconds is not None
    return seconds


def _limit(name: str, value: float | None) -> float | None:
    """A time limit as float seconds, ``math.inf`` (no limit, kept: it overrides the
    manager's default) or ``None`` (the manager's default)."""
    seconds = check_number(
        name, value, minimum=0, above=True, unit="seconds", infinite=True, none=True
    )
    return None if seconds is None else float(seconds)


def _names(service_name: str, depends_on: Sequence[str]) -> tuple[str, ...]:
    if isinstance(depends_on, str) or not isinstance(depends_on, Sequence):
        raise TypeError(
            "depends_on must be a sequence of service names (e.g. a list), "
            f"not {safe_repr(depends_on)}"
        )
    names = tuple(depends_on)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"depends_on must hold non-empty service names, not {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"depends_on names a service more than once: {list(names)!r}")
    if service_name in names:
        raise ValueError(f"service {service_name!r} cannot depend on itself (depends_on)")
    return names


# -------------------------------------------------------------------------------- Service


class Service(Generic[T]):
    """A long-running part of an application, started and stopped by a ``ServiceManager``.

    Durations are float seconds; ``None`` means no limit.

    :param start: builds the service and returns its instance (plain or ``async``).
    :param stop: ``stop(instance)``, releases it (plain or ``async``).
    :param health_check: ``health_check(instance) -> bool`` (plain or ``async``), run every
        ``health_interval`` seconds while the service runs; False, an error or taking longer
        than ``health_timeout`` (default: ``health_interval``) counts as a failed check.
    :param unhealthy_threshold: failed checks in a row that make the service ``unhealthy``.
    :param depends_on: names of the services that must be running before this one starts.
    :param start_timeout: a start taking longer fails; ``None``: the manager's default.
    :param stop_timeout: a stop taking longer is cut short; ``None``: the manager's default.
    :param restart: ``"on-failure"`` restarts an unhealthy service, ``"never"`` fails it.
    :param restart_delay: seconds from becoming unhealthy to the first restart, multiplied by
        ``restart_backoff`` for each further restart, at most ``restart_max_delay``.
    :param max_restarts: restarts allowed before the service is ``failed`` (``None``: no cap).
    """

    __slots__ = (
        "_depends_on",
        "_runtime",
        "health_interval",
        "health_timeout",
        "labels",
        "max_restarts",
        "restart",
        "restart_backoff",
        "restart_delay",
        "restart_max_delay",
        "start_timeout",
        "stop_timeout",
        "unhealthy_threshold",
    )

    # Two signatures so that an ``async def`` start makes a Service of what it returns.
    @overload
    def __init__(
        self: Service[T],
        *,
        name: str,
        start: Callable[[], Awaitable[T]],
        stop: Callable[[T], Awaitable[None] | None] | None = None,
        health_check: Callable[[T], Awaitable[bool] | bool] | None = None,
        health_interval: float = 30.0,
        health_timeout: float | None = None,
        unhealthy_threshold: int = 3,
        depends_on: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        restart: RestartPolicy = "on-failure",
        restart_delay: float = 1.0,
        restart_backoff: float = 2.0,
        restart_max_delay: float = 60.0,
        max_restarts: int | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: Service[T],
        *,
        name: str,
        start: Callable[[], T],
        stop: Callable[[T], Awaitable[None] | None] | None = None,
        health_check: Callable[[T], Awaitable[bool] | bool] | None = None,
        health_interval: float = 30.0,
        health_timeout: float | None = None,
        unhealthy_threshold: int = 3,
        depends_on: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        restart: RestartPolicy = "on-failure",
        restart_delay: float = 1.0,
        restart_backoff: float = 2.0,
        restart_max_delay: float = 60.0,
        max_restarts: int | None = None,
    ) -> None: ...
    def __init__(
        self,
        *,
        name: str,
        start: Callable[[], Awaitable[T]] | Callable[[], T],
        stop: Callable[[T], Awaitable[None] | None] | None = None,
        health_check: Callable[[T], Awaitable[bool] | bool] | None = None,
        health_interval: float = 30.0,
        health_timeout: float | None = None,
        unhealthy_threshold: int = 3,
        depends_on: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        start_timeout: float | None = None,
        stop_timeout: float | None = None,
        restart: RestartPolicy = "on-failure",
        restart_delay: float = 1.0,
        restart_backoff: float = 2.0,
        restart_max_delay: float = 60.0,
        max_restarts: int | None = None,
    ) -> None:
        _check_identity(name, start, stop, health_check, restart)
        backoff = float(check_number("restart_backoff", restart_backoff, minimum=1))
        self._runtime: ServiceRuntime[T] = ServiceRuntime(name, start, stop, health_check)
        self.health_interval = _duration("health_interval", health_interval)
        self.health_timeout = _limit("health_timeout", health_timeout)
        self.unhealthy_threshold: int = check_count(
            "unhealthy_threshold", unhealthy_threshold, minimum=1
        )
        self._depends_on = _names(name, depends_on)
        self.labels = check_labels("labels", labels)
        self.start_timeout = _limit("start_timeout", start_timeout)
        self.stop_timeout = _limit("stop_timeout", stop_timeout)
        self.restart: RestartPolicy = restart
        self.restart_delay = _duration("restart_delay", restart_delay, allow_zero=True)
        self.restart_backoff = backoff
        self.restart_max_delay = _duration("restart_max_delay", restart_max_delay, allow_zero=True)
        self.max_restarts: int | None = check_number(
            "max_restarts", max_restarts, minimum=0, integer=True, none=True
        )

    def __repr__(self) -> str:
        runtime = self._runtime
        return (
            f"<Service {runtime.name!r} state={runtime.state!r} restarts={runtime.restart_count}"
            f" depends_on={list(self._depends_on)!r}>"
        )

    # ---------------------------------------------------------------------------- state

    @property
    def name(self) -> str:
        """The service's name, unique within its manager."""
        return self._runtime.name

    @property
    def depends_on(self) -> tuple[str, ...]:
        """The names of the services this one needs running before it starts."""
        return self._depends_on

    @property
    def state(self) -> ServiceState:
        """Where the service is in its lifecycle."""
        return self._runtime.state

    @property
    def instance(self) -> T | None:
        """What ``start`` returned, while the service is started; ``None`` otherwise."""
        return self._runtime.instance

    @property
    def restart_count(self) -> int:
        """Restarts since the manager's latest ``start()``."""
        return self._runtime.restart_count

    @property
    def last_error(self) -> BaseException | None:
        """The error that last failed a start or made the service unhealthy (kept after a
        recovery, cleared by the manager's next ``start()``)."""
        return self._runtime.last_error

    @property
    def last_health_check(self) -> datetime | None:
        """When the latest health check finished (UTC), or ``None``."""
        at = self._runtime.last_health_check
        return None if at is None else to_datetime(at)

    @property
    def started_at(self) -> datetime | None:
        """When the current instance was started (UTC), or ``None`` when not started."""
        at = self._runtime.started_at
        return None if at is None else to_datetime(at)

    def get_metadata(self) -> ServiceMetadata:
        """A snapshot of the service."""
        runtime = self._runtime
        error = runtime.last_error
        return ServiceMetadata(
            name=runtime.name,
            state=runtime.state,
            labels=dict(self.labels),
            depends_on=self._depends_on,
            restart_count=runtime.restart_count,
            last_error=None if error is None else error_message(error),
            last_health_check=self.last_health_check,
            started_at=self.started_at,
        )

    def restart_delay_for(self, restart_number: int) -> float:
        """Seconds before restart number ``restart_number`` (1 for the first)."""
        delay = self.restart_delay * self.restart_backoff ** max(0, restart_number - 1)
        return min(delay, self.restart_max_delay)


def runtime_of(service: Service[T]) -> ServiceRuntime[T]:
    """The lifecycle state of ``service``, for the manager that drives it."""
    return service._runtime


def _check_identity(
    name: object, start: object, stop: object, health_check: object, restart: object
) -> None:
    """The checks of ``Service``'s name, callbacks and restart policy."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__qualname__} {safe_repr(name)}")
    if not name:
        raise ValueError("name must be a non-empty string, not ''")
    for option, function in (("start", start), ("stop", stop), ("health_check", health_check)):
        if function is not None and not callable(function):
            raise TypeError(f"{option} must be callable, not {safe_repr(function)}")
    if start is None:
        raise TypeError("start must be callable, not None")
    if restart not in ("never", "on-failure"):
        raise ValueError(f"restart must be 'never' or 'on-failure', not {safe_repr(restart)}")


# ---------------------------------------------------------------------- @service decorator


class ServiceOptions(TypedDict, total=False):
    """The keyword options of :func:`service`: those of :class:`Service` but ``name``,
    ``start`` and ``stop``."""

    health_check: Callable[[Any], Awaitable[bool] | bool] | None
    health_interval: float
    health_timeout: float | None
    unhealthy_threshold: int
    depends_on: Sequence[str]
    labels: Mapping[str, str] | None
    start_timeout: float | None
    stop_timeout: float | None
    restart: RestartPolicy
    restart_delay: float
    restart_backoff: float
    restart_max_delay: float
    max_restarts: int | None


class _Lifecycle(Generic[T]):
    """``start`` and ``stop`` of a service written as one async generator function."""

    __slots__ = ("_factory", "_generator")

    def __init__(self, factory: Callable[[], AsyncIterator[T]]) -> None:
        self._factory = factory
        self._generator: AsyncGenerator[T, None] | None = None

    async def start(self) -> T:
        generator = cast("AsyncGenerator[T, None]", self._factory())
        try:
            instance = await anext(generator)
        except StopAsyncIteration:
            raise RuntimeError(
                f"service function {self._factory.__qualname__} returned without yielding "
                "its instance"
            ) from None
        self._generator = generator
        return instance

    async def stop(self, instance: T) -> None:
        generator, self._generator = self._generator, None
        if generator is None:
            return
        try:
            await anext(generator)
        except StopAsyncIteration:
            return
        await generator.aclose()
        raise RuntimeError(f"service function {self._factory.__qualname__} yielded more than once")


@overload
def service(function: Callable[[], AsyncIterator[T]], /) -> Service[T]: ...
@overload
def service(
    function: None = None, /, *, name: str | None = None, **options: Unpack[ServiceOptions]
) -> _ServiceDecorator: ...
def service(
    function: Callable[[], AsyncIterator[Any]] | None = None,
    /,
    *,
    name: str | None = None,
    **options: Unpack[ServiceOptions],
) -> Service[Any] | _ServiceDecorator:
    """Build a :class:`Service` from an async generator function: ``@service`` or
    ``@service(depends_on=[...], ...)``.

    The code before ``yield`` starts the service, the value yielded is its instance, and the
    code after ``yield`` (put it in ``finally`` to run it on errors too) stops it. The name
    defaults to the function's name.
    """
    decorator = _ServiceDecorator(name, options)
    return decorator if function is None else decorator(function)


class _ServiceDecorator:
    __slots__ = ("_options", "_service_name")

    def __init__(self, name: str | None, options: ServiceOptions) -> None:
        self._service_name = name
        self._options = options

    def __call__(self, function: Callable[[], AsyncIterator[T]], /) -> Service[T]:
        if not inspect.isasyncgenfunction(function):
            raise TypeError(
                "@service decorates an async generator function (start, yield the instance, "
                f"stop); {safe_repr(function)} is not one. For separate callbacks use "
                "Service(name=..., start=..., stop=...)"
            )
        lifecycle = _Lifecycle(function)
        return Service(
            name=self._service_name or function.__name__,
            start=lifecycle.start,
            stop=lifecycle.stop,
            **self._options,
        )
