"""Runs: identity, per-run steps and progress, ``current_run()``, ``TaskEvent.run`` and the
manager's active runs (the contract's "Runs" section)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import pickle
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from _constraint_support import Gates, event_types, settle

from taskbuffer import (
    RunInfo,
    Task,
    Taskchain,
    TaskConstraintGroup,
    TaskEvent,
    TaskManager,
    TaskNotFoundError,
    Taskparallel,
    current_run,
)

Record = Callable[[Task[Any, Any]], list[TaskEvent]]

STEPS = [{"name": "parse", "percentage": 40}, {"name": "store", "percentage": 60}]


def key_group(name: str = "per-user", **options: Any) -> TaskConstraintGroup:
    return TaskConstraintGroup(
        name=name, constraint_key_for_execution=lambda _task, value: str(value)[0], **options
    )


# ------------------------------------------------------------------------------- identity


async def test_each_run_has_its_own_identity_and_input(record: Record) -> None:
    t = Task(name="echo", task_function=lambda value: value)
    events = record(t)
    first, second = {"n": 1}, {"n": 2}
    await t.trigger(first)
    await t.trigger(second)
    runs = [event.run for event in events]
    assert all(run is not None for run in runs)
    started, completed, started2, completed2 = (r for r in runs if r is not None)
    assert started.run_id == completed.run_id != started2.run_id == completed2.run_id
    assert len(started.run_id) == 32 and int(started.run_id, 16) >= 0
    assert started.run_id[12] == "4"  # a version 4 UUID's hex
    assert started.input is first and started2.input is second  # the object itself
    assert (started.task_name, started.state, completed.state) == ("echo", "running", "completed")
    assert started.started_at is not None and started.finished_at is None
    assert completed.finished_at is not None and completed.started_at == started.started_at
    assert (started.attempt, started.priority, started.job_id) == (1, 0, None)
    assert started.queued_at is None and started.blocked_by is None


async def test_a_run_snapshot_is_a_plain_frozen_run_info_however_it_is_read(
    record: Record,
) -> None:
    """Snapshots convert their instants to datetimes only when read (E2): whichever is read
    first, a snapshot compares, copies, pickles, prints and freezes as a plain RunInfo."""
    t = Task(name="lazy", task_function=lambda value: value)
    events = record(t)
    for value in range(3):
        await t.trigger(value)
    runs = [event.run for event in events]
    assert all(run is not None for run in runs)
    a, b, c, d, e, f = (run for run in runs if run is not None)
    assert a.started_at == datetime.fromtimestamp(events[0].timestamp, UTC)  # a datetime first
    assert a == copy.copy(a) and type(copy.copy(a)) is RunInfo
    assert b.input == 0 and b == pickle.loads(pickle.dumps(b))  # pickled before any datetime
    assert type(b) is RunInfo and b.finished_at is not None and b.finished_at.tzinfo is UTC
    assert "RunInfo(run_id=" in repr(c) and type(c) is RunInfo
    assert dataclasses.replace(d, state="failed").started_at == d.started_at
    assert dataclasses.asdict(e)["started_at"] == e.started_at
    for field in ("state", "started_at", "finished_at", "queued_at"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(f, field, None)
    assert f.queued_at is None and f.progress == 0
    assert len({a.run_id, c.run_id, e.run_id}) == 3


async def test_run_ids_are_unique_version_4_uuid_hex() -> None:
    seen: set[str] = set()

    def work(_value: int) -> None:
        info = current_run()
        assert info is not None
        seen.add(info.run_id)

    t = Task(name="ids", task_function=work)
    for value in range(1000):
        await t.trigger(value)
    assert len(seen) == 1000
    assert len({run_id[:8] for run_id in seen}) == 1000  # shortened ids still tell runs apart
    for run_id in seen:
        parsed = uuid.UUID(hex=run_id)
        assert parsed.hex == run_id and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


async def test_run_info_is_frozen_and_json_ready(record: Record) -> None:
    def work() -> None:
        t.notify_step("parse")

    t = Task(name="json", task_function=work, steps=STEPS)
    events = record(t)
    await t.trigger()
    run = events[-1].run
    assert isinstance(run, RunInfo)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.state = "failed"  # type: ignore[misc]
    as_dict = run.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["state"] == "completed" and as_dict["progress"] == 40
    assert as_dict["steps"][0]["status"] == "completed"
    assert isinstance(run.started_at, datetime) and run.started_at.tzinfo is not None
    assert events[-1].to_dict()["run"] == as_dict


async def test_reading_event_run_does_not_build_the_task_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import taskbuffer._snapshot

    built = 0
    original = taskbuffer._snapshot.make_metadata  # type: ignore[attr-defined]

    def counting(values: tuple[Any, ...]) -> Any:
        nonlocal built
        built += 1
        return original(values)

    monkeypatch.setattr(taskbuffer._snapshot, "make_metadata", counting)
    t = Task(name="t", task_function=lambda value: value)
    inputs: list[Any] = []
    subscription = t.event_subject.subscribe(lambda event: inputs.append(event.run.input))  # type: ignore[union-attr]
    await t.trigger(7)
    subscription.dispose()
    assert inputs == [7, 7] and built == 0


async def test_retrying_events_carry_the_attempt_that_follows(record: Record) -> None:
    failures = iter([ValueError("once")])

    def flaky() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    t = Task(name="flaky", task_function=flaky, retries=2)
    events = record(t)
    await t.trigger()
    assert [(e.type, e.run.attempt) for e in events if e.run] == [
        ("started", 1),
        ("retrying", 2),
        ("completed", 2),
    ]
    assert len({e.run.run_id for e in events if e.run}) == 1  # attempts belong to their run


# --------------------------------------------------------------------------- steps per run


async def test_three_concurrent_runs_each_report_their_own_progress() -> None:
    """Three runs of one task at once, each at its own step: their events and the manager's
    active runs tell them apart."""
    gates = Gates()

    async def work(value: str) -> str:
        pipeline.notify_step("parse")
        if value == "b":
            pipeline.notify_step("store")
        await gates.function(value)
        return value

    pipeline = Task(name="pipeline", task_function=work, steps=STEPS)
    manager = TaskManager()
    manager.add_task(pipeline)
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="cap", max_concurrent=3, constraint_key_for_execution=lambda _t, _v: "all"
        )
    )
    steps: list[tuple[Any, int]] = []
    manager.task_subject.subscribe(
        lambda e: steps.append((e.run.input, e.run.progress)) if e.type == "step" else None  # type: ignore[union-attr]
    )
    callers = [manager.spawn(pipeline, value) for value in "abc"]
    for value in "abc":
        await gates.wait_started(value)
    assert steps == [("a", 20), ("b", 20), ("b", 70), ("c", 20)]
    active = manager.get_active_runs()
    assert [(r.input, r.state, r.progress) for r in active] == [
        ("a", "running", 20),
        ("b", "running", 70),
        ("c", "running", 20),
    ]
    assert [s.status for s in active[1].steps] == ["completed", "active"]
    assert len({r.run_id for r in active}) == 3
    # The task's own view: the run started last that is still in flight.
    assert pipeline.get_progress() == 20
    gates.finish("c")
    await callers[2]
    assert pipeline.get_progress() == 70  # "b" started after "a"
    gates.finish("b")
    await callers[1]
    assert pipeline.get_progress() == 20
    gates.finish("a")
    await callers[0]
    assert pipeline.get_progress() == 40  # the last to finish: "a" reached parse only
    assert manager.get_active_runs() == []


async def test_notify_step_moves_the_run_in_whose_context_it_is_called(record: Record) -> None:
    async def deeper() -> None:
        await asyncio.sleep(0)
        t.notify_step("store")  # in a coroutine the function awaits

    async def work() -> None:
        t.notify_step("parse")
        await asyncio.get_running_loop().create_task(deeper())  # an asyncio task of the run

    t = Task(name="t", task_function=work, steps=STEPS)
    events = record(t)
    await t.trigger()
    steps = [e for e in events if e.type == "step"]
    assert [(e.step_name, e.run.progress) for e in steps if e.run] == [("parse", 20), ("store", 70)]
    assert steps[0].run and events[0].run and steps[0].run.run_id == events[0].run.run_id


async def test_notify_step_outside_a_run_of_its_task_raises() -> None:
    t = Task(name="t", task_function=lambda: None, steps=STEPS)
    with pytest.raises(RuntimeError, match="outside any run of task 't'"):
        t.notify_step("parse")
    other = Task(name="other", task_function=lambda: t.notify_step("parse"))
    with pytest.raises(RuntimeError, match="outside any run"):
        await other.trigger()
    with pytest.raises(ValueError, match="unknown step 'nope'"):  # the name is checked first
        t.notify_step("nope")


async def test_a_task_that_never_ran_shows_its_steps_pending() -> None:
    t = Task(name="t", task_function=lambda: None, steps=STEPS)
    assert t.get_progress() == 0
    assert [s.status for s in t.get_steps_metadata()] == ["pending", "pending"]


# ----------------------------------------------------------------------------- current_run


async def test_current_run_is_right_inside_nested_awaits_and_none_outside() -> None:
    seen: list[RunInfo | None] = []

    async def inner() -> None:
        await asyncio.sleep(0)
        seen.append(current_run())

    async def work(value: int) -> int:
        seen.append(current_run())
        await inner()
        await nested.trigger(value)  # a run of another task inside this one
        seen.append(current_run())
        return value

    async def nested_work(value: int) -> None:
        seen.append(current_run())

    nested = Task(name="nested", task_function=nested_work)
    t = Task(name="outer", task_function=work)
    assert current_run() is None
    await t.trigger(5)
    assert current_run() is None
    outer1, outer2, inner_run, outer3 = seen
    assert outer1 is not None and outer2 is not None and outer3 is not None
    assert inner_run is not None and inner_run.task_name == "nested"
    assert outer1.run_id == outer2.run_id == outer3.run_id != inner_run.run_id
    assert (outer1.task_name, outer1.input, outer1.state) == ("outer", 5, "running")


async def test_pre_and_after_tasks_run_inside_their_owners_run() -> None:
    seen: dict[str, RunInfo | None] = {}

    def note(name: str) -> Callable[..., None]:
        def function(_value: Any = None) -> None:
            seen[name] = current_run()

        return function

    t = Task(
        name="owner",
        task_function=note("owner"),
        pre_task=Task(name="pre", task_function=note("pre")),
        after_task=Task(name="after", task_function=note("after")),
    )
    await t.trigger()
    owner = seen["owner"]
    assert owner is not None and owner.task_name == "owner"
    assert seen["pre"] == owner or (seen["pre"] and seen["pre"].run_id == owner.run_id)
    assert seen["after"] is not None and seen["after"].run_id == owner.run_id


async def test_chain_and_parallel_members_have_runs_of_their_own() -> None:
    seen: list[RunInfo | None] = []

    def member(name: str) -> Task[Any, Any]:
        def work(value: Any) -> Any:
            seen.append(current_run())
            return value

        return Task(name=name, task_function=work)

    chain = Taskchain(name="chain", task_array=[member("a"), member("b")])
    parallel = Taskparallel(name="parallel", task_array=[member("c"), member("d")])
    await chain.trigger(1)
    await parallel.trigger(2)
    assert [r.task_name for r in seen if r] == ["a", "b", "c", "d"]
    assert len({r.run_id for r in seen if r}) == 4


# ------------------------------------------------------------------------ manager and runs


async def test_a_queued_event_names_the_group_and_key_that_block_it() -> None:
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    manager = TaskManager()
    manager.add_task(t)
    manager.add_constraint_group(key_group(max_concurrent=1))
    events: list[TaskEvent] = []
    manager.task_subject.subscribe(events.append)
    first = manager.spawn(t, "u1")
    await gates.wait_started("u1")
    second = manager.spawn(t, "u2", priority=1)
    await settle()
    [queued] = [e for e in events if e.type == "queued"]
    assert queued.run is not None
    assert (queued.run.state, queued.run.blocked_by) == ("waiting", ("per-user", "u"))
    assert queued.run.queued_at is not None and queued.run.started_at is None
    assert (queued.run.input, queued.run.priority) == ("u2", 1)
    gates.finish("u1")
    await gates.wait_started("u2")
    gates.finish("u2")
    await asyncio.gather(first, second)
    started = [e.run for e in events if e.type == "started" and e.run and e.run.input == "u2"]
    assert started[0] is not None and started[0].run_id == queued.run.run_id


async def test_a_waiting_run_has_no_steps_of_the_run_ahead_and_no_blocker_once_started() -> None:
    # A queued event's run once showed the steps and progress of the task's running run, and
    # a run kept naming the key it had waited for after it started.
    proceed = {"u1": asyncio.Event(), "u2": asyncio.Event()}

    async def work(user: str) -> None:
        t.notify_step("parse")
        await proceed[user].wait()

    t = Task(name="t", task_function=work, steps=STEPS)
    manager = TaskManager()
    manager.add_task(t)
    manager.add_constraint_group(key_group(max_concurrent=1))
    events: list[TaskEvent] = []
    manager.task_subject.subscribe(events.append)
    first = manager.spawn(t, "u1")
    await settle()
    second = manager.spawn(t, "u2")
    await settle()
    [queued] = [e.run for e in events if e.type == "queued"]
    assert queued is not None and queued.blocked_by == ("per-user", "u")
    assert (queued.steps, queued.progress) == ([], 0)
    proceed["u1"].set()
    await first
    await settle()
    [waiting] = [r for r in manager.get_active_runs() if r.input == "u2"]
    assert (waiting.state, waiting.blocked_by) == ("running", None)
    proceed["u2"].set()
    await second
    later = [e.run for e in events if e.run and e.run.input == "u2" and e.type != "queued"]
    assert later and all(run.blocked_by is None for run in later)


async def test_active_runs_list_waiting_ones_in_the_order_they_would_start() -> None:
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    manager = TaskManager()

    def listing() -> list[RunInfo]:
        return manager.get_active_runs(task_name="other")

    other = Task(name="other", task_function=listing)
    manager.add_task(t)
    manager.add_task(other)
    manager.add_constraint_group(key_group(max_concurrent=1))
    callers = [manager.spawn(t, "x0")]
    await gates.wait_started("x0")
    callers += [
        manager.spawn(t, value, priority=p) for value, p in (("x1", 0), ("x2", 5), ("x3", 0))
    ]
    await settle()
    assert await other.trigger() == []  # a direct trigger's run is not the manager's
    active = manager.get_active_runs(task_name="t")
    assert [(r.input, r.state) for r in active] == [
        ("x0", "running"),
        ("x2", "waiting"),
        ("x1", "waiting"),
        ("x3", "waiting"),
    ]
    assert manager.get_active_runs(task_name="other") == []
    with pytest.raises(TaskNotFoundError):
        manager.get_active_runs(task_name="nope")
    for value in ("x0", "x2", "x1", "x3"):
        await gates.wait_started(value)
        gates.finish(value)
    await asyncio.gather(*callers)
    assert manager.get_active_runs() == []


async def test_a_skipped_trigger_carries_its_run(record: Record) -> None:
    t = Task(name="t", task_function=lambda: None)
    events = record(t)
    manager = TaskManager()
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="never",
            constraint_key_for_execution=lambda _t, _v: "k",
            should_execute=lambda _t, _v: False,
        )
    )
    assert await manager.trigger_task(t, "in") is None
    assert event_types(events) == ["skipped"]
    run = events[0].run
    assert run is not None and (run.state, run.input, run.started_at) == ("skipped", "in", None)


async def test_a_share_latest_waiter_completes_with_its_own_run_or_is_cancelled() -> None:
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    manager = TaskManager()
    manager.add_constraint_group(key_group(max_concurrent=1, result_sharing="share-latest"))
    events: list[TaskEvent] = []
    t.event_subject.subscribe(events.append)
    first = manager.spawn(t, "a1")
    await gates.wait_started("a1")
    sharer, leaver = manager.spawn(t, "a2"), manager.spawn(t, "a3")
    await settle()
    leaver.cancel()
    await settle()
    gates.finish("a1", "result")
    assert await asyncio.gather(first, sharer) == ["result", "result"]
    by_input = {e.run.input: e for e in events if e.run and e.type in ("completed", "cancelled")}
    shared = by_input["a2"].run
    assert by_input["a2"].type == "completed" and shared is not None
    assert (shared.state, shared.started_at) == ("completed", None)
    assert shared.finished_at is not None
    assert by_input["a3"].type == "cancelled" and by_input["a3"].run
    assert by_input["a3"].run.state == "cancelled"
    assert gates.started == ["a1"]


async def test_a_registered_chains_member_events_carry_the_members_run() -> None:
    failures = iter([ConnectionError("flaky")])

    def flaky(value: int) -> int:
        error = next(failures, None)
        if error is not None:
            raise error
        return value + 1

    member = Task(name="member", task_function=flaky, retries=1)
    chain = Taskchain(name="chain", task_array=[member])
    manager = TaskManager()
    manager.add_task(chain)
    events: list[TaskEvent] = []
    manager.task_subject.subscribe(events.append)
    assert await manager.trigger_task_by_name("chain", 1) == 2
    runs = {(e.task.name, e.type): e.run for e in events}
    member_run, chain_run = runs[("member", "retrying")], runs[("chain", "started")]
    assert member_run is not None and chain_run is not None
    assert member_run.task_name == "member" and member_run.attempt == 2
    assert member_run.run_id != chain_run.run_id


async def test_runs_of_spawn_and_by_name_triggers_are_the_managers() -> None:
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    manager = TaskManager()
    manager.add_task(t)
    by_name = asyncio.get_running_loop().create_task(manager.trigger_task_by_name("t", "n"))
    spawned = manager.spawn(t, "s")
    await gates.wait_started("n")
    await gates.wait_started("s")
    assert sorted(r.input for r in manager.get_active_runs()) == ["n", "s"]
    gates.finish("n")
    gates.finish("s")
    await asyncio.gather(by_name, spawned)
    assert manager.get_active_runs() == []
