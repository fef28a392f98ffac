"""``TaskManager``: registry, look-ups, events, ``add_execute_remove_task``, statistics and
the lifecycle (``start``/``stop``/``async with``, graceful stop) of API.md's "TaskManager".

Every async test runs on looptime's virtual clock, so the instants asserted are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, assert_type

import pytest
from _constraint_support import Gates, event_types, idle, settle
from reactivex.abc import DisposableBase

from taskbuffer import (
    Task,
    TaskbufferError,
    Taskchain,
    TaskConstraintGroup,
    TaskEvent,
    TaskExecutionError,
    TaskExecutionReport,
    TaskManager,
    TaskManagerStatistics,
    TaskManagerStoppedError,
    TaskMetadata,
    TaskNotFoundError,
    TaskOnce,
    Taskparallel,
    TaskStep,
)
from taskbuffer.distributed import InMemoryDistributedCoordinator

Record = Callable[[Task[Any, Any]], list[TaskEvent]]
Subscribe = Callable[[TaskManager], list[TaskEvent]]


@pytest.fixture
def manager_events() -> Iterator[Subscribe]:
    """Subscribe to a manager's ``task_subject``; disposed when the test ends."""
    subscriptions: list[DisposableBase] = []

    def subscribe(manager: TaskManager) -> list[TaskEvent]:
        events: list[TaskEvent] = []
        subscriptions.append(manager.task_subject.subscribe(events.append))
        return events

    yield subscribe
    for subscription in subscriptions:
        subscription.dispose()


def one_at_a_time(name: str = "one") -> TaskConstraintGroup:
    return TaskConstraintGroup(
        name=name, constraint_key_for_execution=lambda task, x: "k", max_concurrent=1
    )


def spawn(coro: Any) -> asyncio.Task[Any]:
    return asyncio.ensure_future(coro)


def is_started(manager: TaskManager) -> bool:
    """``manager.started``, read through a call so a type checker does not narrow it."""
    return manager.started


def named(name: str, result: Any = None, **options: Any) -> Task[Any]:
    return Task(name=name, task_function=lambda: result, **options)


# ----------------------------------------------------------------------------- registry


def test_add_task_needs_a_name() -> None:
    manager = TaskManager()
    with pytest.raises(ValueError, match="needs a name"):
        manager.add_task(Task(task_function=lambda: None))
    assert dict(manager.task_map) == {}


def test_add_task_rejects_a_taken_name() -> None:
    manager = TaskManager()
    first = named("job")
    manager.add_task(first)
    with pytest.raises(ValueError, match=r"'job' is already registered"):
        manager.add_task(named("job"))
    with pytest.raises(ValueError, match=r"'job' is already registered"):
        manager.add_task(first)
    assert manager.task_map["job"] is first


def test_add_task_takes_a_task() -> None:
    with pytest.raises(TypeError, match="add_task takes a Task"):
        TaskManager().add_task("job")  # type: ignore[arg-type]


def test_task_map_is_a_read_only_view() -> None:
    manager = TaskManager()
    a, b = named("a"), named("b")
    manager.add_task(a)
    view = manager.task_map
    manager.add_task(b)
    assert dict(manager.task_map) == {"a": a, "b": b}
    with pytest.raises(TypeError):
        view["c"] = named("c")  # type: ignore[index]
    with pytest.raises(TypeError):
        del view["a"]  # type: ignore[attr-defined]
    assert dict(manager.task_map) == {"a": a, "b": b}


def test_look_ups_by_name() -> None:
    manager = TaskManager()
    t = named("job", version="1.2", labels={"team": "core"})
    manager.add_task(t)
    assert manager.get_task_by_name("job") is t
    assert manager.get_task_by_name("nope") is None
    metadata = manager.get_task_metadata("job")
    assert isinstance(metadata, TaskMetadata)
    assert (metadata.name, metadata.version, metadata.labels) == ("job", "1.2", {"team": "core"})
    assert manager.get_task_metadata("nope") is None
    assert [m.name for m in manager.get_all_tasks_metadata()] == ["job"]


def test_remove_task_unregisters_it() -> None:
    manager = TaskManager()
    t = named("job")
    manager.add_task(t)
    manager.remove_task(t)
    assert manager.get_task_by_name("job") is None
    assert dict(manager.task_map) == {}
    assert manager.get_all_tasks_metadata() == []
    manager.add_task(t)  # the name is free again
    assert manager.task_map["job"] is t


def test_remove_task_of_an_unregistered_task_raises_task_not_found() -> None:
    manager = TaskManager()
    manager.add_task(named("job"))
    with pytest.raises(TaskNotFoundError):
        manager.remove_task(named("other"))
    with pytest.raises(TaskNotFoundError):
        manager.remove_task(named("job"))  # same name, another task
    assert "job" in manager.task_map


async def test_trigger_task_by_name() -> None:
    manager = TaskManager()
    manager.add_task(Task(name="double", task_function=lambda x: x * 2))
    assert await manager.trigger_task_by_name("double", 21) == 42
    with pytest.raises(TaskNotFoundError) as caught:
        await manager.trigger_task_by_name("nope")
    error = caught.value
    assert isinstance(error, KeyError) and isinstance(error, TaskbufferError)
    assert "'nope'" in str(error)


async def test_trigger_task_runs_a_task_that_is_not_registered() -> None:
    manager = TaskManager()
    assert await manager.trigger_task(Task(task_function=lambda x: x + 1), 1) == 2
    assert await manager.trigger_task_constrained(Task(task_function=lambda: "ok")) == "ok"


def test_label_queries() -> None:
    manager = TaskManager()
    a = named("a", labels={"team": "core", "tier": "1"})
    b = named("b", labels={"team": "web"})
    c = named("c", labels={"team": "core"})
    for t in (a, b, c):
        manager.add_task(t)
    outsider = named("d", labels={"team": "core"})  # not registered
    assert outsider.labels["team"] == "core"
    assert manager.get_tasks_by_label("team", "core") == [a, c]
    assert manager.get_tasks_by_label("team", "ops") == []
    assert manager.get_tasks_by_label("tier", "1") == [a]
    assert [m.name for m in manager.get_tasks_metadata_by_label("team", "core")] == ["a", "c"]
    assert manager.get_tasks_metadata_by_label("nope", "x") == []
    c.set_label("team", "web")
    assert manager.get_tasks_by_label("team", "web") == [b, c]


async def test_metadata_snapshots_follow_the_runs() -> None:
    manager = TaskManager()

    def work(x: str) -> str:
        if x == "fail":
            raise ValueError("nope")
        return x

    manager.add_task(Task(name="job", task_function=work))
    assert manager.get_task_metadata("job") == manager.get_all_tasks_metadata()[0]
    await manager.trigger_task_by_name("job", "ok")
    with pytest.raises(ValueError):
        await manager.trigger_task_by_name("job", "fail")
    metadata = manager.get_task_metadata("job")
    assert metadata is not None
    assert (metadata.status, metadata.run_count, metadata.error_count, metadata.last_error) == (
        "failed",
        2,
        1,
        "nope",
    )


# ------------------------------------------------------------------------ event forwarding


