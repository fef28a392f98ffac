"""``Service`` and ``ServiceManager``: API.md's "Services", clause by clause, and tasks that
need a service (``ServiceManager.constraint_group``).

Every async test runs on looptime's virtual clock (the loop starts at 0), so the instants
asserted are exact.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import FrozenInstanceError
from datetime import datetime
from typing import Any

import pytest
from reactivex.abc import DisposableBase

from taskbuffer import (
    Service,
    ServiceEvent,
    ServiceHealthCheckError,
    ServiceManager,
    ServiceManagerStatistics,
    ServiceMetadata,
    ServiceNotFoundError,
    ServiceStartError,
    ServiceUnavailableError,
    Task,
    TaskbufferError,
    TaskConstraintGroup,
    TaskEvent,
    TaskManager,
    service,
)

LIMIT = 3600  # seconds of virtual time any single test may take before it is a hang


def now() -> float:
    return asyncio.get_running_loop().time()


class Health:
    """A scripted health check: each call takes the next outcome, then healthy for good.

    An outcome is True/False (returned), an exception (raised) or a number (seconds to take,
    then healthy). ``calls`` records the loop time of every call.
    """

    def __init__(self, *outcomes: bool | float | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[float] = []

    async def __call__(self, instance: Any) -> bool:
        self.calls.append(now())
        outcome = self.outcomes.pop(0) if self.outcomes else True
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, bool):
            return outcome
        await asyncio.sleep(outcome)
        return True


class Lifecycle:
    """Builds services whose callbacks record ``(loop time, what, name)`` in ``log``."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, str]] = []
        self.starts: dict[str, int] = {}

    def service(
        self,
        name: str,
        *,
        depends_on: Sequence[str] = (),
        start_time: float = 0.0,
        stop_time: float = 0.0,
        fail_starts: Sequence[int] = (),
        stop_error: BaseException | None = None,
        **options: Any,
    ) -> Service[str]:
        """``fail_starts``: which starts of this service fail (1 = the first)."""

        async def start() -> str:
            number = self.starts[name] = self.starts.get(name, 0) + 1
            self.log.append((now(), "start", name))
            await asyncio.sleep(start_time)
            if number in fail_starts:
                self.log.append((now(), "start failed", name))
                raise ConnectionError(f"{name} start {number} refused")
            self.log.append((now(), "started", name))
            return f"{name}#{number}"

        async def stop(instance: str) -> None:
            self.log.append((now(), "stop", name))
            await asyncio.sleep(stop_time)
            if stop_error is not None:
                raise stop_error
            self.log.append((now(), "stopped", name))

        return Service(name=name, start=start, stop=stop, depends_on=depends_on, **options)

    def what(self, kind: str) -> list[str]:
        return [name for _, what, name in self.log if what == kind]

    def at(self, kind: str) -> dict[str, float]:
        return {name: t for t, what, name in self.log if what == kind}


@pytest.fixture
def life() -> Lifecycle:
    return Lifecycle()


@pytest.fixture
def subscribe() -> Iterator[Callable[[ServiceManager], list[ServiceEvent]]]:
    """Record a manager's service events; subscriptions are disposed when the test ends."""
    subscriptions: list[DisposableBase] = []

    def record(manager: ServiceManager) -> list[ServiceEvent]:
        events: list[ServiceEvent] = []
        subscriptions.append(manager.service_subject.subscribe(events.append))
        return events

    yield record
    for subscription in subscriptions:
        subscription.dispose()


def manager_of(*services: Service[Any], **options: Any) -> ServiceManager:
    manager = ServiceManager(**options)
    for s in services:
        manager.add_service(s)
    return manager


def states(manager: ServiceManager) -> dict[str, str]:
    return {name: s.state for name, s in manager.service_map.items()}


def trail(events: list[ServiceEvent], name: str | None = None) -> list[tuple[str, str]]:
    return [(e.service.name, e.type) for e in events if name is None or e.service.name == name]


async def start_quietly(manager: ServiceManager) -> ServiceStartError | None:
    try:
        async with asyncio.timeout(LIMIT):
            await manager.start()
    except ServiceStartError as error:
        return error
    return None


def is_started(manager: ServiceManager) -> bool:
    """``manager.started``, read through a call so a type checker does not narrow it."""
    return manager.started


def left_over() -> tuple[set[asyncio.Task[Any]], list[asyncio.TimerHandle]]:
    """The asyncio tasks other than the current one, and the live timers of the loop."""
    loop = asyncio.get_running_loop()
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    return tasks, timers


# ------------------------------------------------------------------------ construction


def test_a_service_holds_its_options_and_starts_stopped() -> None:
    s = Service(
        name="db",
        start=lambda: "pool",
        depends_on=["config"],
        labels={"tier": "data"},
        health_interval=5,
        unhealthy_threshold=2,
        restart="never",
        max_restarts=4,
    )
    assert (s.name, s.depends_on, s.labels, s.state) == (
        "db",
        ("config",),
        {"tier": "data"},
        "stopped",
    )
    assert (s.health_interval, s.health_timeout, s.unhealthy_threshold) == (5.0, None, 2)
    assert (s.restart, s.restart_delay, s.restart_backoff, s.restart_max_delay) == (
        "never",
        1.0,
        2.0,
        60.0,
    )
    assert (s.max_restarts, s.start_timeout, s.stop_timeout) == (4, None, None)
    assert (s.instance, s.restart_count, s.last_error, s.last_health_check) == (None, 0, None, None)
    assert s.started_at is None
    assert repr(s) == "<Service 'db' state='stopped' restarts=0 depends_on=['config']>"


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"name": ""}, ValueError, "name must be a non-empty string"),
        ({"start": "nope"}, TypeError, "start must be callable"),
        ({"stop": 3}, TypeError, "stop must be callable"),
        ({"health_check": 3}, TypeError, "health_check must be callable"),
        (
            {"health_interval": 0},
            ValueError,
            "health_interval must be a finite number of seconds > 0",
        ),
        ({"health_interval": math.inf}, ValueError, "health_interval must be a finite"),
        ({"health_interval": math.nan}, ValueError, "health_interval"),
        ({"health_timeout": -1}, ValueError, "health_timeout must be a number of seconds > 0"),
        ({"unhealthy_threshold": 0}, ValueError, "unhealthy_threshold must be an int >= 1"),
        ({"unhealthy_threshold": True}, TypeError, "unhealthy_threshold must be an int >= 1"),
        ({"depends_on": "db"}, TypeError, "depends_on must be a sequence of service names"),
        ({"depends_on": ["db", ""]}, ValueError, "depends_on must hold non-empty service names"),
        ({"depends_on": ["db", "db"]}, ValueError, "depends_on names a service more than once"),
        ({"depends_on": ["me"]}, ValueError, "service 'me' cannot depend on itself"),
        ({"labels": {"k": 1}}, TypeError, "labels must be a mapping of str to str; got"),
        ({"labels": ["k"]}, TypeError, "labels must be a mapping"),
        ({"start_timeout": 0}, ValueError, "start_timeout must be a number of seconds > 0"),
        ({"stop_timeout": "1"}, TypeError, "stop_timeout must be a number of seconds > 0"),
        ({"restart": "always"}, ValueError, "restart must be 'never' or 'on-failure'"),
        (
            {"restart_delay": -0.5},
            ValueError,
            "restart_delay must be a finite number of seconds >= 0",
        ),
        ({"restart_backoff": 0.5}, ValueError, "restart_backoff must be a finite number >= 1"),
        ({"restart_max_delay": math.inf}, ValueError, "restart_max_delay must be a finite"),
        ({"max_restarts": -1}, ValueError, "max_restarts must be an int >= 0 or None"),
    ],
)
def test_bad_service_options_raise_naming_the_parameter(
    options: dict[str, Any], error: type[Exception], words: str
) -> None:
    arguments: dict[str, Any] = {"name": "me", "start": lambda: None, **options}
    with pytest.raises(error, match=words):
        Service(**arguments)