async def test_task_subject_carries_the_events_of_every_registered_task(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    manager.add_task(Task(name="a", task_function=lambda: 1))
    manager.add_task(Task(name="b", task_function=lambda: 2))
    await manager.trigger_task_by_name("a")
    await manager.trigger_task_by_name("b")
    assert [(e.task.name, e.type) for e in events] == [
        ("a", "started"),
        ("a", "completed"),
        ("b", "started"),
        ("b", "completed"),
    ]


async def test_direct_triggers_of_a_registered_task_are_forwarded_too(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    t = Task(name="a", task_function=lambda: 1)
    manager.add_task(t)
    await t.trigger()
    assert event_types(events) == ["started", "completed"]


async def test_forwarding_stops_when_the_task_is_removed(manager_events: Subscribe) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    t = Task(name="a", task_function=lambda: 1)
    manager.add_task(t)
    await t.trigger()
    manager.remove_task(t)
    await t.trigger()
    await manager.trigger_task(t)
    assert event_types(events) == ["started", "completed"]
    manager.add_task(t)
    await t.trigger()
    assert event_types(events) == ["started", "completed", "started", "completed"]


async def test_a_task_in_two_managers_is_forwarded_by_each(manager_events: Subscribe) -> None:
    first, second = TaskManager(), TaskManager()
    events_first, events_second = manager_events(first), manager_events(second)
    t = Task(name="a", task_function=lambda: 1)
    first.add_task(t)
    second.add_task(t)
    await t.trigger()
    first.remove_task(t)
    await t.trigger()
    assert len(events_first) == 2 and len(events_second) == 4


async def test_forwarding_stops_on_stop_and_resumes_on_start(manager_events: Subscribe) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    t = Task(name="a", task_function=lambda: 1)
    manager.add_task(t)
    await manager.start()
    await t.trigger()
    await manager.stop()
    await t.trigger()  # direct trigger: runs, but the stopped manager does not forward it
    late = Task(name="late", task_function=lambda: 2)
    manager.add_task(late)  # added while stopped
    await late.trigger()
    assert [(e.task.name, e.type) for e in events] == [("a", "started"), ("a", "completed")]
    await manager.start()
    await t.trigger()
    await late.trigger()
    assert [(e.task.name, e.type) for e in events][2:] == [
        ("a", "started"),
        ("a", "completed"),
        ("late", "started"),
        ("late", "completed"),
    ]
    await manager.stop()


def seen(events: list[TaskEvent]) -> list[tuple[str | None, str]]:
    return [(e.task.name, e.type) for e in events]


def flaky(name: str, failures: int) -> Task[Any]:
    """A task whose first ``failures`` attempts raise; retried at once."""
    attempts = 0

    def run(x: Any) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts <= failures:
            raise ValueError(f"attempt {attempts}")
        return x

    return Task(name=name, task_function=run, retries=failures)


async def test_a_registered_chain_forwards_its_members_events(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)

    def stepped(x: Any) -> Any:
        steps_task.notify_step("parse")
        return x

    steps_task = Task(name="stepped", task_function=stepped, steps=[TaskStep(name="parse")])
    chain = Taskchain(name="chain", task_array=[flaky("flaky", 1), steps_task, named("last")])
    manager.add_task(chain)  # the members are not registered
    await manager.trigger_task(chain, 7)
    assert seen(events) == [
        ("chain", "started"),
        ("flaky", "started"),
        ("flaky", "retrying"),
        ("flaky", "completed"),
        ("stepped", "started"),
        ("stepped", "step"),
        ("stepped", "completed"),
        ("last", "started"),
        ("last", "completed"),
        ("chain", "completed"),
    ]
    assert events[5].step_name == "parse"


async def test_a_registered_chains_failing_member_reaches_task_subject(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    chain = Taskchain(name="chain", task_array=[Task(name="boom", task_function=lambda: 1 / 0)])
    manager.add_task(chain)
    with pytest.raises(TaskbufferError):
        await manager.trigger_task(chain)
    assert seen(events) == [
        ("chain", "started"),
        ("boom", "started"),
        ("boom", "failed"),
        ("chain", "failed"),
    ]


async def test_a_registered_parallel_forwards_its_members_events(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    parallel = Taskparallel(name="fan", task_array=[flaky("flaky", 1), named("plain")])
    manager.add_task(parallel)
    assert await manager.trigger_task(parallel, 3) == [3, None]
    assert sorted(seen(events)) == sorted(
        [
            ("fan", "started"),
            ("flaky", "started"),
            ("flaky", "retrying"),
            ("flaky", "completed"),
            ("plain", "started"),
            ("plain", "completed"),
            ("fan", "completed"),
        ]
    )
    assert seen(events)[0] == ("fan", "started") and seen(events)[-1] == ("fan", "completed")


async def test_nested_members_of_a_registered_chain_are_forwarded(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    inner = Taskparallel(name="inner", task_array=[named("leaf")])
    chain = Taskchain(name="outer", task_array=[Taskchain(name="middle", task_array=[inner])])
    manager.add_task(chain)
    await chain.trigger()
    assert seen(events) == [
        ("outer", "started"),
        ("middle", "started"),
        ("inner", "started"),
        ("leaf", "started"),
        ("leaf", "completed"),
        ("inner", "completed"),
        ("middle", "completed"),
        ("outer", "completed"),
    ]
    manager.remove_task(chain)
    await inner.trigger()
    assert len(events) == 8


async def test_a_member_reached_by_several_ways_delivers_each_event_once(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    shared = named("shared")
    first = Taskchain(name="first", task_array=[shared, shared])
    second = Taskparallel(name="second", task_array=[shared])
    manager.add_task(shared)
    manager.add_task(first)
    manager.add_task(second)
    await shared.trigger()
    assert seen(events) == [("shared", "started"), ("shared", "completed")]
    # Each way that led to it undone but the last: still once.
    manager.remove_task(shared)
    manager.remove_task(second)
    first.remove_task(shared)
    await shared.trigger()
    assert len(events) == 4
    first.remove_task(shared)  # the last way
    await shared.trigger()
    assert len(events) == 4


async def test_a_member_of_chains_in_two_managers_is_forwarded_by_each(
    manager_events: Subscribe,
) -> None:
    one, two = TaskManager(), TaskManager()
    events_one, events_two = manager_events(one), manager_events(two)
    member = named("member")
    one.add_task(Taskchain(name="chain", task_array=[member]))
    two.add_task(Taskparallel(name="parallel", task_array=[member]))
    await member.trigger()
    assert seen(events_one) == seen(events_two) == [("member", "started"), ("member", "completed")]


async def test_removing_a_chain_stops_forwarding_its_members_events(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    member = named("member")
    chain = Taskchain(name="chain", task_array=[member])
    manager.add_task(chain)
    manager.remove_task(chain)
    await chain.trigger()
    await member.trigger()
    assert events == []
    manager.add_task(chain)
    await member.trigger()
    assert seen(events) == [("member", "started"), ("member", "completed")]


async def test_members_forwarding_stops_on_stop_and_resumes_on_start(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    member = named("member")
    manager.add_task(Taskparallel(name="parallel", task_array=[member]))
    await manager.start()
    await manager.stop()
    await member.trigger()
    late_member = named("late member")
    manager.add_task(Taskchain(name="late", task_array=[late_member]))  # added while stopped
    await late_member.trigger()
    assert events == []
    await manager.start()
    await member.trigger()
    await late_member.trigger()
    assert seen(events) == [
        ("member", "started"),
        ("member", "completed"),
        ("late member", "started"),
        ("late member", "completed"),
    ]
    await manager.stop()


async def test_members_added_to_or_removed_from_a_registered_chain_follow_it(
    manager_events: Subscribe,
) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    first, added = named("first"), named("added")
    chain = Taskchain(name="chain", task_array=[first])
    manager.add_task(chain)
    chain.add_task(added)
    await added.trigger()
    assert seen(events) == [("added", "started"), ("added", "completed")]
    assert chain.shift_task() is first
    assert chain.remove_task(added)
    await first.trigger()
    await added.trigger()
    assert len(events) == 2


async def test_a_raising_subscriber_breaks_neither_the_run_nor_other_subscribers(
    manager_events: Subscribe, caplog: pytest.LogCaptureFixture
) -> None:
    manager = TaskManager()

    def bad(event: TaskEvent) -> None:
        raise RuntimeError("subscriber bug")

    subscription = manager.task_subject.subscribe(bad)
    events = manager_events(manager)
    manager.add_task(Task(name="a", task_function=lambda: "ok"))
    try:
        assert await manager.trigger_task_by_name("a") == "ok"
    finally:
        subscription.dispose()
    assert event_types(events) == ["started", "completed"]
    logged = [r for r in caplog.records if r.name == "taskbuffer" and r.levelname == "ERROR"]
    assert len(logged) == 2  # one per event
    assert "subscriber raised" in logged[0].getMessage()


# ---------------------------------------------------------------- add_execute_remove_task


async def test_add_execute_remove_task_reports_a_successful_run() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    steps = [TaskStep(name="fetch", percentage=40), TaskStep(name="store", percentage=60)]

    async def work() -> str:
        t.notify_step("fetch")
        await asyncio.sleep(1.5)
        t.notify_step("store")
        await asyncio.sleep(0.5)
        return "stored"

    t = Task(name="job", task_function=work, steps=steps)
    before = time.time()
    report = await manager.add_execute_remove_task(t)
    assert isinstance(report, TaskExecutionReport)
    assert report.task_name == "job"
    assert report.result == "stored"
    assert report.error is None
    assert report.duration == pytest.approx(2.0, abs=1e-6)
    assert report.end_time - report.start_time == pytest.approx(report.duration, abs=1e-9)
    assert report.start_time == pytest.approx(before, abs=60)  # epoch seconds
    assert report.steps_completed == ["fetch", "store"]
    assert [step.name for step in report.steps] == ["fetch", "store"]
    assert report.progress == 100
    assert manager.get_task_by_name("job") is None
    assert loop.time() == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.result = None  # type: ignore[misc]


async def test_add_execute_remove_task_failure_raises_with_the_report() -> None:
    manager = TaskManager()
    original = ValueError("disk full")

    async def work() -> None:
        await asyncio.sleep(1)
        raise original

    t = Task(name="job", task_function=work)
    with pytest.raises(TaskExecutionError) as caught:
        await manager.add_execute_remove_task(t)
    error = caught.value
    assert isinstance(error, TaskbufferError)
    assert error.__cause__ is original
    assert error.report.error is original
    assert error.report.task_name == "job"
    assert error.report.result is None
    assert error.report.duration == pytest.approx(1.0, abs=1e-6)
    assert "job" in str(error) and "disk full" in str(error)
    assert manager.get_task_by_name("job") is None


async def test_add_execute_remove_task_with_catch_errors_reports_without_raising() -> None:
    """Under ``catch_errors`` a failed run returns ``None`` rather than raising; the report
    still carries the error (read this way: the run failed, the caller asked not to raise)."""
    manager = TaskManager()

    def work() -> None:
        raise ValueError("swallowed")

    report = await manager.add_execute_remove_task(
        Task(name="job", task_function=work, catch_errors=True)
    )
    assert isinstance(report.error, ValueError) and str(report.error) == "swallowed"
    assert report.result is None
    assert manager.get_task_by_name("job") is None


async def test_add_execute_remove_task_goes_through_the_constraints() -> None:
    manager = TaskManager()
    manager.add_constraint_group(one_at_a_time())
    gates = Gates()
    blocker = spawn(manager.trigger_task(Task(task_function=gates.function), "held"))
    await gates.wait_started("held")
    loop = asyncio.get_running_loop()
    job = spawn(manager.add_execute_remove_task(Task(name="job", task_function=loop.time)))
    await settle()
    assert manager.get_task_by_name("job") is not None  # registered while it waits
    await asyncio.sleep(3)
    gates.finish("held")
    report = await job
    assert report.result == 3.0
    assert report.duration == pytest.approx(3.0, abs=1e-6)
    assert manager.get_task_by_name("job") is None
    await blocker


async def test_add_execute_remove_task_with_a_taken_name_raises_and_keeps_the_other() -> None:
    manager = TaskManager()
    registered = named("job")
    manager.add_task(registered)
    with pytest.raises(ValueError, match="already registered"):
        await manager.add_execute_remove_task(named("job"))
    assert manager.get_task_by_name("job") is registered


async def test_add_execute_remove_task_removes_the_task_when_cancelled() -> None:
    manager = TaskManager()
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    job = spawn(manager.add_execute_remove_task(t))
    await gates.wait_started(None)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert manager.get_task_by_name("job") is None


# ------------------------------------------------------------------------------ lifecycle


async def test_start_and_stop() -> None:
    manager = TaskManager()
    assert not is_started(manager)
    await manager.start()
    assert is_started(manager)
    await manager.stop()
    assert not is_started(manager)


async def test_triggers_work_before_start() -> None:
    manager = TaskManager()
    manager.add_task(named("job", "ran"))
    assert await manager.trigger_task_by_name("job") == "ran"


async def test_stop_without_start_and_twice() -> None:
    manager = TaskManager()
    await manager.stop()
    await manager.stop()
    await manager.stop(timeout=1, drain=True)
    assert not manager.started


async def test_a_stopped_manager_refuses_triggers_and_can_be_started_again() -> None:
    manager = TaskManager()
    t = named("job", "ran")
    manager.add_task(t)
    await manager.start()
    await manager.stop()
    with pytest.raises(TaskManagerStoppedError) as caught:
        await manager.trigger_task(t)
    assert isinstance(caught.value, RuntimeError) and isinstance(caught.value, TaskbufferError)
    with pytest.raises(TaskManagerStoppedError):
        await manager.trigger_task_by_name("job")
    with pytest.raises(TaskManagerStoppedError):
        await manager.trigger_task_constrained(t, priority=3)
    manager.add_constraint_group(one_at_a_time())
    with pytest.raises(TaskManagerStoppedError):
        await manager.trigger_task(t)
    assert t.run_count == 0
    await manager.start()
    assert await manager.trigger_task(t) == "ran"
    await manager.stop()
    await manager.start()
    assert await manager.trigger_task_by_name("job") == "ran"
    await manager.stop()


async def test_async_with_starts_and_stops() -> None:
    t = named("job", "ran")
    async with TaskManager() as manager:
        assert isinstance(manager, TaskManager)
        assert is_started(manager)
        manager.add_task(t)
        assert await manager.trigger_task_by_name("job") == "ran"
    assert not is_started(manager)
    with pytest.raises(TaskManagerStoppedError):
        await manager.trigger_task(t)


async def test_async_with_stops_on_an_error_and_lets_it_through() -> None:
    with pytest.raises(LookupError, match="inside"):
        async with TaskManager() as manager:
            raise LookupError("inside")
    assert not manager.started


async def test_stop_waits_for_running_runs() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()

    async def work() -> str:
        await asyncio.sleep(3)
        return "done"

    t = Task(name="job", task_function=work)
    manager.add_task(t)
    await manager.start()
    run = spawn(manager.trigger_task(t))
    await settle()
    await manager.stop()
    assert loop.time() == 3.0
    assert run.done() and run.result() == "done"


async def test_stop_fails_waiting_triggers_and_lets_the_running_run_finish(
    record: Record,
) -> None:
    loop = asyncio.get_running_loop()
    group = one_at_a_time()
    manager = TaskManager()
    manager.add_constraint_group(group)
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    events = record(t)
    await manager.start()
    running = spawn(manager.trigger_task(t, "running"))
    await gates.wait_started("running")
    waiting = [spawn(manager.trigger_task(t, x)) for x in ("w1", "w2")]
    await settle()
    stopping = spawn(manager.stop())
    await settle()
    for trigger in waiting:
        with pytest.raises(TaskManagerStoppedError):
            await trigger
    assert not stopping.done()  # still waiting for the running run
    with pytest.raises(TaskManagerStoppedError):
        await manager.trigger_task(t, "late")
    await asyncio.sleep(2)
    gates.finish("running")
    await stopping
    assert loop.time() == 2.0
    assert await running == "running"
    assert gates.started == ["running"]
    assert event_types(events) == [
        "started",
        "queued",
        "queued",
        "cancelled",
        "cancelled",
        "completed",
    ]
    assert group.statistics() == idle(group)
    assert manager.statistics().running == manager.statistics().waiting == 0


async def test_stop_with_drain_lets_waiting_triggers_run_and_waits_for_them() -> None:
    group = one_at_a_time()
    manager = TaskManager()
    manager.add_constraint_group(group)
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    await manager.start()
    runs = [spawn(manager.trigger_task(t, x)) for x in ("a", "b", "c")]
    await gates.wait_started("a")
    stopping = spawn(manager.stop(drain=True))
    await settle()
    with pytest.raises(TaskManagerStoppedError):
        await manager.trigger_task(t, "late")
    for x in ("a", "b", "c"):
        await gates.wait_started(x)
        await settle()
        assert not stopping.done(), f"stop() returned while {x!r} was running"
        gates.finish(x)
    await stopping
    assert await asyncio.gather(*runs) == ["a", "b", "c"]
    assert group.statistics() == idle(group)


async def test_stop_with_drain_waits_for_cooldowns_of_waiting_triggers() -> None:
    loop = asyncio.get_running_loop()
    group = TaskConstraintGroup(
        name="cool", constraint_key_for_execution=lambda t, x: "k", cooldown=5
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    t = Task(name="job", task_function=lambda: loop.time())
    await manager.trigger_task(t)
    waiting = spawn(manager.trigger_task(t))
    await settle()
    await manager.stop(drain=True)
    assert loop.time() == 5.0
    assert waiting.done() and waiting.result() == 5.0


async def test_stop_timeout_cancels_what_still_runs(record: Record) -> None:
    loop = asyncio.get_running_loop()
    group = one_at_a_time()
    manager = TaskManager()
    manager.add_constraint_group(group)
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    t = Task(name="job", task_function=work)
    events = record(t)
    await manager.start()
    run = spawn(manager.trigger_task(t))
    waiting = spawn(manager.trigger_task(t))
    await settle()
    await manager.stop(timeout=2.5, drain=True)
    assert loop.time() == 2.5
    assert cancelled.is_set()
    with pytest.raises(TaskManagerStoppedError):
        await run
    with pytest.raises(TaskManagerStoppedError):
        await waiting
    assert not run.cancelled()
    assert t.error_count == 0 and t.run_count == 1
    assert "cancelled" in event_types(events) and "failed" not in event_types(events)
    assert group.statistics() == idle(group)
    assert manager.statistics().running == manager.statistics().waiting == 0


async def test_stop_timeout_refuses_a_trigger_woken_as_the_timeout_runs_out() -> None:
    """A waiter whose cooldown ends at the very instant stop()'s timeout runs out must not
    start a run that stop() would then wait for without limit."""
    loop = asyncio.get_running_loop()
    group = TaskConstraintGroup(
        name="cool", constraint_key_for_execution=lambda t, x: "k", cooldown=5
    )
    manager = TaskManager()
    manager.add_constraint_group(group)

    async def work(x: str) -> str:
        await asyncio.sleep(10 if x == "slow" else 0)
        return x

    t = Task(name="job", task_function=work)
    assert await manager.trigger_task(t, "quick") == "quick"
    waiting = spawn(manager.trigger_task(t, "slow"))
    await settle()
    await manager.stop(timeout=5, drain=True)
    assert loop.time() == 5.0
    with pytest.raises(TaskManagerStoppedError):
        await waiting
    assert manager.statistics().running == manager.statistics().waiting == 0
    assert group.statistics().running == group.statistics().waiting == 0


async def test_stop_timeout_refuses_a_trigger_woken_after_the_timeout_fired(
    record: Record,
) -> None:
    """stop()'s timeout fires first and the cooldown of a waiting trigger ends in the same
    instant (its timer was armed later): the woken trigger must not start."""
    loop = asyncio.get_running_loop()
    group = TaskConstraintGroup(
        name="cool", constraint_key_for_execution=lambda t, x: "k", max_concurrent=1, cooldown=4
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    ran: list[str] = []

    async def work(x: str) -> str:
        ran.append(x)
        await asyncio.sleep(1 if x == "first" else 100)
        return x

    t = Task(name="job", task_function=work)
    events = record(t)
    first = spawn(manager.trigger_task(t, "first"))
    waiting = spawn(manager.trigger_task(t, "second"))
    await settle()
    # stop()'s deadline (t=5) is armed now; the cooldown timer (1 + 4 = 5) only at t=1.
    await manager.stop(timeout=5, drain=True)
    assert loop.time() == 5.0
    assert await first == "first"
    with pytest.raises(TaskManagerStoppedError):
        await waiting
    assert ran == ["first"]
    assert event_types(events) == ["started", "queued", "completed", "cancelled"]
    assert manager.statistics().running == manager.statistics().waiting == 0
    assert group.statistics().running == group.statistics().waiting == 0


async def test_nested_triggers_in_one_asyncio_task_are_tracked() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    manager.add_constraint_group(
        TaskConstraintGroup(name="any", constraint_key_for_execution=lambda t, x: x)
    )
    seen: list[int] = []

    async def inner() -> str:
        seen.append(manager.statistics().running)
        await asyncio.sleep(100)
        return "inner"

    inner_task = Task(name="inner", task_function=inner)

    async def outer() -> str:
        return await manager.trigger_task(inner_task, "i") or ""

    run = spawn(manager.trigger_task(Task(name="outer", task_function=outer), "o"))
    await settle()
    assert seen == [2]
    await manager.stop(timeout=1)
    assert loop.time() == 1.0
    with pytest.raises(TaskManagerStoppedError):
        await run
    assert manager.statistics().running == 0


async def test_stop_timeout_without_constraints() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()

    async def work() -> None:
        await asyncio.sleep(100)

    run = spawn(manager.trigger_task(Task(name="job", task_function=work)))
    await settle()
    await manager.stop(timeout=1)
    assert loop.time() == 1.0
    with pytest.raises(TaskManagerStoppedError):
        await run


async def test_stop_timeout_is_not_used_when_runs_finish_in_time() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()

    async def work() -> str:
        await asyncio.sleep(1)
        return "done"

    run = spawn(manager.trigger_task(Task(name="job", task_function=work)))
    await settle()
    await manager.stop(timeout=10)
    assert loop.time() == 1.0
    assert await run == "done"


async def test_stop_timeout_zero_cancels_at_once() -> None:
    manager = TaskManager()

    async def work() -> None:
        await asyncio.sleep(100)

    run = spawn(manager.trigger_task(Task(name="job", task_function=work)))
    await settle()
    await manager.stop(timeout=0)
    assert asyncio.get_running_loop().time() == 0.0
    with pytest.raises(TaskManagerStoppedError):
        await run


async def test_a_caller_cancelled_while_stop_waits_is_still_a_cancellation() -> None:
    manager = TaskManager()
    gates = Gates()
    run = spawn(manager.trigger_task(Task(name="job", task_function=gates.function)))
    await gates.wait_started(None)
    stopping = spawn(manager.stop())
    await settle()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await stopping


async def test_stop_waits_for_a_trigger_inside_an_async_should_execute() -> None:
    loop = asyncio.get_running_loop()

    async def check(task: Task[Any, Any], x: Any) -> bool:
        await asyncio.sleep(2)
        return True

    group = TaskConstraintGroup(
        name="checked", constraint_key_for_execution=lambda t, x: "k", should_execute=check
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    ran_at: list[float] = []

    async def work() -> str:
        ran_at.append(loop.time())
        await asyncio.sleep(1)
        return "done"

    run = spawn(manager.trigger_task(Task(name="job", task_function=work)))
    await asyncio.sleep(1)
    await manager.stop()
    # The trigger had its slot and was past the queue: stop() waits until its run is over.
    assert ran_at == [2.0]
    assert loop.time() == 3.0
    assert run.done() and run.result() == "done"
    assert group.statistics() == idle(group)


async def test_stop_timeout_covers_a_trigger_inside_an_async_should_execute() -> None:
    loop = asyncio.get_running_loop()

    async def check(task: Task[Any, Any], x: Any) -> bool:
        await asyncio.sleep(100)
        return True

    group = TaskConstraintGroup(
        name="checked", constraint_key_for_execution=lambda t, x: "k", should_execute=check
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    t = Task(name="job", task_function=lambda: "ran")
    run = spawn(manager.trigger_task(t))
    await settle()
    await manager.stop(timeout=1)
    assert loop.time() == 1.0
    with pytest.raises(TaskManagerStoppedError):
        await run
    assert t.run_count == 0
    assert group.statistics() == idle(group)


async def test_stop_stops_forwarding_before_waiting(manager_events: Subscribe) -> None:
    manager = TaskManager()
    events = manager_events(manager)
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    manager.add_task(t)
    run = spawn(manager.trigger_task(t))
    await gates.wait_started(None)
    stopping = spawn(manager.stop())
    await settle()
    gates.finish(None, "done")
    await stopping
    assert await run == "done"
    assert event_types(events) == ["started"]  # "completed" came after stop() began


# ------------------------------------------- overlapping stops, nested runs, waits that never end


async def test_two_overlapping_stops_both_return_when_the_run_ends() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    gates = Gates()
    run = spawn(manager.trigger_task(Task(name="job", task_function=gates.function)))
    await gates.wait_started(None)
    first = spawn(manager.stop())
    second = spawn(manager.stop())
    await asyncio.sleep(2)
    assert not first.done() and not second.done()
    gates.finish(None, "done")
    async with asyncio.timeout(1):
        await asyncio.gather(first, second)
    assert loop.time() == 2.0
    assert await run == "done"


async def test_a_stop_with_a_timeout_returns_by_it_when_a_second_stop_overlaps() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    gates = Gates()
    run = spawn(manager.trigger_task(Task(name="job", task_function=gates.function)))
    await gates.wait_started(None)
    first = spawn(manager.stop(timeout=1))
    await settle()
    second = spawn(manager.stop())
    async with asyncio.timeout(5):
        await first
    assert loop.time() == 1.0
    async with asyncio.timeout(1):
        await second
    assert loop.time() == 1.0
    with pytest.raises(TaskManagerStoppedError):
        await run
    assert manager.statistics().running == 0


@pytest.mark.parametrize(
    ("first_timeout", "second_timeout", "stopped_at"),
    [
        pytest.param(10, 2, 3.0, id="a shorter second timeout tightens the stop (1 + 2)"),
        pytest.param(2, 10, 2.0, id="a longer second timeout does not loosen the first"),
    ],
)
async def test_a_second_stop_in_progress_ends_at_the_earliest_deadline(
    first_timeout: float, second_timeout: float, stopped_at: float
) -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    gates = Gates()
    run = spawn(manager.trigger_task(Task(name="job", task_function=gates.function)))
    await gates.wait_started(None)
    first = spawn(manager.stop(timeout=first_timeout))
    await asyncio.sleep(1)
    second = spawn(manager.stop(timeout=second_timeout))
    async with asyncio.timeout(20):
        await asyncio.gather(first, second)
    assert loop.time() == stopped_at
    with pytest.raises(TaskManagerStoppedError):
        await run


async def test_a_second_stop_without_drain_fails_the_triggers_a_draining_stop_waits_for() -> None:
    group = one_at_a_time()
    manager = TaskManager()
    manager.add_constraint_group(group)
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    running = spawn(manager.trigger_task(t, "running"))
    await gates.wait_started("running")
    waiting = spawn(manager.trigger_task(t, "waiting"))
    await settle()
    draining = spawn(manager.stop(drain=True))
    await settle()
    assert not waiting.done()
    failing = spawn(manager.stop())
    await settle()
    with pytest.raises(TaskManagerStoppedError):
        await waiting
    gates.finish("running")
    async with asyncio.timeout(1):
        await asyncio.gather(draining, failing)
    assert await running == "running"
    assert gates.started == ["running"]
    assert group.statistics() == idle(group)


async def test_cancelling_one_of_two_overlapping_stops_leaves_the_other_working() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    gates = Gates()
    run = spawn(manager.trigger_task(Task(name="job", task_function=gates.function)))
    await gates.wait_started(None)
    first = spawn(manager.stop())
    second = spawn(manager.stop(timeout=3))
    await asyncio.sleep(1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(10):
        await second
    assert loop.time() == 3.0
    with pytest.raises(TaskManagerStoppedError):
        await run
    # Stopped and startable again, with nothing left over.
    await manager.start()
    assert await manager.trigger_task(named("again", "ran")) == "ran"
    await manager.stop()


@pytest.mark.parametrize("constrained", [False, True], ids=["no-group", "group"])
@pytest.mark.parametrize("depth", [2, 3])
async def test_stop_timeout_cancels_a_nested_run_at_every_level(
    record: Record, constrained: bool, depth: int
) -> None:
    """A run that triggers another task through the manager, stopped with a timeout: each
    level is cancelled (not failed, not retried) and only the outermost awaiter gets
    TaskManagerStoppedError."""
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    if constrained:
        manager.add_constraint_group(
            TaskConstraintGroup(name="per-task", constraint_key_for_execution=lambda t, x: t.name)
        )

    async def innermost() -> None:
        await asyncio.sleep(100)

    def triggering(name: str) -> Callable[[], Awaitable[Any]]:
        async def outer() -> Any:
            return await manager.trigger_task_by_name(name)

        return outer

    tasks = [Task(name="level0", task_function=innermost, retries=3, retry_delay=1)]
    for level in range(1, depth):
        function = triggering(f"level{level - 1}")
        tasks.append(Task(name=f"level{level}", task_function=function, retries=3, retry_delay=1))
    for t in tasks:
        manager.add_task(t)
    events = [record(t) for t in tasks]
    run = spawn(manager.trigger_task_by_name(tasks[-1].name or ""))
    await settle()
    assert manager.statistics().running == depth
    async with asyncio.timeout(10):
        await manager.stop(timeout=0.05)
    assert loop.time() == 0.05
    with pytest.raises(TaskManagerStoppedError):
        await run
    for t, seen in zip(tasks, events, strict=True):
        assert event_types(seen) == ["started", "cancelled"], t.name
        assert (t.run_count, t.error_count, t.last_error) == (1, 0, None)
    assert manager.statistics().running == 0


def _nesting_outer(how: str, manager: TaskManager, inner: Task[Any]) -> Task[Any]:
    """A task whose run triggers ``inner`` through ``manager`` from another asyncio task."""

    async def through_the_manager() -> Any:
        return await manager.trigger_task(inner)

    async def spawning() -> Any:
        return await asyncio.create_task(manager.trigger_task(inner))

    options: dict[str, Any] = {"name": "outer", "retries": 3, "retry_delay": 1}
    if how == "spawned":
        return Task(task_function=spawning, **options)
    if how == "buffered":
        return Task(task_function=through_the_manager, buffered=True, buffer_max=1, **options)
    if how == "once":
        return TaskOnce(task_function=through_the_manager, **options)
    child = Task(name="child", task_function=through_the_manager, retries=3, retry_delay=1)
    return Taskparallel(task_array=[child], **options)


@pytest.mark.parametrize("how", ["spawned", "buffered", "once", "parallel"])
async def test_stop_timeout_cancels_a_run_nested_in_another_asyncio_task(
    record: Record, how: str
) -> None:
    """The inner trigger runs in an asyncio task of its own (one the outer run spawned and
    awaits, a buffered or TaskOnce run, a parallel's child): stop's cancellation still
    reaches the outer run as a cancellation, so nothing is retried or failed."""
    loop = asyncio.get_running_loop()
    manager = TaskManager()

    async def forever() -> None:
        await asyncio.sleep(100)

    inner = Task(name="inner", task_function=forever, retries=3, retry_delay=1)
    outer = _nesting_outer(how, manager, inner)
    levels = (
        [inner, outer, *outer.task_array] if isinstance(outer, Taskparallel) else [inner, outer]
    )
    events = [record(t) for t in levels]
    run = spawn(manager.trigger_task(outer))
    await settle()
    assert inner.run_count == 1
    async with asyncio.timeout(10):
        await manager.stop(timeout=0.05)
    assert loop.time() == 0.05
    with pytest.raises(TaskManagerStoppedError):
        await run
    await settle()
    for t, seen in zip(levels, events, strict=True):
        assert event_types(seen) == ["started", "cancelled"], t.name
        assert (t.run_count, t.error_count) == (1, 0), t.name
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    await manager.start()
    assert await manager.trigger_task(named("again", "ran")) == "ran"
    await manager.stop()


async def test_a_caller_also_cancelled_by_someone_else_as_stop_times_out_is_cancelled() -> None:
    """stop's cancellation becomes TaskManagerStoppedError only when it is the only one: a
    cancellation someone else asked for in the same instant is not swallowed."""
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    gates = Gates()
    run = spawn(manager.trigger_task(Task(name="job", task_function=gates.function)))
    await gates.wait_started(None)
    stopping = spawn(manager.stop(timeout=1))
    await settle()
    loop.call_at(1.0, run.cancel)  # after stop's deadline, in the same instant
    async with asyncio.timeout(10):
        await stopping
    assert loop.time() == 1.0
    with pytest.raises(asyncio.CancelledError):
        await run
    assert run.cancelled()


async def test_start_while_a_stop_is_under_way_raises_and_leaves_the_stop_alone() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    await manager.start()
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    run = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    stopping = spawn(manager.stop(timeout=5))
    await settle()
    with pytest.raises(RuntimeError, match=r"start\(\) was called while a stop\(\) is under way"):
        await manager.start()
    with pytest.raises(TaskManagerStoppedError):
        await manager.trigger_task(t, "b")
    async with asyncio.timeout(10):
        await stopping
    assert loop.time() == 5.0
    with pytest.raises(TaskManagerStoppedError):
        await run
    assert not is_started(manager)
    await manager.start()  # once the stop is over
    assert is_started(manager)
    assert await manager.trigger_task(named("again", "ran")) == "ran"
    await manager.stop()


async def test_stop_while_start_awaits_the_coordinator_leaves_the_manager_stopped() -> None:
    coordinator_started = asyncio.Event()
    release = asyncio.Event()
    calls: list[str] = []

    class SlowToStart(InMemoryDistributedCoordinator):
        async def start(self) -> None:
            calls.append("start")
            coordinator_started.set()
            await release.wait()

        async def stop(self) -> None:
            calls.append("stop")

    manager = TaskManager(distributed_coordinator=SlowToStart())
    t = named("job", "ran")
    manager.add_and_schedule_task(t, "* * * * * *")
    starting = spawn(manager.start())
    async with asyncio.timeout(10):
        await coordinator_started.wait()
        await manager.stop()
    release.set()
    with pytest.raises(TaskManagerStoppedError, match=r"stop\(\) was called while start\(\)"):
        async with asyncio.timeout(10):
            await starting
    assert calls == ["start", "stop"]
    assert not is_started(manager)
    with pytest.raises(TaskManagerStoppedError):
        await manager.trigger_task(t)
    await asyncio.sleep(3)
    assert t.run_count == 0  # cron stayed stopped
    release.set()
    await manager.start()
    assert await manager.trigger_task(t) == "ran"
    await manager.stop()
    assert calls == ["start", "stop", "start", "stop"]


@pytest.mark.parametrize("drain", [False, True], ids=["at-once", "at-the-deadline"])
async def test_a_waiting_trigger_that_stop_fails_emits_cancelled(
    record: Record, drain: bool
) -> None:
    manager = TaskManager()
    manager.add_constraint_group(one_at_a_time())
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    events = record(t)
    running = spawn(manager.trigger_task(t, "running"))
    await gates.wait_started("running")
    waiting = spawn(manager.trigger_task(t, "waiting"))
    await settle()
    stopping = spawn(manager.stop(timeout=1, drain=drain))
    with pytest.raises(TaskManagerStoppedError):
        async with asyncio.timeout(10):
            await waiting
    # The waiting trigger's "cancelled" (and, at the deadline, the running one's).
    assert event_types(events) == ["started", "queued"] + ["cancelled"] * (1 + drain)
    assert asyncio.get_running_loop().time() == (1.0 if drain else 0.0)
    assert (t.run_count, t.error_count) == (1, 0)
    async with asyncio.timeout(10):
        await stopping
    with pytest.raises(TaskManagerStoppedError):
        await running


async def test_stop_awaited_inside_a_run_of_the_manager_raises() -> None:
    manager = TaskManager()

    async def stops_its_manager() -> None:
        await manager.stop()

    t = Task(name="stopper", task_function=stops_its_manager)
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match=r"stop\(\) was awaited from inside a run"):
            await manager.trigger_task(t)
    assert t.error_count == 1
    # Nothing was stopped: the manager still takes triggers, and stops from outside.
    assert await manager.trigger_task(named("job", "ran")) == "ran"
    async with asyncio.timeout(10):
        await manager.stop()


async def test_a_run_may_start_a_stop_that_it_does_not_await() -> None:
    manager = TaskManager()
    stopping: list[asyncio.Task[None]] = []

    async def starts_a_stop() -> str:
        stopping.append(asyncio.create_task(manager.stop()))
        await asyncio.sleep(1)
        return "done"

    assert await manager.trigger_task(Task(name="job", task_function=starts_a_stop)) == "done"
    async with asyncio.timeout(10):
        await stopping[0]
    assert asyncio.get_running_loop().time() == 1.0


@pytest.mark.parametrize("sharing", ["none", "share-latest"])
@pytest.mark.parametrize(("cap", "depth"), [(1, 2), (2, 3)])
async def test_a_nested_trigger_waiting_for_a_slot_only_its_callers_hold_raises(
    record: Record, cap: int, depth: int, sharing: Any
) -> None:
    """With ``share-latest`` each run goes in an asyncio task of its own: the runs around
    it are followed through their callers all the same."""
    group = TaskConstraintGroup(
        name="mutex",
        constraint_key_for_execution=lambda t, x: "k",
        max_concurrent=cap,
        result_sharing=sharing,
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    innermost = Task(name="inner", task_function=lambda: "never")
    inner_events = record(innermost)

    def triggering(below: Task[Any]) -> Callable[[], Awaitable[Any]]:
        async def outer() -> Any:
            return await manager.trigger_task(below)

        return outer

    below: Task[Any] = innermost
    for level in range(1, depth):
        below = Task(name=f"outer{level}", task_function=triggering(below))
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match=r"'inner' would wait forever for key 'k'"):
            await manager.trigger_task(below)
    assert innermost.run_count == 0
    assert event_types(inner_events) == ["failed"]
    assert group.statistics() == idle(group)
    assert manager.statistics().running == manager.statistics().waiting == 0


@pytest.mark.parametrize("sharing", ["none", "share-latest"])
async def test_a_nested_trigger_with_a_free_slot_of_its_callers_key_runs(sharing: Any) -> None:
    group = TaskConstraintGroup(
        name="pair",
        constraint_key_for_execution=lambda t, x: "k",
        max_concurrent=2,
        result_sharing=sharing,
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    inner = Task(name="inner", task_function=lambda: "inner")

    async def outer() -> Any:
        return await manager.trigger_task(inner)

    async with asyncio.timeout(10):
        assert await manager.trigger_task(Task(name="outer", task_function=outer)) == "inner"
    assert group.statistics() == idle(group)


async def test_a_nested_trigger_waiting_for_a_slot_held_around_a_share_latest_run_raises() -> None:
    """outer (key "p" of a plain group) triggers mid (a share-latest key, so mid runs in an
    asyncio task of its own), which triggers inner on key "p": outer waits for mid, so "p"
    is never free for inner."""
    plain = TaskConstraintGroup(
        name="plain",
        constraint_key_for_execution=lambda t, x: None if t.name == "mid" else "p",
        max_concurrent=1,
    )
    shared = TaskConstraintGroup(
        name="shared",
        constraint_key_for_execution=lambda t, x: "s" if t.name == "mid" else None,
        max_concurrent=1,
        result_sharing="share-latest",
    )
    manager = TaskManager()
    manager.add_constraint_group(plain)
    manager.add_constraint_group(shared)
    inner = Task(name="inner", task_function=lambda: "never")

    async def mid() -> Any:
        return await manager.trigger_task(inner)

    async def outer() -> Any:
        return await manager.trigger_task(Task(name="mid", task_function=mid))

    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match=r"'inner' would wait forever for key 'p'"):
            await manager.trigger_task(Task(name="outer", task_function=outer))
    assert inner.run_count == 0
    assert plain.statistics() == idle(plain)
    assert shared.statistics() == idle(shared)
    assert manager.statistics().running == manager.statistics().waiting == 0


async def test_a_share_latest_run_whose_caller_left_still_may_not_wait_for_its_own_slot() -> None:
    """The caller of a share-latest run is cancelled while a trigger waits to share it; the
    run goes on and triggers a task on its own key: that trigger raises instead of waiting
    forever (as a waiter of the run's own key, it would wait for the run, which waits for
    it), and the waiting trigger then runs on its own."""
    group = TaskConstraintGroup(
        name="mutex",
        constraint_key_for_execution=lambda t, x: "k",
        max_concurrent=1,
        result_sharing="share-latest",
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    inner = Task(name="inner", task_function=lambda: "never")
    go_on = asyncio.Event()

    async def work(x: str) -> Any:
        if x == "a":
            await go_on.wait()
            return await manager.trigger_task(inner)
        return x

    t = Task(name="t", task_function=work)
    caller = spawn(manager.trigger_task(t, "a"))
    await settle()
    waiter = spawn(manager.trigger_task(t, "b"))
    await settle()
    caller.cancel()
    await settle()
    assert caller.cancelled()
    go_on.set()
    async with asyncio.timeout(10):
        assert await waiter == "b"
    assert t.last_error is None  # b succeeded after a's failure
    assert (t.run_count, t.error_count, inner.run_count) == (2, 1, 0)
    assert group.statistics() == idle(group)
    assert manager.statistics().running == manager.statistics().waiting == 0


async def test_a_nested_trigger_waiting_for_a_slot_another_run_holds_waits_for_it() -> None:
    loop = asyncio.get_running_loop()
    group = TaskConstraintGroup(
        name="per-input", constraint_key_for_execution=lambda t, x: x, max_concurrent=1
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    gates = Gates()
    other = spawn(manager.trigger_task(Task(name="other", task_function=gates.function), "k"))
    await gates.wait_started("k")
    inner = Task(name="inner", task_function=lambda x: f"inner {x}")

    async def outer(x: str) -> Any:
        return await manager.trigger_task(inner, "k")

    run = spawn(manager.trigger_task(Task(name="outer", task_function=outer), "o"))
    await asyncio.sleep(1)
    assert not run.done()
    gates.finish("k")
    async with asyncio.timeout(10):
        assert await run == "inner k"
    assert await other == "k"
    assert loop.time() == 1.0


def _hold_a_run_in_a_loop(
    manager: TaskManager, loop: asyncio.AbstractEventLoop
) -> tuple[asyncio.Task[Any], asyncio.Future[str]]:
    """Start a run through ``manager`` in ``loop`` and leave it in flight (loop paused)."""
    gate: asyncio.Future[str] = loop.create_future()

    async def held() -> str:
        return await gate

    run = loop.create_task(manager.trigger_task(Task(name="held", task_function=held), "k"))
    loop.run_until_complete(asyncio.sleep(0))
    assert manager.statistics().running == 1
    return run, gate


@pytest.mark.parametrize("with_group", [True, False], ids=["group", "no-group"])
def test_a_manager_used_from_a_second_loop_while_runs_are_in_flight_raises(
    with_group: bool,
) -> None:
    manager = TaskManager()
    group = one_at_a_time()
    if with_group:
        manager.add_constraint_group(group)
    first = asyncio.new_event_loop()
    try:
        run, gate = _hold_a_run_in_a_loop(manager, first)

        async def from_another_loop() -> None:
            with pytest.raises(RuntimeError, match="another event loop"):
                await manager.trigger_task(named("second", "ran"), "k")
            with pytest.raises(RuntimeError, match="another event loop"):
                await manager.stop()

        asyncio.run(from_another_loop())
        # The first loop's run was not disturbed, and the group still counts it.
        if with_group:
            assert group.statistics().running == 1
        gate.set_result("held")
        assert first.run_until_complete(run) == "held"
    finally:
        first.close()
    # Its runs over, the manager (and group) serve a new loop as before.
    assert asyncio.run(manager.trigger_task(named("third", "ran"), "k")) == "ran"
    asyncio.run(manager.stop())


def test_a_group_used_from_a_second_loop_while_runs_are_in_flight_raises() -> None:
    """A group constrains one manager at a time, but its own API can be called from any
    loop: while runs are in flight in one loop it refuses another."""
    group = one_at_a_time()
    first_manager = TaskManager()
    first_manager.add_constraint_group(group)
    first = asyncio.new_event_loop()
    try:
        run, gate = _hold_a_run_in_a_loop(first_manager, first)

        async def from_another_loop() -> None:
            with pytest.raises(RuntimeError, match="constraint group 'one' has 1 runs"):
                group.acquire_slot("k")
            with pytest.raises(RuntimeError, match="another event loop"):
                group.can_run("k")

        asyncio.run(from_another_loop())
        gate.set_result("held")
        assert first.run_until_complete(run) == "held"
    finally:
        first.close()
    # Once that loop's runs are over, the group serves a new loop (and another manager).
    first_manager.remove_constraint_group("one")
    second_manager = TaskManager()
    second_manager.add_constraint_group(group)
    assert asyncio.run(second_manager.trigger_task(named("third", "ran"), "k")) == "ran"


# ----------------------------------------------------------------------------- statistics


async def test_statistics_snapshot() -> None:
    group = one_at_a_time()
    manager = TaskManager()
    manager.add_constraint_group(group)
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    manager.add_task(t)
    manager.add_task(named("other"))
    assert manager.statistics() == TaskManagerStatistics(tasks=2, running=0, waiting=0, scheduled=0)
    runs = [spawn(manager.trigger_task(t, x)) for x in ("a", "b", "c")]
    free = spawn(manager.trigger_task(Task(task_function=gates.function), "free"))
    await settle()
    # "free" is constrained by the same key, so it waits too.
    stats = manager.statistics()
    assert stats == TaskManagerStatistics(tasks=2, running=1, waiting=3, scheduled=0)
    assert all(type(v) is int for v in dataclasses.astuple(stats))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.running = 5  # type: ignore[misc]
    assert repr(manager) == "<TaskManager running=1 queued=3 tasks=2>"
    for x in ("a", "b", "c", "free"):
        await gates.wait_started(x)
        assert manager.statistics().running == 1
        gates.finish(x)
    await asyncio.gather(*runs, free)
    assert manager.statistics() == TaskManagerStatistics(tasks=2, running=0, waiting=0, scheduled=0)
    assert stats.running == 1  # the snapshot did not change


async def test_statistics_count_runs_without_constraints() -> None:
    manager = TaskManager()
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in range(3)]
    await settle()
    assert manager.statistics().running == 3
    for x in range(3):
        gates.finish(x)
    await asyncio.gather(*runs)
    assert manager.statistics().running == 0


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="distributed_coordinator must be"):
        TaskManager(distributed_coordinator="redis")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timezone must be"):
        TaskManager(timezone="UTC")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskManager(None)  # type: ignore[call-arg]


# ----------------------------------------------------------------------------------- spawn


async def test_spawn_from_a_synchronous_subscriber_runs_the_task() -> None:
    manager = TaskManager()
    notified: list[str] = []
    manager.add_task(Task(name="source", task_function=lambda: "ok"))
    manager.add_task(Task(name="notify", task_function=notified.append))
    runners: list[asyncio.Task[Any]] = []

    def on_event(event: TaskEvent) -> None:  # a plain function: it cannot await
        if event.task.name == "source":
            runners.append(manager.spawn("notify", event.type))

    subscription = manager.task_subject.subscribe(on_event)
    try:
        assert await manager.trigger_task_by_name("source") == "ok"
        async with asyncio.timeout(5):
            await asyncio.gather(*runners)
    finally:
        subscription.dispose()
    assert notified == ["started", "completed"]


def spawn_on_completion(
    manager: TaskManager, source: str, target: str
) -> tuple[list[weakref.ref[asyncio.Task[Any]]], asyncio.Event]:
    """Make a plain subscriber spawn ``target`` when ``source`` completes, keeping only a weak
    reference to what spawn returned; the event is set when ``target`` fails."""
    spawned: list[weakref.ref[asyncio.Task[Any]]] = []
    failed = asyncio.Event()

    def on_event(event: TaskEvent) -> None:
        if (event.task.name, event.type) == (source, "completed"):
            spawned.append(weakref.ref(manager.spawn(target)))
        elif (event.task.name, event.type) == (target, "failed"):
            failed.set()

    manager.task_subject.subscribe(on_event)
    return spawned, failed


def broken() -> None:
    raise ValueError("boom")


async def test_a_failed_spawned_run_is_logged_to_the_taskbuffer_logger(
    manager_events: Subscribe, caplog: pytest.LogCaptureFixture
) -> None:
    manager = TaskManager()
    manager.add_task(Task(name="broken", task_function=broken))
    manager.add_task(Task(name="source", task_function=lambda: "ok"))
    events = manager_events(manager)
    _, failed = spawn_on_completion(manager, "source", "broken")
    await manager.trigger_task_by_name("source")
    async with asyncio.timeout(5):
        await failed.wait()
    assert [(e.task.name, e.type) for e in events][-2:] == [
        ("broken", "started"),
        ("broken", "failed"),
    ]
    logged = [r for r in caplog.records if r.name == "taskbuffer" and r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in logged] == ["spawned run of task 'broken' failed"]
    assert logged[0].exc_info is not None and str(logged[0].exc_info[1]) == "boom"
    await manager.stop()


async def test_a_failed_spawned_run_leaves_no_exception_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A log record would hold the error, hence its task: silenced so the task can be collected.
    caplog.set_level(logging.CRITICAL, logger="taskbuffer")
    loop = asyncio.get_running_loop()
    complaints: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: complaints.append(context))
    try:
        manager = TaskManager()
        failing = Task(name="broken", task_function=broken)
        manager.add_task(failing)
        manager.add_task(Task(name="source", task_function=lambda: "ok"))
        spawned, failed = spawn_on_completion(manager, "source", "broken")
        await manager.trigger_task_by_name("source")
        async with asyncio.timeout(5):
            await failed.wait()
        await manager.stop()
        await settle()  # the task's done callbacks
        failing.clear_error()  # last_error's traceback holds the frames, hence the task
        gc.collect()  # asyncio reports an unretrieved exception when its task is collected
        assert spawned[0]() is None  # and the manager let the task go once it ended
    finally:
        loop.set_exception_handler(previous)
    assert complaints == []


async def test_awaiting_a_spawned_task_gives_the_trigger_result() -> None:
    manager = TaskManager()

    async def double(x: int) -> int:
        return 2 * x

    t = Task(name="double", task_function=double)
    manager.add_task(t)
    runner = manager.spawn(t, 21)
    assert_type(runner, "asyncio.Task[int | None]")
    assert await runner == 42
    assert await manager.spawn("double", 5) == 10
    # A task object need not be registered, as with trigger_task.
    assert await manager.spawn(Task(task_function=lambda: "free")) == "free"
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="never",
            constraint_key_for_execution=lambda t, i: "k",
            should_execute=lambda t, i: False,
        )
    )
    assert await manager.spawn(t, 1) is None  # skipped


async def test_spawned_triggers_are_counted_and_start_by_priority() -> None:
    manager = TaskManager()
    manager.add_constraint_group(one_at_a_time())
    gates = Gates()
    t = Task(name="job", task_function=gates.function)
    manager.add_task(t)
    runners = [manager.spawn(t, x, priority=p) for x, p in (("a", 0), ("b", 0), ("c", 5))]
    await settle()
    assert manager.statistics() == TaskManagerStatistics(tasks=1, running=1, waiting=2, scheduled=0)
    for x in ("a", "c", "b"):
        await gates.wait_started(x)
        gates.finish(x)
    async with asyncio.timeout(5):
        assert await asyncio.gather(*runners) == ["a", "b", "c"]
    assert gates.started == ["a", "c", "b"]
    assert manager.statistics().running == manager.statistics().waiting == 0


async def test_the_manager_keeps_a_spawned_task_until_it_ends() -> None:
    manager = TaskManager()
    loop = asyncio.get_running_loop()
    wakers: list[weakref.ref[asyncio.Future[str]]] = []

    async def waits() -> str:
        future: asyncio.Future[str] = loop.create_future()
        wakers.append(weakref.ref(future))  # only the run itself holds its future
        return await future

    runner = weakref.ref(manager.spawn(Task(name="waits", task_function=waits)))
    await settle()
    gc.collect()
    future = wakers[0]()
    assert future is not None and runner() is not None
    future.set_result("woken")
    del future
    await settle()
    assert runner() is None


async def test_stop_right_after_spawn_waits_for_the_spawned_run() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()

    async def work() -> str:
        await asyncio.sleep(3)
        return "done"

    manager.add_task(Task(name="job", task_function=work))
    await manager.start()
    runner = manager.spawn("job")  # not started yet when stop() is called
    await manager.stop()
    assert loop.time() == 3.0
    assert runner.result() == "done"


async def sleeps_then_returns(x: Any) -> Any:
    await asyncio.sleep(2)
    return x


async def test_stop_with_drain_runs_the_spawned_triggers_that_wait() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    manager.add_constraint_group(one_at_a_time())
    t = Task(name="job", task_function=sleeps_then_returns)
    runners = [manager.spawn(t, x) for x in (1, 2)]
    await manager.stop(drain=True)
    assert loop.time() == 4.0
    assert [runner.result() for runner in runners] == [1, 2]


async def test_stop_fails_a_waiting_spawned_trigger_and_logs_it_at_debug_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="taskbuffer")
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    manager.add_constraint_group(one_at_a_time())
    t = Task(name="job", task_function=sleeps_then_returns)
    runners = [manager.spawn(t, x) for x in (1, 2)]
    await manager.stop()
    assert loop.time() == 2.0
    assert runners[0].result() == 1
    assert isinstance(runners[1].exception(), TaskManagerStoppedError)
    records = [r for r in caplog.records if r.name == "taskbuffer"]
    assert not [r for r in records if r.levelno > logging.DEBUG]
    assert any(
        r.getMessage().startswith("spawned trigger of task 'job' did not complete") for r in records
    )


async def test_stop_timeout_cancels_a_spawned_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="taskbuffer")
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    t = Task(name="slow", task_function=lambda: asyncio.sleep(100))
    runner = manager.spawn(t)
    await settle()
    await manager.stop(timeout=2)
    assert loop.time() == 2.0
    assert isinstance(runner.exception(), TaskManagerStoppedError)
    assert (t.error_count, t.get_metadata().status) == (0, "idle")
    records = [r for r in caplog.records if r.name == "taskbuffer"]
    assert not [r for r in records if r.levelno > logging.DEBUG]
    assert any(
        r.getMessage().startswith("spawned trigger of task 'slow' did not complete")
        for r in records
    )


async def test_spawn_checks_its_arguments_at_the_call() -> None:
    manager = TaskManager()
    before = asyncio.all_tasks()
    with pytest.raises(TaskNotFoundError):
        manager.spawn("missing")
    with pytest.raises(
        TypeError, match="^task_or_name must be a Task or the name of a registered task, not 42$"
    ):
        manager.spawn(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="^priority must be an int, not True$"):
        manager.spawn(named("t"), priority=True)
    assert asyncio.all_tasks() == before


async def test_spawn_on_a_stopped_manager_raises_at_the_call() -> None:
    manager = TaskManager()
    t = named("t", "ok")
    await manager.start()
    await manager.stop()
    with pytest.raises(TaskManagerStoppedError):
        manager.spawn(t)
    await manager.start()
    assert await manager.spawn(t) == "ok"
    await manager.stop()


def test_spawn_without_a_running_loop_raises_naming_the_problem() -> None:
    with pytest.raises(RuntimeError, match=r"^TaskManager.spawn\(\) needs a running event loop"):
        TaskManager().spawn(named("t"))