def test_no_limit_options_accept_none_and_infinity() -> None:
    s = Service(name="s", start=lambda: None, start_timeout=math.inf, health_timeout=math.inf)
    assert (s.start_timeout, s.health_timeout, s.stop_timeout) == (math.inf, math.inf, None)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"start_timeout": -1},
            "start_timeout must be a number of seconds > 0, math.inf or None",
        ),
        (
            {"stop_timeout": math.nan},
            "stop_timeout must be a number of seconds > 0, math.inf or None",
        ),
    ],
)
def test_bad_manager_options_raise_naming_the_parameter(
    options: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        ServiceManager(**options)


def test_restart_delays_grow_by_the_backoff_up_to_the_cap() -> None:
    s = Service(
        name="s", start=lambda: None, restart_delay=0.5, restart_backoff=3, restart_max_delay=10
    )
    assert [s.restart_delay_for(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


# ----------------------------------------------------------------------- @service form


async def test_the_service_decorator_turns_an_async_generator_into_start_and_stop() -> None:
    log: list[str] = []

    @service(depends_on=["config"], labels={"tier": "data"}, health_interval=2)
    async def database() -> AsyncIterator[dict[str, int]]:
        log.append("open")
        pool = {"connections": 4}
        try:
            yield pool
        finally:
            log.append("close")

    @service
    async def config() -> AsyncIterator[str]:
        yield "settings"

    assert isinstance(database, Service)
    assert (database.name, database.depends_on, database.labels) == (
        "database",
        ("config",),
        {"tier": "data"},
    )
    assert database.health_interval == 2.0
    manager = manager_of(database, config)
    async with asyncio.timeout(LIMIT):
        await manager.start()
        assert database.instance == {"connections": 4} and config.instance == "settings"
        assert log == ["open"]
        await manager.stop()
    assert log == ["open", "close"]
    assert database.state == "stopped" and database.instance is None


def test_the_service_decorator_takes_a_name() -> None:
    @service(name="primary-db")
    async def database() -> AsyncIterator[int]:
        yield 1

    assert database.name == "primary-db"


def test_the_service_decorator_wants_an_async_generator_function() -> None:
    async def start() -> int:
        return 1

    with pytest.raises(TypeError, match="@service decorates an async generator function"):
        service(start)  # type: ignore[arg-type]


async def test_a_service_generator_that_does_not_yield_fails_its_start() -> None:
    @service
    async def empty() -> AsyncIterator[int]:
        return
        yield 0  # type: ignore[unreachable]  # pragma: no cover - makes it a generator

    manager = manager_of(empty)
    error = await start_quietly(manager)
    assert error is not None
    assert "returned without yielding its instance" in str(error.failed["empty"])
    assert empty.state == "failed"


async def test_a_service_generator_that_yields_twice_has_its_stop_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @service
    async def twice() -> AsyncIterator[int]:
        yield 1
        yield 2

    manager = manager_of(twice)
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.stop()
    assert twice.state == "stopped"
    assert any(
        "yielded more than once" in r.getMessage() or "yielded more than once" in str(r.exc_info)
        for r in caplog.records
    )


# -------------------------------------------------------------------------- registry


def test_add_service_rejects_a_non_service_a_taken_name_and_a_foreign_service() -> None:
    manager = ServiceManager()
    manager.add_service(Service(name="db", start=lambda: None))
    with pytest.raises(TypeError, match="add_service takes a Service"):
        manager.add_service("db")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a service named 'db' is already registered"):
        manager.add_service(Service(name="db", start=lambda: None))
    shared = Service(name="cache", start=lambda: None)
    manager.add_service(shared)
    with pytest.raises(ValueError, match="'cache' is registered with another ServiceManager"):
        ServiceManager().add_service(shared)


async def test_add_service_while_started_raises(life: Lifecycle) -> None:
    manager = manager_of(life.service("db"))
    await start_quietly(manager)
    with pytest.raises(RuntimeError, match="add services before start"):
        manager.add_service(life.service("late"))
    await manager.stop()
    manager.add_service(life.service("late"))


def test_look_ups_by_name_and_label_and_the_read_only_map() -> None:
    db = Service(name="db", start=lambda: None, labels={"tier": "data"})
    cache = Service(name="cache", start=lambda: None, labels={"tier": "data"})
    api = Service(name="api", start=lambda: None, labels={"tier": "web"})
    manager = manager_of(db, cache, api)
    assert manager.get_service("db") is db and manager.get_service("nope") is None
    assert manager.get_services_by_label("tier", "data") == [db, cache]
    assert manager.get_services_by_label("tier", "web") == [api]
    assert manager.get_services_by_label("tier", "none") == []
    assert list(manager.service_map) == ["db", "cache", "api"]
    with pytest.raises(TypeError):
        manager.service_map["x"] = db  # type: ignore[index]


def test_remove_service_unregisters_a_stopped_service() -> None:
    db = Service(name="db", start=lambda: None)
    manager = manager_of(db)
    manager.remove_service("db")
    assert manager.get_service("db") is None and not manager.service_map
    ServiceManager().add_service(db)  # free to join another manager


def test_remove_service_of_an_unknown_name_raises_service_not_found() -> None:
    with pytest.raises(ServiceNotFoundError, match="no service named 'x'") as caught:
        ServiceManager().remove_service("x")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, TaskbufferError)


def test_remove_service_refuses_a_dependency_of_others() -> None:
    manager = manager_of(
        Service(name="db", start=lambda: None),
        Service(name="api", start=lambda: None, depends_on=["db"]),
    )
    with pytest.raises(ValueError, match="cannot remove service 'db': 'api' depend"):
        manager.remove_service("db")
    manager.remove_service("api")
    manager.remove_service("db")


async def test_remove_service_refuses_a_running_one_and_takes_a_failed_one(life: Lifecycle) -> None:
    manager = manager_of(life.service("db"), life.service("bad", fail_starts=[1]))
    await start_quietly(manager)
    with pytest.raises(RuntimeError, match="cannot remove service 'db' while it is running"):
        manager.remove_service("db")
    manager.remove_service("bad")
    assert list(manager.service_map) == ["db"]
    await manager.stop()


async def test_waiting_for_a_removed_service_raises_service_not_found() -> None:
    manager = manager_of(Service(name="db", start=lambda: None))
    waiting = asyncio.ensure_future(manager.wait_for_running("db"))
    await asyncio.sleep(0)
    manager.remove_service("db")
    async with asyncio.timeout(LIMIT):
        with pytest.raises(ServiceNotFoundError):
            await waiting


# ------------------------------------------------------------------------------ start


async def test_start_follows_the_dependency_order(life: Lifecycle) -> None:
    # api -> (db, cache), db -> config; each start takes 1 s
    manager = manager_of(
        life.service("api", depends_on=["db", "cache"], start_time=1),
        life.service("db", depends_on=["config"], start_time=1),
        life.service("cache", start_time=1),
        life.service("config", start_time=1),
    )
    async with asyncio.timeout(LIMIT):
        await manager.start()
    assert life.at("start") == {"cache": 0, "config": 0, "db": 1, "api": 2}
    assert life.at("started") == {"cache": 1, "config": 1, "db": 2, "api": 3}
    assert states(manager) == dict.fromkeys(["api", "db", "cache", "config"], "running")
    assert now() == 3
    await manager.stop()


async def test_independent_services_start_concurrently(life: Lifecycle) -> None:
    manager = manager_of(*(life.service(f"s{i}", start_time=2) for i in range(5)))
    async with asyncio.timeout(LIMIT):
        await manager.start()
    assert now() == 2  # not 10
    assert set(life.at("start").values()) == {0}
    await manager.stop()


async def test_a_dependant_starts_as_soon_as_its_own_dependencies_run(life: Lifecycle) -> None:
    manager = manager_of(
        life.service("slow", start_time=10),
        life.service("fast", start_time=1),
        life.service("user", depends_on=["fast"], start_time=1),
    )
    async with asyncio.timeout(LIMIT):
        await manager.start()
    assert life.at("start")["user"] == 1  # does not wait for "slow"
    assert life.at("started") == {"fast": 1, "user": 2, "slow": 10}
    await manager.stop()


async def test_an_unknown_dependency_raises_naming_it_before_anything_starts(
    life: Lifecycle,
) -> None:
    manager = manager_of(life.service("db"), life.service("api", depends_on=["db", "cahce"]))
    with pytest.raises(ValueError, match="'api' depends on 'cahce', which is not registered"):
        await manager.start()
    assert life.log == [] and not manager.started
    assert states(manager) == {"db": "stopped", "api": "stopped"}


async def test_a_dependency_cycle_raises_naming_it_before_anything_starts(
    life: Lifecycle,
) -> None:
    manager = manager_of(
        life.service("free"),
        life.service("a", depends_on=["b"]),
        life.service("b", depends_on=["c"]),
        life.service("c", depends_on=["a"]),
    )
    with pytest.raises(ValueError, match="in a cycle: 'a' -> 'b' -> 'c' -> 'a'"):
        await manager.start()
    assert life.log == [] and not manager.started


async def test_a_long_dependency_chain_is_checked_without_recursion(life: Lifecycle) -> None:
    services = [life.service("s0")]
    services += [life.service(f"s{i}", depends_on=[f"s{i - 1}"]) for i in range(1, 3000)]
    manager = manager_of(*services)
    async with asyncio.timeout(LIMIT):
        await manager.start()
        assert life.what("started") == [f"s{i}" for i in range(3000)]
        await manager.stop()
    assert life.what("stop") == [f"s{i}" for i in reversed(range(3000))]


async def test_a_failing_start_skips_its_dependants_and_starts_the_rest(
    life: Lifecycle, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    manager = manager_of(
        life.service("db", start_time=1, fail_starts=[1]),
        life.service("api", depends_on=["db"]),
        life.service("worker", depends_on=["api"]),
        life.service("cache", start_time=2),
        life.service("web", depends_on=["cache"]),
    )
    events = subscribe(manager)
    error = await start_quietly(manager)
    assert error is not None
    assert states(manager) == {
        "db": "failed",
        "api": "stopped",
        "worker": "stopped",
        "cache": "running",
        "web": "running",
    }
    assert set(life.at("start")) == {"db", "cache", "web"}
    assert isinstance(manager.get_service("db").last_error, ConnectionError)  # type: ignore[union-attr]
    assert ("db", "failed") in trail(events)
    assert not [e for e in events if e.service.name in ("api", "worker")]
    await manager.stop()


async def test_service_start_error_lists_every_failed_service_and_not_the_skipped(
    life: Lifecycle,
) -> None:
    manager = manager_of(
        life.service("db", fail_starts=[1]),
        life.service("queue", start_time=1, fail_starts=[1]),
        life.service("api", depends_on=["db"]),
        life.service("ok"),
    )
    error = await start_quietly(manager)
    assert error is not None
    assert isinstance(error, TaskbufferError) and isinstance(error, RuntimeError)
    assert set(error.failed) == {"db", "queue"}
    assert str(error.failed["db"]) == "db start 1 refused"
    assert str(error) == (
        "2 services failed to start: 'db': ConnectionError: db start 1 refused; "
        "'queue': ConnectionError: queue start 1 refused"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert set(copy.failed) == {"db", "queue"}
    await manager.stop()


async def test_a_start_past_its_timeout_fails_at_that_instant(life: Lifecycle) -> None:
    manager = manager_of(
        life.service("own", start_time=100, start_timeout=3),
        life.service("default", start_time=100),
        life.service("unlimited", start_time=8, start_timeout=math.inf),
        life.service("after", depends_on=["own"]),
        start_timeout=5,
    )
    failed_at: dict[str, float] = {}

    def on_event(event: ServiceEvent) -> None:
        if event.type == "failed":
            failed_at[event.service.name] = now()

    manager.service_subject.subscribe(on_event)
    error = await start_quietly(manager)
    assert error is not None and set(error.failed) == {"own", "default"}
    assert failed_at == {"own": 3, "default": 5}
    assert isinstance(error.failed["own"], TimeoutError)
    assert str(error.failed["own"]) == "service 'own' did not start within 3 s"
    assert manager.get_service("unlimited").state == "running"  # type: ignore[union-attr]
    assert "after" not in life.at("start")
    assert now() == 8
    await manager.stop()


async def test_a_start_that_raises_timeout_error_itself_keeps_its_error() -> None:
    def start() -> None:
        raise TimeoutError("upstream timed out")

    manager = manager_of(Service(name="s", start=start, start_timeout=5))
    error = await start_quietly(manager)
    assert error is not None and str(error.failed["s"]) == "upstream timed out"


async def test_plain_function_callbacks_work_too() -> None:
    log: list[str] = []
    manager = manager_of(
        Service(
            name="s",
            start=lambda: "instance",
            stop=lambda instance: log.append(f"stop {instance}"),
            health_check=lambda instance: instance == "instance",
            health_interval=1,
        )
    )
    async with asyncio.timeout(LIMIT):
        await manager.start()
        await asyncio.sleep(2.5)
        assert manager.get_service("s").last_health_check is not None  # type: ignore[union-attr]
        await manager.stop()
    assert log == ["stop instance"]


async def test_a_cancelled_start_cancels_the_starts_in_flight_and_can_be_stopped(
    life: Lifecycle,
) -> None:
    manager = manager_of(
        life.service("fast", start_time=1),
        life.service("slow", start_time=10),
        life.service("after", depends_on=["slow"]),
    )
    starting = asyncio.ensure_future(manager.start())
    await asyncio.sleep(2)
    starting.cancel()
    async with asyncio.timeout(LIMIT):
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert states(manager) == {"fast": "running", "slow": "stopped", "after": "stopped"}
        assert left_over()[0] == set()  # no start left behind
        await manager.stop()
    assert life.what("stopped") == ["fast"]
    assert not is_started(manager)


async def test_start_twice_raises(life: Lifecycle) -> None:
    manager = manager_of(life.service("db"))
    await start_quietly(manager)
    with pytest.raises(RuntimeError, match="the ServiceManager is already running"):
        await manager.start()
    await manager.stop()


async def test_a_service_may_start_to_none(life: Lifecycle) -> None:
    log: list[object] = []
    manager = manager_of(Service(name="s", start=lambda: None, stop=log.append))
    async with manager:
        assert manager.get_service("s").state == "running"  # type: ignore[union-attr]
    assert log == [None]  # stopped, although its instance is None


async def test_async_with_starts_and_stops(life: Lifecycle) -> None:
    manager = manager_of(life.service("db"), life.service("api", depends_on=["db"]))
    async with asyncio.timeout(LIMIT):
        async with manager as entered:
            assert entered is manager and is_started(manager)
            assert states(manager) == {"db": "running", "api": "running"}
    assert not is_started(manager)
    assert life.what("stopped") == ["api", "db"]


async def test_async_with_stops_what_started_when_start_fails(life: Lifecycle) -> None:
    manager = manager_of(life.service("db"), life.service("bad", fail_starts=[1]))
    async with asyncio.timeout(LIMIT):
        with pytest.raises(ServiceStartError):
            async with manager:
                pytest.fail("the body must not run")  # pragma: no cover
    assert not manager.started
    assert states(manager) == {"db": "stopped", "bad": "failed"}
    assert life.what("stopped") == ["db"]


# ------------------------------------------------------------------------------- stop


async def test_stop_goes_in_reverse_dependency_order(life: Lifecycle) -> None:
    # api -> (db, cache), db -> config; each stop takes 1 s
    manager = manager_of(
        life.service("config", stop_time=1),
        life.service("db", depends_on=["config"], stop_time=1),
        life.service("cache", stop_time=1),
        life.service("api", depends_on=["db", "cache"], stop_time=1),
    )
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.stop()
    assert life.at("stop") == {"api": 0, "db": 1, "cache": 1, "config": 2}
    assert now() == 3
    assert states(manager) == dict.fromkeys(["config", "db", "cache", "api"], "stopped")
    assert not manager.started


async def test_a_stop_callback_that_raises_is_logged_and_the_others_still_stop(
    life: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    manager = manager_of(
        life.service("db"),
        life.service("api", depends_on=["db"], stop_error=OSError("socket gone")),
        life.service("cache"),
    )
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.stop()  # does not raise
    assert states(manager) == {"db": "stopped", "api": "stopped", "cache": "stopped"}
    assert set(life.what("stopped")) == {"db", "cache"}
    errors = [r for r in caplog.records if r.name == "taskbuffer" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["stopping service 'api' raised"]
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], OSError)


async def test_a_hanging_stop_is_cut_at_its_stop_timeout(
    life: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    manager = manager_of(
        life.service("db", stop_time=1),
        life.service("api", depends_on=["db"], stop_time=math.inf, stop_timeout=4),
        life.service("worker", stop_time=math.inf),
        stop_timeout=6,
    )
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.stop()
    assert life.at("stop") == {"api": 0, "worker": 0, "db": 4}  # db after api was cut at 4
    assert now() == 6  # worker cut at the manager's default
    assert states(manager) == dict.fromkeys(["db", "api", "worker"], "stopped")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert messages == [
        "stopping service 'api' took longer than its stop timeout (4 s); cut short",
        "stopping service 'worker' took longer than its stop timeout (6 s); cut short",
    ]


async def test_stop_without_start_and_twice(life: Lifecycle) -> None:
    manager = manager_of(life.service("db"))
    await manager.stop()
    await start_quietly(manager)
    await manager.stop()
    await manager.stop()
    assert life.what("stop") == ["db"]


async def test_stop_during_start_waits_for_the_start_then_stops_everything(
    life: Lifecycle,
) -> None:
    manager = manager_of(
        life.service("db", start_time=2), life.service("api", depends_on=["db"], start_time=2)
    )
    starting = asyncio.ensure_future(manager.start())
    await asyncio.sleep(1)
    async with asyncio.timeout(LIMIT):
        await manager.stop()
        await starting
    assert now() == 4
    assert states(manager) == {"db": "stopped", "api": "stopped"}
    assert not manager.started


async def test_nothing_is_left_running_after_stop(life: Lifecycle) -> None:
    flaky = Health(False, False)
    manager = manager_of(
        life.service("db", health_check=flaky, health_interval=1, unhealthy_threshold=2),
        life.service("api", depends_on=["db"], health_check=Health(), health_interval=0.5),
        life.service("slow", health_check=Health(10.0), health_interval=1, health_timeout=20),
    )
    await start_quietly(manager)
    await asyncio.sleep(2.5)  # db is unhealthy, waiting to restart; slow's check is running
    assert manager.get_service("db").state == "unhealthy"  # type: ignore[union-attr]
    async with asyncio.timeout(LIMIT):
        await manager.stop()
    tasks, timers = left_over()
    assert tasks == set() and timers == []
    checks = len(flaky.calls)
    await asyncio.sleep(100)
    assert len(flaky.calls) == checks  # no more health checks


# ----------------------------------------------------------------------------- health


async def test_health_checks_run_every_interval_while_running(life: Lifecycle) -> None:
    health = Health()
    manager = manager_of(life.service("db", start_time=0.5, health_check=health, health_interval=2))
    await start_quietly(manager)
    await asyncio.sleep(7)
    assert health.calls == [2.5, 4.5, 6.5]
    db = manager.get_service("db")
    assert db is not None and isinstance(db.last_health_check, datetime)
    assert db.last_health_check.tzinfo is not None
    await manager.stop()


async def test_the_threshold_counts_failures_in_a_row_only(
    life: Lifecycle, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    health = Health(False, False, True, False, False, False)
    manager = manager_of(
        life.service("db", health_check=health, health_interval=1, unhealthy_threshold=3)
    )
    events = subscribe(manager)
    await start_quietly(manager)
    await manager.wait_for_state("db", "unhealthy", timeout=LIMIT)
    assert now() == 6  # not 5: the success at 3 reset the count
    unhealthy = [e for e in events if e.type == "unhealthy"]
    assert unhealthy[0].error == (
        "service 'db' failed 3 health checks in a row; the last returned False"
    )
    await manager.stop()


async def test_a_check_that_raises_or_takes_too_long_counts_as_failed(life: Lifecycle) -> None:
    health = Health(RuntimeError("ping refused"), 100.0)
    db = life.service(
        "db", health_check=health, health_interval=1, health_timeout=3, unhealthy_threshold=2
    )
    manager = manager_of(db)
    await start_quietly(manager)
    await manager.wait_for_state("db", "unhealthy", timeout=LIMIT)
    assert health.calls == [1, 2]
    assert now() == 5  # the second check was cut at 2 + 3
    assert isinstance(db.last_error, ServiceHealthCheckError)
    assert (
        str(db.last_error)
        == "service 'db' failed 2 health checks in a row; the last took longer than 3 s"
    )
    assert db.last_error.failures == 2
    await manager.stop()


async def test_the_health_timeout_defaults_to_the_interval(life: Lifecycle) -> None:
    db = life.service("db", health_check=Health(100.0), health_interval=4, unhealthy_threshold=1)
    manager = manager_of(db)
    await start_quietly(manager)
    await manager.wait_for_state("db", "unhealthy", timeout=LIMIT)
    assert now() == 8
    assert "took longer than 4 s" in str(db.last_error)
    await manager.stop()


async def test_the_last_check_error_is_the_cause(life: Lifecycle) -> None:
    cause = RuntimeError("ping refused")
    db = life.service("db", health_check=Health(cause), health_interval=1, unhealthy_threshold=1)
    manager = manager_of(db)
    await start_quietly(manager)
    await manager.wait_for_state("db", "unhealthy", timeout=LIMIT)
    assert db.last_error is not None and db.last_error.__cause__ is cause
    assert "the last raised RuntimeError: ping refused" in str(db.last_error)
    await manager.stop()


async def test_an_unhealthy_service_is_restarted_after_the_delay_and_recovers(
    life: Lifecycle, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    health = Health(False, False, False)
    db = life.service(
        "db",
        start_time=1,
        health_check=health,
        health_interval=2,
        unhealthy_threshold=3,
        restart_delay=5,
    )
    manager = manager_of(db)
    events = subscribe(manager)
    await start_quietly(manager)
    await asyncio.sleep(30)
    # started at 1; failed checks at 3, 5, 7 -> unhealthy at 7; restarted at 7 + 5
    times = {e.type: e.timestamp - events[0].timestamp for e in events[2:]}
    assert trail(events) == [
        ("db", "starting"),
        ("db", "running"),
        ("db", "unhealthy"),
        ("db", "restarting"),
        ("db", "running"),
    ]
    assert times == {"unhealthy": 7, "restarting": 12, "running": 13}
    assert life.log[2:] == [
        (12, "stop", "db"),
        (12, "stopped", "db"),
        (12, "start", "db"),
        (13, "started", "db"),
    ]
    assert db.state == "running" and db.restart_count == 1 and db.instance == "db#2"
    assert health.calls == [3, 5, 7, 15, 17, 19, 21, 23, 25, 27, 29]  # healthy again
    assert events[-1].service.restart_count == 1
    await manager.stop()


async def test_restart_delays_grow_by_the_backoff_up_to_the_max_delay(
    life: Lifecycle, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    db = life.service(
        "db",
        health_check=lambda instance: False,
        health_interval=1,
        unhealthy_threshold=1,
        restart_delay=1,
        restart_backoff=3,
        restart_max_delay=10,
    )
    manager = manager_of(db)
    events = subscribe(manager)
    await start_quietly(manager)
    await asyncio.sleep(60)
    unhealthy = [e.timestamp for e in events if e.type == "unhealthy"]
    restarting = [e.timestamp for e in events if e.type == "restarting"]
    delays = [r - u for u, r in zip(unhealthy, restarting, strict=False)]
    assert delays[:5] == [1, 3, 9, 10, 10]
    await manager.stop()


async def test_past_max_restarts_the_service_is_failed(
    life: Lifecycle, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    health = Health(*[False] * 100)
    db = life.service(
        "db",
        health_check=health,
        health_interval=1,
        unhealthy_threshold=1,
        restart_delay=2,
        restart_backoff=1,
        max_restarts=2,
    )
    manager = manager_of(db)
    events = subscribe(manager)
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.wait_for_state("db", "failed")
    assert trail(events)[1:] == [
        ("db", "running"),
        ("db", "unhealthy"),
        ("db", "restarting"),
        ("db", "running"),
        ("db", "unhealthy"),
        ("db", "restarting"),
        ("db", "running"),
        ("db", "unhealthy"),
        ("db", "stopping"),
        ("db", "failed"),
    ]
    assert now() == 7  # unhealthy at 1, 4, 7; restarts at 3 and 6
    assert db.restart_count == 2 and db.instance is None
    assert life.what("stopped") == ["db", "db", "db"]  # each instance was stopped
    assert isinstance(db.last_error, ServiceHealthCheckError)
    assert events[-1].error == str(db.last_error)
    checks = len(health.calls)
    await asyncio.sleep(50)
    assert len(health.calls) == checks and db.state == "failed"
    await manager.stop()
    assert db.state == "failed"


async def test_with_restart_never_an_unhealthy_service_fails_and_stays_failed(
    life: Lifecycle, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    db = life.service(
        "db", health_check=Health(False), health_interval=1, unhealthy_threshold=1, restart="never"
    )
    manager = manager_of(db)
    events = subscribe(manager)
    await start_quietly(manager)
    await asyncio.sleep(100)
    assert trail(events)[2:] == [("db", "unhealthy"), ("db", "stopping"), ("db", "failed")]
    assert db.state == "failed" and db.restart_count == 0
    assert life.what("start") == ["db"]
    await manager.stop()


async def test_a_restart_stops_dependants_first_and_starts_them_again_after(
    life: Lifecycle,
) -> None:
    db = life.service(
        "db", health_check=Health(False), health_interval=1, unhealthy_threshold=1, restart_delay=1
    )
    manager = manager_of(
        db,
        life.service("api", depends_on=["db"], start_time=1),
        life.service("worker", depends_on=["api"]),
        life.service("other"),
    )
    await start_quietly(manager)
    del life.log[:]
    await asyncio.sleep(10)
    # db's start at 0, api's running at 1; db unhealthy at 1, restarted at 2
    assert [
        (t, what, name) for t, what, name in life.log if what in ("stop", "start", "started")
    ] == [
        (2, "stop", "worker"),
        (2, "stop", "api"),
        (2, "stop", "db"),
        (2, "start", "db"),
        (2, "started", "db"),
        (2, "start", "api"),
        (3, "started", "api"),
        (3, "start", "worker"),
        (3, "started", "worker"),
    ]
    assert states(manager) == dict.fromkeys(["db", "api", "worker", "other"], "running")
    await manager.stop()


async def test_a_failed_restart_is_tried_again_after_the_next_delay(
    life: Lifecycle, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    db = life.service(
        "db",
        fail_starts=[2, 3],
        health_check=Health(False),
        health_interval=1,
        unhealthy_threshold=1,
        restart_delay=1,
        restart_backoff=2,
    )
    manager = manager_of(db, life.service("api", depends_on=["db"]))
    events = subscribe(manager)
    await start_quietly(manager)
    await asyncio.sleep(20)
    restarting = [
        (e.timestamp - events[0].timestamp, e.error)
        for e in trail_events(events, "db", "restarting")
    ]
    # unhealthy at 1; attempt 1 at 2 fails; attempt 2 at 2 + 2 fails; attempt 3 at 4 + 4
    assert [t for t, _ in restarting] == [2, 4, 8]
    assert restarting[1][1] == "db start 2 refused" and restarting[2][1] == "db start 3 refused"
    assert db.state == "running" and db.restart_count == 3
    assert life.at("started")["api"] == 8
    assert manager.get_service("api").state == "running"  # type: ignore[union-attr]
    await manager.stop()


def trail_events(events: list[ServiceEvent], name: str, kind: str) -> list[ServiceEvent]:
    return [e for e in events if e.service.name == name and e.type == kind]


async def test_a_failed_dependency_leaves_its_dependants_stopped(life: Lifecycle) -> None:
    db = life.service(
        "db", health_check=Health(False), health_interval=1, unhealthy_threshold=1, restart="never"
    )
    manager = manager_of(db, life.service("api", depends_on=["db"]), life.service("other"))
    await start_quietly(manager)
    await asyncio.sleep(10)
    assert states(manager) == {"db": "failed", "api": "stopped", "other": "running"}
    assert life.what("stopped") == ["api", "db"]
    await manager.stop()


def pair(life: Lifecycle, a_checks: Sequence[bool], b_checks: Sequence[bool]) -> ServiceManager:
    a = life.service(
        "a",
        health_check=Health(*a_checks),
        health_interval=1,
        unhealthy_threshold=1,
        restart_delay=1,
    )
    b = life.service(
        "b",
        health_check=Health(*b_checks),
        health_interval=1,
        unhealthy_threshold=1,
        restart_delay=5,
    )
    return manager_of(a, b, life.service("both", depends_on=["a", "b"]))


async def test_a_dependant_of_two_services_is_restarted_with_each(life: Lifecycle) -> None:
    # a: unhealthy at 1, restarted at 2; b: unhealthy at 3, restarted at 8
    manager = pair(life, [False], [True, True, False])
    await start_quietly(manager)
    await asyncio.sleep(20)
    starts = [t for t, what, name in life.log if name == "both" and what == "started"]
    assert starts == [0, 2, 8]
    assert states(manager) == dict.fromkeys(["a", "b", "both"], "running")
    await manager.stop()


async def test_a_dependant_waits_for_every_dependency_to_run_again(life: Lifecycle) -> None:
    # b: unhealthy at 1, restarted at 6; a: unhealthy at 2, restarted at 3, when b is still
    # unhealthy: "both" stays stopped until b's restart starts it
    manager = pair(life, [True, False], [False])
    await start_quietly(manager)
    await asyncio.sleep(20)
    assert life.at("stop")["both"] == 3
    starts = [t for t, what, name in life.log if name == "both" and what == "started"]
    assert starts == [0, 6]
    assert states(manager) == dict.fromkeys(["a", "b", "both"], "running")
    await manager.stop()


async def test_start_resets_restart_counts_and_errors(life: Lifecycle) -> None:
    db = life.service(
        "db", health_check=Health(False), health_interval=1, unhealthy_threshold=1, restart_delay=1
    )
    manager = manager_of(db)
    await start_quietly(manager)
    await asyncio.sleep(2.5)
    assert db.restart_count == 1 and db.last_error is not None
    await manager.stop()
    await start_quietly(manager)
    assert db.get_metadata().restart_count == 0 and db.get_metadata().last_error is None
    assert db.get_metadata().state == "running"
    await manager.stop()


# --------------------------------------------------------------------- wait_for_state


async def test_wait_for_state_returns_at_once_when_already_there(life: Lifecycle) -> None:
    manager = manager_of(life.service("db"))
    await manager.wait_for_stopped("db", timeout=0)
    await start_quietly(manager)
    await manager.wait_for_running("db", timeout=0)
    await manager.wait_for_state("db", "running")
    assert now() == 0
    await manager.stop()


async def test_wait_for_state_returns_at_the_instant_the_state_is_entered(
    life: Lifecycle,
) -> None:
    manager = manager_of(life.service("db", start_time=4, stop_time=2))
    starting = asyncio.ensure_future(manager.start())
    async with asyncio.timeout(LIMIT):
        await manager.wait_for_running("db")
        assert now() == 4
        await starting
        stopping = asyncio.ensure_future(manager.stop())
        await manager.wait_for_state("db", "stopping")  # passed through, caught anyway
        assert now() == 4
        await manager.wait_for_stopped("db", timeout=10)
        assert now() == 6
        await stopping


async def test_wait_for_state_raises_timeout_error_when_the_timeout_passes_first(
    life: Lifecycle,
) -> None:
    manager = manager_of(life.service("db", start_time=10))
    starting = asyncio.ensure_future(manager.start())
    with pytest.raises(TimeoutError, match="service 'db' did not become 'running' within 3 s"):
        await manager.wait_for_running("db", timeout=3)
    assert now() == 3
    async with asyncio.timeout(LIMIT):
        await starting
    await manager.stop()


async def test_wait_for_state_checks_its_arguments() -> None:
    manager = manager_of(Service(name="db", start=lambda: None))
    with pytest.raises(ServiceNotFoundError):
        await manager.wait_for_state("nope", "running")
    with pytest.raises(ValueError, match="state must be one of 'stopped', 'starting'"):
        await manager.wait_for_state("db", "up")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="timeout must be a number of seconds >= 0, math.inf or None"
    ):
        await manager.wait_for_running("db", timeout=-1)


# ------------------------------------------------------------------ statistics, events


async def test_statistics_count_the_services_in_each_state(life: Lifecycle) -> None:
    manager = manager_of(
        life.service("a"),
        life.service("b", fail_starts=[1]),
        life.service("c", depends_on=["b"]),
        life.service("d", start_time=5),
    )
    assert manager.statistics() == ServiceManagerStatistics(
        services=4,
        stopped=4,
        starting=0,
        running=0,
        unhealthy=0,
        restarting=0,
        stopping=0,
        failed=0,
    )
    starting = asyncio.ensure_future(start_quietly(manager))
    await asyncio.sleep(1)
    stats = manager.statistics()
    assert (stats.running, stats.failed, stats.stopped, stats.starting) == (1, 1, 1, 1)
    assert (
        repr(manager)
        == "<ServiceManager starting services=4 stopped=1 starting=1 running=1 failed=1>"
    )
    await starting
    assert manager.statistics().to_dict() == {
        "services": 4,
        "stopped": 1,
        "starting": 0,
        "running": 2,
        "unhealthy": 0,
        "restarting": 0,
        "stopping": 0,
        "failed": 1,
    }
    await manager.stop()
    assert repr(manager) == "<ServiceManager stopped services=4 stopped=3 failed=1>"


async def test_events_carry_a_snapshot_taken_when_emitted(
    life: Lifecycle, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    manager = manager_of(
        life.service("db", start_time=2, labels={"tier": "data"}),
        life.service("api", depends_on=["db"], fail_starts=[1]),
    )
    events = subscribe(manager)
    await start_quietly(manager)
    await manager.stop()
    assert trail(events) == [
        ("db", "starting"),
        ("db", "running"),
        ("api", "starting"),
        ("api", "failed"),
        ("db", "stopping"),
        ("db", "stopped"),
    ]
    starting, running, _, failed, stopping, stopped = events
    assert [e.service.state for e in events] == [e.type for e in events]
    assert starting.service.started_at is None and running.service.started_at is not None
    assert running.service == ServiceMetadata(
        name="db",
        state="running",
        labels={"tier": "data"},
        depends_on=(),
        restart_count=0,
        last_error=None,
        last_health_check=None,
        started_at=running.service.started_at,
    )
    assert running.timestamp - starting.timestamp == 2
    assert abs(running.service.started_at.timestamp() - running.timestamp) < 1e-6
    assert (
        failed.error == "api start 1 refused" and failed.service.last_error == "api start 1 refused"
    )
    assert failed.service.depends_on == ("db",)
    assert stopped.service.started_at is None and stopping.error is None
    with pytest.raises(FrozenInstanceError):
        failed.error = "x"  # type: ignore[misc]
    as_dict = running.to_dict()
    assert as_dict["type"] == "running" and as_dict["error"] is None
    assert as_dict["service"]["depends_on"] == [] and as_dict["service"]["labels"] == {
        "tier": "data"
    }
    assert as_dict["service"]["started_at"] == running.service.started_at.isoformat()
    assert failed.to_dict()["service"]["last_health_check"] is None


async def test_a_raising_subscriber_breaks_neither_the_manager_nor_other_subscribers(
    life: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    manager = manager_of(life.service("db"))

    def broken(event: ServiceEvent) -> None:
        raise RuntimeError("subscriber bug")

    seen: list[str] = []
    manager.service_subject.subscribe(broken)
    manager.service_subject.subscribe(lambda e: seen.append(e.type))
    async with asyncio.timeout(LIMIT):
        await manager.start()
        await manager.stop()
    assert seen == ["starting", "running", "stopping", "stopped"]
    messages = {r.getMessage() for r in caplog.records if r.levelno == logging.ERROR}
    assert "an event subscriber raised on a 'running' event of service 'db'" in messages


# ------------------------------------------------------------------------------ loops


MODULE_LOG: list[str] = []


def _build() -> ServiceManager:
    async def open_pool() -> str:
        await asyncio.sleep(0.1)
        MODULE_LOG.append("open")
        return "pool"

    pool = Service(
        name="pool",
        start=open_pool,
        stop=lambda instance: MODULE_LOG.append("close"),
        health_check=lambda instance: True,
        health_interval=0.05,
    )
    return manager_of(pool, Service(name="user", start=lambda: "user", depends_on=["pool"]))


BUILT_OUTSIDE_A_LOOP = _build()


def test_objects_built_outside_a_loop_work_in_one_loop_after_another() -> None:
    manager = BUILT_OUTSIDE_A_LOOP

    async def use() -> None:
        async with asyncio.timeout(5):
            async with manager:
                await asyncio.sleep(0.12)
                await manager.wait_for_running("user", timeout=1)
                assert manager.get_service("pool").last_health_check is not None  # type: ignore[union-attr]
        assert left_over() == (set(), [])

    MODULE_LOG.clear()
    asyncio.run(use())
    asyncio.run(use())
    assert MODULE_LOG == ["open", "close", "open", "close"]


def test_a_manager_left_running_when_its_loop_ended_starts_again_in_the_next() -> None:
    manager = _build()

    async def start_only() -> None:
        await manager.start()

    async def start_and_stop() -> None:
        assert manager.started  # as far as it knows
        await manager.start()
        assert states(manager) == {"pool": "running", "user": "running"}
        await manager.stop()

    asyncio.run(start_only())
    asyncio.run(start_and_stop())


# ------------------------------------------------------------- tasks needing services


def needs(name: str, requires: str, log: list[float] | None = None) -> Task[str]:
    async def work() -> str:
        if log is not None:
            log.append(now())
        return f"{name} done"

    return Task(name=name, task_function=work, labels={"requires": requires})


async def test_a_task_needing_a_service_waits_until_it_is_running(life: Lifecycle) -> None:
    services = manager_of(life.service("db", start_time=5))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    ran: list[float] = []
    starting = asyncio.ensure_future(services.start())
    await asyncio.sleep(1)
    async with asyncio.timeout(LIMIT):
        assert await tasks.trigger_task(needs("report", "db", ran)) == "report done"
        await starting
    assert ran == [5]
    await services.stop()


async def test_a_task_needing_a_running_service_runs_at_once(life: Lifecycle) -> None:
    services = manager_of(life.service("db"))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    await start_quietly(services)
    ran: list[float] = []
    async with asyncio.timeout(LIMIT):
        await tasks.trigger_task(needs("report", "db", ran))
    assert ran == [0]
    await services.stop()


async def test_tasks_without_the_label_are_not_affected(life: Lifecycle) -> None:
    services = manager_of(life.service("db"))  # never started
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    plain = Task(name="plain", task_function=lambda: "ok")
    other = Task(name="other", task_function=lambda: "ok", labels={"team": "db"})
    async with asyncio.timeout(LIMIT):
        assert await tasks.trigger_task(plain) == "ok"
        assert await tasks.trigger_task(other) == "ok"


async def test_a_task_needing_a_failed_service_fails_clearly(
    life: Lifecycle, record: Callable[[Task[Any, Any]], list[TaskEvent]]
) -> None:
    services = manager_of(life.service("db", fail_starts=[1]))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    await start_quietly(services)
    task = needs("report", "db")
    events = record(task)
    with pytest.raises(ServiceUnavailableError) as caught:
        await tasks.trigger_task(task)
    assert str(caught.value) == "service 'db' is not available: it failed: db start 1 refused"
    assert caught.value.service_name == "db"
    assert isinstance(caught.value, TaskbufferError) and isinstance(caught.value, RuntimeError)
    assert [e.type for e in events] == ["failed"]
    assert events[0].error == str(caught.value)
    await services.stop()


async def test_a_task_waiting_for_a_service_fails_when_its_start_fails(life: Lifecycle) -> None:
    services = manager_of(life.service("db", start_time=3, fail_starts=[1]))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    starting = asyncio.ensure_future(start_quietly(services))
    await asyncio.sleep(1)
    with pytest.raises(ServiceUnavailableError, match="it failed"):
        await tasks.trigger_task(needs("report", "db"))
    assert now() == 3
    await starting
    await services.stop()


async def test_a_task_needing_a_service_skipped_for_a_failed_dependency_fails(
    life: Lifecycle,
) -> None:
    services = manager_of(
        life.service("db", fail_starts=[1]), life.service("consumer", depends_on=["db"])
    )
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    await start_quietly(services)
    with pytest.raises(ServiceUnavailableError, match="it depends on service 'db', which failed"):
        await tasks.trigger_task(needs("report", "consumer"))
    await services.stop()


async def test_a_task_needing_a_service_of_a_stopped_manager_fails(life: Lifecycle) -> None:
    services = manager_of(life.service("db"))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    with pytest.raises(ServiceUnavailableError, match="the ServiceManager is stopped"):
        await tasks.trigger_task(needs("report", "db"))


async def test_a_waiting_task_fails_when_the_service_manager_stops(life: Lifecycle) -> None:
    db = life.service(
        "db", health_check=Health(False), health_interval=1, unhealthy_threshold=1, restart_delay=50
    )
    services = manager_of(db)
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    await start_quietly(services)
    await services.wait_for_state("db", "unhealthy", timeout=LIMIT)
    waiting = asyncio.ensure_future(tasks.trigger_task(needs("report", "db")))
    await asyncio.sleep(3)
    assert not waiting.done()
    await services.stop()
    async with asyncio.timeout(LIMIT):
        with pytest.raises(ServiceUnavailableError, match="the ServiceManager is stopping"):
            await waiting


async def test_a_task_waits_while_a_dependency_is_unhealthy_or_restarting(
    life: Lifecycle,
) -> None:
    db = life.service(
        "db",
        health_check=Health(True, False),
        health_interval=2,
        unhealthy_threshold=1,
        restart_delay=4,
    )
    services = manager_of(db, life.service("consumer", depends_on=["db"], start_time=1))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    # consumer running at 1; db's checks at 2 (good) and 4 (bad): unhealthy at 4, restarted
    # at 8, which stops the consumer and starts it again, running at 9
    await start_quietly(services)
    ran: list[float] = []
    async with asyncio.timeout(LIMIT):
        await tasks.trigger_task(needs("report", "consumer", ran))
        await asyncio.sleep(4)
        assert (db.state, services.get_service("consumer").state) == ("unhealthy", "running")  # type: ignore[union-attr]
        await tasks.trigger_task(needs("report", "consumer", ran))
    assert ran == [1, 9]
    await services.stop()


async def test_a_task_needing_several_services_waits_for_all(life: Lifecycle) -> None:
    services = manager_of(life.service("db", start_time=2), life.service("cache", start_time=7))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    starting = asyncio.ensure_future(services.start())
    await asyncio.sleep(0)
    ran: list[float] = []
    async with asyncio.timeout(LIMIT):
        await tasks.trigger_task(needs("report", " db, cache ,", ran))
        await starting
    assert ran == [7]
    await services.stop()


async def test_the_wait_for_a_service_can_have_a_timeout(life: Lifecycle) -> None:
    services = manager_of(life.service("db", start_time=10))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group(timeout=4))
    starting = asyncio.ensure_future(services.start())
    await asyncio.sleep(0)
    with pytest.raises(
        ServiceUnavailableError, match="it was not running within 4 s \\(it is 'starting'\\)"
    ):
        await tasks.trigger_task(needs("report", "db"))
    assert now() == 4
    async with asyncio.timeout(LIMIT):
        await starting
    await services.stop()


async def test_a_task_needing_an_unknown_service_raises_service_not_found(
    life: Lifecycle,
) -> None:
    services = manager_of(life.service("db"))
    tasks = TaskManager()
    tasks.add_constraint_group(services.constraint_group())
    with pytest.raises(ServiceNotFoundError, match="'dbb'"):
        await tasks.trigger_task(needs("report", "dbb"))


async def test_the_group_takes_a_name_and_a_label(life: Lifecycle) -> None:
    services = manager_of(life.service("db"))
    group = services.constraint_group(name="needs-services", label="service")
    assert isinstance(group, TaskConstraintGroup) and group.name == "needs-services"
    tasks = TaskManager()
    tasks.add_constraint_group(group)
    task = Task(name="t", task_function=lambda: "ok", labels={"service": "db"})
    with pytest.raises(ServiceUnavailableError):
        await tasks.trigger_task(task)
    assert await tasks.trigger_task(needs("t2", "db")) == "t2 done"  # other label: unaffected
    with pytest.raises(ValueError, match="label must be a non-empty string"):
        services.constraint_group(label="")
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        services.constraint_group(timeout=0)


async def test_a_waiting_task_holds_its_slots_in_other_groups(life: Lifecycle) -> None:
    # The documented caveat: the wait happens in should_execute, after every group's slot
    # was taken, so a one-at-a-time group is held by the waiting trigger.
    services = manager_of(life.service("db", start_time=5))
    tasks = TaskManager()
    tasks.add_constraint_group(
        TaskConstraintGroup(
            name="one", constraint_key_for_execution=lambda t, x: "k", max_concurrent=1
        )
    )
    tasks.add_constraint_group(services.constraint_group())
    starting = asyncio.ensure_future(services.start())
    await asyncio.sleep(1)
    first = asyncio.ensure_future(tasks.trigger_task(needs("report", "db")))
    await asyncio.sleep(0)
    ran: list[float] = []

    async def plain() -> None:
        ran.append(now())

    async with asyncio.timeout(LIMIT):
        await tasks.trigger_task(Task(name="plain", task_function=plain))
        assert ran == [5]
        await first
        await starting
    await services.stop()


# ------------------------------------------------------- hostile callbacks and races


class Interrupt(BaseException):
    """A user's own BaseException subclass (neither an Exception nor a cancellation)."""


@pytest.mark.parametrize("error", [Interrupt("start broke"), asyncio.CancelledError()])
async def test_a_start_raising_a_base_exception_or_its_own_cancellation_is_a_failed_start(
    life: Lifecycle, error: BaseException
) -> None:
    async def broken() -> str:
        raise error

    manager = manager_of(
        Service(name="db", start=broken), life.service("api", depends_on=["db"]), life.service("x")
    )
    failure = await start_quietly(manager)
    assert failure is not None and list(failure.failed) == ["db"]
    assert failure.failed["db"] is error
    assert states(manager) == {"db": "failed", "api": "stopped", "x": "running"}
    await manager.stop()
    assert left_over() == (set(), [])


@pytest.mark.parametrize("error", [Interrupt("stop broke"), asyncio.CancelledError()])
async def test_a_stop_raising_a_base_exception_or_its_own_cancellation_is_logged(
    life: Lifecycle, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    manager = manager_of(
        life.service("db"), life.service("api", depends_on=["db"], stop_error=error)
    )
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.stop()  # does not raise, and still stops what api depends on
    assert states(manager) == {"db": "stopped", "api": "stopped"}
    assert life.what("stopped") == ["db"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["stopping service 'api' raised"]
    assert left_over() == (set(), [])


class Ambiguous:
    def __bool__(self) -> bool:
        raise ValueError("truth value is ambiguous")


@pytest.mark.parametrize(
    "outcome", [Interrupt("check broke"), asyncio.CancelledError(), "ambiguous"]
)
async def test_a_check_raising_anything_or_returning_an_unusable_verdict_counts_as_failed(
    life: Lifecycle, outcome: BaseException | str
) -> None:
    async def check(instance: str) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return Ambiguous()

    manager = manager_of(
        life.service(
            "db", health_check=check, health_interval=1, unhealthy_threshold=2, max_restarts=1
        )
    )
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.wait_for_state("db", "unhealthy")
        assert now() == 2
        await manager.wait_for_state("db", "failed")
    db = manager.get_service("db")
    assert db is not None and db.restart_count == 1
    assert isinstance(db.last_error, ServiceHealthCheckError)
    assert db.last_error.problem.startswith("raised ")
    await manager.stop()
    assert left_over() == (set(), [])


class Unprintable(Exception):
    def __str__(self) -> str:
        raise Interrupt("no str for you")


@pytest.mark.parametrize(
    ("error", "message"),
    [(ConnectionError(), "ConnectionError"), (Unprintable(), "<Unprintable object: str()")],
)
async def test_an_error_with_an_empty_or_raising_str_is_shown_by_its_type(
    error: Exception, message: str, subscribe: Callable[[ServiceManager], list[ServiceEvent]]
) -> None:
    async def broken() -> str:
        raise error

    manager = manager_of(Service(name="db", start=broken))
    events = subscribe(manager)
    failure = await start_quietly(manager)
    assert failure is not None and message in str(failure)
    assert events[-1].type == "failed"
    assert events[-1].error is not None and events[-1].error.startswith(message)
    metadata = manager.get_service("db").get_metadata()  # type: ignore[union-attr]
    assert metadata.last_error is not None and metadata.last_error.startswith(message)
    tasks = TaskManager()
    tasks.add_constraint_group(manager.constraint_group())
    with pytest.raises(ServiceUnavailableError, match=f"it failed: {message}"):
        await tasks.trigger_task(needs("report", "db"))
    await manager.stop()


async def test_stop_during_a_restart_lets_the_restart_finish_its_stops(
    life: Lifecycle,
) -> None:
    manager = manager_of(
        life.service("db", health_check=Health(False), health_interval=10, unhealthy_threshold=1),
        life.service("api", depends_on=["db"], stop_time=5),
    )
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.wait_for_state("api", "stopping")  # the restart at 11 stops api first
        assert now() == 11
        await asyncio.sleep(1)
        await manager.stop()
    assert life.at("stopped") == {"api": 16, "db": 16}  # api's stop was not cut short
    assert life.what("start") == ["db", "api"]  # nothing started again once stop() began
    assert states(manager) == {"db": "stopped", "api": "stopped"}
    assert left_over() == (set(), [])


async def test_remove_service_waits_for_a_restart_in_progress_to_end(life: Lifecycle) -> None:
    manager = manager_of(
        life.service(
            "db",
            health_check=Health(False),
            health_interval=10,
            unhealthy_threshold=1,
            start_time=3,
        ),
        life.service("api", depends_on=["db"]),
    )
    await start_quietly(manager)
    async with asyncio.timeout(LIMIT):
        await manager.wait_for_stopped("api")  # stopped for db's restart, started again after
        with pytest.raises(RuntimeError, match="cannot remove service 'api' while services"):
            manager.remove_service("api")
        await manager.wait_for_running("api")
    assert now() == 17  # db restarted at 14, taking 3 s
    assert states(manager) == {"db": "running", "api": "running"}
    await manager.stop()
    manager.remove_service("api")
    assert left_over() == (set(), [])


HUGE = 10**400  # an int beyond any float


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda: Service(name=5, start=lambda: None), TypeError, "name must be a str"),
        (
            lambda: Service(name="s", start=lambda: None, health_interval="5"),
            TypeError,
            "health_interval must be a finite number of seconds > 0, not str '5'",
        ),
        (
            lambda: Service(name="s", start=lambda: None, health_interval=HUGE),
            ValueError,
            "health_interval must be a finite number of seconds > 0",
        ),
        (
            lambda: Service(name="s", start=lambda: None, restart_backoff=HUGE),
            ValueError,
            "restart_backoff must be a finite number >= 1",
        ),
        (
            lambda: Service(name="s", start=lambda: None, restart_delay=HUGE),
            ValueError,
            "restart_delay must be a finite number of seconds >= 0",
        ),
        (
            lambda: Service(name="s", start=lambda: None, start_timeout=HUGE),
            ValueError,
            "start_timeout must be a number of seconds > 0, math.inf or None",
        ),
        (
            lambda: Service(name="s", start=lambda: None, unhealthy_threshold=2.0),
            TypeError,
            "unhealthy_threshold must be an int >= 1, not float 2.0",
        ),
        (
            lambda: Service(name="s", start=lambda: None, max_restarts=True),
            TypeError,
            "max_restarts must be an int >= 0 or None, not bool True",
        ),
        (
            lambda: ServiceManager(start_timeout="1"),
            TypeError,
            "start_timeout must be a number of seconds > 0, math.inf or None, not str '1'",
        ),
        (
            lambda: ServiceManager(stop_timeout=HUGE),
            ValueError,
            "stop_timeout must be a number of seconds > 0, math.inf or None",
        ),
        (
            lambda: ServiceManager().constraint_group(timeout=True),
            TypeError,
            "timeout must be a number of seconds > 0, math.inf or None, not bool True",
        ),
        (
            lambda: ServiceManager().constraint_group(label=3),
            TypeError,
            "label must be a str",
        ),
    ],
)
def test_option_checks_word_errors_as_the_rest_of_the_package(
    build: Callable[[], object], error: type[Exception], words: str
) -> None:
    # A wrong type is a TypeError, a number out of range (an int beyond any float
    # included: no OverflowError) a ValueError, both in the package's one wording.
    with pytest.raises(error, match=f"^{re.escape(words)}"):
        build()


async def test_wait_for_state_checks_its_timeout_as_the_rest_of_the_package() -> None:
    manager = manager_of(Service(name="db", start=lambda: None))
    with pytest.raises(TypeError, match="timeout must be a number of seconds >= 0"):
        await manager.wait_for_state("db", "running", timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        await manager.wait_for_state("db", "running", timeout=HUGE)
