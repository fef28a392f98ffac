"""Lifecycle events: order, snapshots taken at emission time, subscriber isolation."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import pickle
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import reactivex.internal
from reactivex.subject import Subject

import taskbuffer._metadata
import taskbuffer._task
from taskbuffer import (
    Task,
    Taskchain,
    TaskChainError,
    TaskEvent,
    TaskExecutionError,
    TaskManager,
    TaskMetadata,
)

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


def types(events: list[TaskEvent]) -> list[str]:
    return [event.type for event in events]


def test_event_subject_is_a_reactivex_subject() -> None:
    assert isinstance(Task(task_function=lambda: None).event_subject, Subject)


async def test_successful_run_emits_started_steps_completed(record: Record) -> None:
    def function() -> str:
        t.notify_step("one")
        t.notify_step("two")
        return "ok"

    t = Task(
        name="events",
        task_function=function,
        steps=[{"name": "one", "percentage": 50}, {"name": "two", "percentage": 50}],
    )
    events = record(t)
    await t.trigger()
    assert types(events) == ["started", "step", "step", "completed"]
    assert [event.step_name for event in events] == [None, "one", "two", None]
    assert [event.error for event in events] == [None] * 4
    assert [event.task.status for event in events] == ["running", "running", "running", "completed"]
    assert {event.task.name for event in events} == {"events"}


async def test_failed_run_emits_failed_with_the_message(record: Record) -> None:
    def fail() -> None:
        raise ValueError("it broke")

    t = Task(task_function=fail)
    events = record(t)
    with pytest.raises(ValueError):
        await t.trigger()
    assert types(events) == ["started", "failed"]
    failed = events[-1]
    assert failed.error == "it broke"
    assert failed.task.status == "failed"
    assert (failed.task.last_error, failed.task.error_count) == ("it broke", 1)


async def test_error_without_a_message_is_named_by_its_type(record: Record) -> None:
    def fail() -> None:
        raise KeyError

    t = Task(task_function=fail, catch_errors=True)
    events = record(t)
    await t.trigger()
    assert events[-1].error == "KeyError"


async def test_snapshots_hold_the_state_at_emission_time(record: Record) -> None:
    """Snapshots read after the run show each event's own moment, not the current state."""

    async def function(fail: bool) -> None:
        t.notify_step("half")
        t.set_label("phase", "inside")
        await asyncio.sleep(1)
        if fail:
            raise ValueError("second run fails")

    t = Task(
        task_function=function,
        labels={"phase": "before"},
        steps=[{"name": "half", "percentage": 50}, {"name": "rest", "percentage": 50}],
    )
    events = record(t)
    await t.trigger(False)
    t.set_label("phase", "between")
    with pytest.raises(ValueError):
        await t.trigger(True)
    t.set_label("phase", "after")

    assert types(events) == ["started", "step", "completed", "started", "step", "failed"]
    snapshots = [event.task for event in events]
    assert [s.status for s in snapshots] == [
        "running",
        "running",
        "completed",
        "running",
        "running",
        "failed",
    ]
    assert [s.run_count for s in snapshots] == [1, 1, 1, 2, 2, 2]
    assert [s.error_count for s in snapshots] == [0, 0, 0, 0, 0, 1]
    assert [s.labels["phase"] for s in snapshots] == [
        "before",
        "before",
        "inside",
        "between",
        "between",
        "inside",
    ]
    assert [s.current_step for s in snapshots] == [None, "half", None, None, "half", None]
    assert [s.current_progress for s in snapshots] == [0, 25, 50, 0, 25, 50]
    assert [[step.status for step in s.steps] for s in snapshots] == [
        ["pending", "pending"],
        ["active", "pending"],
        ["completed", "completed"],
        ["pending", "pending"],
        ["active", "pending"],
        ["completed", "completed"],
    ]
    assert [s.last_error for s in snapshots] == [None] * 5 + ["second run fails"]
    assert snapshots[0].average_duration is None
    assert snapshots[2].average_duration == 1.0
    assert snapshots[0].last_run is not None and snapshots[3].last_run is not None
    assert (snapshots[3].last_run - snapshots[0].last_run).total_seconds() == pytest.approx(1.0)


async def test_timestamps_are_epoch_seconds_on_the_loop_clock(record: Record) -> None:
    loop = asyncio.get_running_loop()

    async def function() -> None:
        await asyncio.sleep(5)

    t = Task(task_function=function)
    events = record(t)
    await t.trigger()
    started, completed = events
    assert completed.timestamp - started.timestamp == pytest.approx(5.0)
    assert loop.time() == 5.0
    last_run = started.task.last_run
    assert last_run is not None
    assert last_run.timestamp() == pytest.approx(started.timestamp)


async def test_event_and_metadata_are_frozen_and_json_ready(record: Record) -> None:
    t: Task[None]
    t = Task(name="json", task_function=lambda: t.notify_step("s"), steps=[{"name": "s"}])
    events = record(t)
    await t.trigger()
    for event in events:
        as_dict = event.to_dict()
        assert json.loads(json.dumps(as_dict)) == as_dict
        assert as_dict["type"] == event.type
        assert as_dict["task"]["name"] == "json"
        assert isinstance(event.task, TaskMetadata)
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].type = "failed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].task.status = "failed"  # type: ignore[misc]


async def test_subscriber_that_raises_is_logged_and_isolated(
    record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(event: TaskEvent) -> None:
        calls.append(f"broken:{event.type}")
        raise RuntimeError("subscriber bug")

    t = Task(name="isolated", task_function=lambda x: x * 2)
    before = record(t)
    subscription = t.event_subject.subscribe(broken)
    after = record(t)
    with caplog.at_level(logging.ERROR, logger="taskbuffer"):
        assert await t.trigger(21) == 42
        assert await t.trigger(1) == 2
    subscription.dispose()

    assert types(before) == types(after) == ["started", "completed"] * 2
    # It stays subscribed: it saw every event.
    assert calls == ["broken:started", "broken:completed"] * 2
    records = [r for r in caplog.records if r.name == "taskbuffer"]
    assert len(records) == 4
    for log_record in records:
        assert log_record.levelno == logging.ERROR
        assert "isolated" in log_record.getMessage()
        assert log_record.exc_info is not None
        assert isinstance(log_record.exc_info[1], RuntimeError)
    assert (t.run_count, t.error_count) == (2, 0)


async def test_disposed_subscription_receives_nothing_more() -> None:
    t = Task(task_function=lambda: None)
    events: list[TaskEvent] = []
    subscription = t.event_subject.subscribe(events.append)
    await t.trigger()
    subscription.dispose()
    await t.trigger()
    assert types(events) == ["started", "completed"]


async def test_no_metadata_is_built_without_subscribers(monkeypatch: pytest.MonkeyPatch) -> None:
    built = 0
    original = taskbuffer._metadata.make_metadata

    def counting(values: tuple[Any, ...]) -> TaskMetadata:
        nonlocal built
        built += 1
        return original(values)

    monkeypatch.setattr(taskbuffer._snapshot, "make_metadata", counting)

    def function(fail: bool) -> None:
        t.notify_step("s")
        if fail:
            raise ValueError("no")

    t = Task(task_function=function, steps=[{"name": "s"}], retries=1, catch_errors=True)
    await t.trigger(False)
    await t.trigger(True)
    assert built == 0

    # The spy does see snapshots: a subscriber that reads them makes them.
    statuses: list[str] = []
    subscription = t.event_subject.subscribe(lambda event: statuses.append(event.task.status))
    await t.trigger(False)
    subscription.dispose()
    assert statuses == ["running", "running", "completed"]
    assert built == 3


async def test_emitting_builds_no_event_without_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without subscribers, a run creates no event object at all (and so no snapshot)."""
    created: list[type] = []

    class Counting(taskbuffer._events.PendingEvent):
        __slots__ = ()

        def __init__(self) -> None:
            created.append(type(self))

    monkeypatch.setattr(taskbuffer._emitter, "PendingEvent", Counting)

    def function(fail: bool) -> None:
        t.notify_step("s")
        if fail:
            raise ValueError("no")

    t = Task(task_function=function, steps=[{"name": "s"}], retries=1, catch_errors=True)
    await t.trigger(False)
    await t.trigger(True)
    assert created == []

    # The probe does see events once somebody subscribes (started, step, completed).
    subscription = t.event_subject.subscribe(lambda event: None)
    await t.trigger(False)
    subscription.dispose()
    assert len(created) == 3


async def test_events_copy_pickle_and_compare_by_value(record: Record) -> None:
    t = Task(name="copied", task_function=lambda: None, labels={"k": "v"})
    events = record(t)
    await t.trigger()
    await t.trigger()
    started, completed, started_again, completed_again = events

    # Copies and pickles of events nobody has read yet.
    copied = copy.copy(started)
    assert type(copied) is TaskEvent
    assert copied == started
    assert copied.task.status == "running"
    restored = pickle.loads(pickle.dumps(completed))
    assert type(restored) is TaskEvent
    assert restored == completed
    assert restored.task.labels == {"k": "v"}
    assert restored.task.status == "completed"
    assert dataclasses.replace(completed, type="failed").task == completed.task

    # Comparing events nobody has read yet.
    assert started_again != completed_again
    assert started_again.task.run_count == completed_again.task.run_count == 2


async def test_an_event_nobody_has_read_yet_shows_as_a_task_event(record: Record) -> None:
    t = Task(name="shown", task_function=lambda: None)
    events = record(t)
    await t.trigger()
    started, completed = events
    assert repr(started).startswith("TaskEvent(type='started', task=TaskMetadata(name='shown'")
    assert repr(completed) == repr(copy.copy(completed))  # the same as a plain TaskEvent
    assert str(started) == repr(started)


async def test_a_completed_subject_delivers_nothing(record: Record) -> None:
    t = Task(task_function=lambda: None)
    events = record(t)
    await t.trigger()
    t.event_subject.on_completed()
    t.event_subject.on_next(events[0])
    await t.trigger()
    assert types(events) == ["started", "completed"]
    assert t.run_count == 2


async def test_events_nobody_has_read_are_frozen_too() -> None:
    """An event is read-only from the moment it is emitted, not only once its ``task`` is read."""
    t = Task(name="frozen", task_function=lambda: None)
    events: list[TaskEvent] = []
    subscription = t.event_subject.subscribe(events.append)
    await t.trigger()
    subscription.dispose()
    started = events[0]
    for field in ("type", "task", "timestamp", "step_name", "error"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(started, field, None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(started, field)
    with pytest.raises(AttributeError):
        started.extra = 1  # type: ignore[attr-defined]
    assert (started.type, started.step_name, started.error) == ("started", None, None)
    assert started.task.name == "frozen"


@pytest.mark.parametrize("subject_of", ["task", "manager"])
async def test_deliveries_follow_every_change_of_the_subscribers(subject_of: str) -> None:
    """One subscriber, several, none, and back: each gets exactly the events of its time."""
    t = Task(name="followed", task_function=lambda: None)
    manager = TaskManager()
    manager.add_task(t)
    subject = t.event_subject if subject_of == "task" else manager.task_subject
    a: list[str] = []
    b: list[str] = []
    c: list[str] = []

    first = subject.subscribe(lambda event: a.append(event.type))
    await t.trigger()
    second = subject.subscribe(lambda event: b.append(event.type))
    await t.trigger()
    first.dispose()
    await t.trigger()
    second.dispose()
    await t.trigger()
    third = subject.subscribe(lambda event: c.append(event.type))
    await t.trigger()
    third.dispose()
    third.dispose()  # twice is harmless
    await t.trigger()
    # Events still flow (to a subscriber of the other subject), and none reaches a
    # subscription that has ended.
    other = manager.task_subject if subject_of == "task" else t.event_subject
    bystander: list[str] = []
    other.subscribe(lambda event: bystander.append(event.type))
    await t.trigger()

    run = ["started", "completed"]
    assert (a, b, c) == (run * 2, run * 2, run)
    assert bystander == run
    assert t.run_count == 7


@pytest.mark.parametrize("end", ["on_completed", "on_error", "dispose"])
@pytest.mark.parametrize("subject_of", ["task", "manager"])
async def test_a_subject_that_ends_delivers_nothing_more(subject_of: str, end: str) -> None:
    def function() -> None:
        if t.run_count == 2:  # the second run ends the subject, midway
            if end == "on_error":
                subject.on_error(RuntimeError("closed"))
            else:
                getattr(subject, end)()

    t = Task(name="ending", task_function=function, steps=[{"name": "while ending"}])
    manager = TaskManager()
    manager.add_task(t)
    subject = t.event_subject if subject_of == "task" else manager.task_subject
    other = manager.task_subject if subject_of == "task" else t.event_subject
    seen: list[str] = []
    bystander: list[str] = []

    def on_end(error: Exception | None = None) -> None:
        # An event emitted while the subscriber hears of the end does not reach it either.
        t.notify_step("while ending")

    subject.subscribe(lambda event: seen.append(event.type), on_end, on_end)
    await t.trigger()
    await t.trigger()  # ends the subject after its "started"
    await t.trigger()  # nobody listens now
    other.subscribe(lambda event: bystander.append(event.type))
    await t.trigger()
    assert seen == ["started", "completed", "started"]
    assert bystander == ["started", "completed"]
    assert t.run_count == 4


async def test_a_subscriber_can_unsubscribe_itself_and_others_mid_event() -> None:
    t = Task(task_function=lambda: None)
    seen: list[str] = []
    subscriptions: dict[str, Any] = {}

    def first(event: TaskEvent) -> None:
        seen.append(f"first:{event.type}")
        subscriptions["first"].dispose()  # itself, during its first event
        subscriptions["second"].dispose()  # and the next one, before it is called

    def second(event: TaskEvent) -> None:
        seen.append(f"second:{event.type}")

    subscriptions["first"] = t.event_subject.subscribe(first)
    subscriptions["second"] = t.event_subject.subscribe(second)
    await t.trigger()
    assert seen == ["first:started"]

    # The sole subscriber unsubscribes itself: it gets nothing after that.
    alone: list[str] = []

    def once(event: TaskEvent) -> None:
        alone.append(event.type)
        subscriptions["once"].dispose()

    subscriptions["once"] = t.event_subject.subscribe(once)
    await t.trigger()
    await t.trigger()
    assert alone == ["started"]


async def test_an_observer_object_and_a_callback_subscribe_alike(record: Record) -> None:
    class Observer:
        def __init__(self) -> None:
            self.types: list[str] = []

        def on_next(self, event: TaskEvent) -> None:
            self.types.append(event.type)

        def on_error(self, error: Exception) -> None:
            raise AssertionError("no error expected")

        def on_completed(self) -> None:
            self.types.append("<completed>")

    t = Task(task_function=lambda: None)
    observer = Observer()
    t.event_subject.subscribe(observer)
    await t.trigger()
    t.event_subject.on_completed()
    await t.trigger()
    assert observer.types == ["started", "completed", "<completed>"]


async def test_an_ended_or_disposed_subject_delivers_nothing_and_takes_no_subscriber() -> None:
    ended = Task(task_function=lambda: None)
    errors: list[Exception] = []
    events: list[TaskEvent] = []
    ended.event_subject.subscribe(events.append, errors.append)
    problem = RuntimeError("stream closed")
    ended.event_subject.on_error(problem)
    await ended.trigger()
    late_errors: list[Exception] = []
    ended.event_subject.subscribe(events.append, late_errors.append)
    await ended.trigger()
    assert (events, errors, late_errors) == ([], [problem], [problem])

    disposed = Task(task_function=lambda: None)
    disposed.event_subject.subscribe(events.append)
    disposed.event_subject.dispose()
    assert await disposed.trigger() is None
    assert events == []
    with pytest.raises(reactivex.internal.DisposedException):
        disposed.event_subject.subscribe(events.append)


async def test_a_snapshot_read_from_an_event_is_a_plain_frozen_metadata(record: Record) -> None:
    t = Task(name="plain", version="1", task_function=lambda: None, labels={"k": "v"})
    events = record(t)
    await t.trigger()
    snapshot = events[-1].task
    assert type(snapshot) is TaskMetadata
    assert snapshot == t.get_metadata()
    fields = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot)}
    assert isinstance(fields.pop("last_run"), datetime)
    assert isinstance(fields.pop("average_duration"), float)
    assert fields == {
        "name": "plain",
        "version": "1",
        "status": "completed",
        "steps": [],
        "current_step": None,
        "current_progress": 0,
        "run_count": 1,
        "labels": {"k": "v"},
        "last_error": None,
        "error_count": 0,
        "next_run": None,
        "cron_schedule": None,
        "buffered": False,
        "buffer_max": None,
        "timeout": None,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.name = "other"  # type: ignore[misc]

    # The started event's snapshot, field by field (run() builds its tuple in place).
    fields = {f.name: getattr(events[0].task, f.name) for f in dataclasses.fields(snapshot)}
    assert fields.pop("last_run") == snapshot.last_run
    assert fields == {
        "name": "plain",
        "version": "1",
        "status": "running",
        "steps": [],
        "current_step": None,
        "current_progress": 0,
        "run_count": 1,
        "labels": {"k": "v"},
        "last_error": None,
        "error_count": 0,
        "next_run": None,
        "cron_schedule": None,
        "buffered": False,
        "buffer_max": None,
        "timeout": None,
        "average_duration": None,
    }


# ------------------------------------------------------- hostile errors and subscribers


class UnprintableError(Exception):
    """An error whose message cannot be rendered: its ``__str__`` and ``__repr__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


UNPRINTABLE = "<UnprintableError object: str() failed: RuntimeError>"


async def test_an_error_whose_str_raises_fails_the_run_with_that_error(record: Record) -> None:
    fail = True

    async def work() -> str:
        if fail:
            raise UnprintableError()
        return "ok"

    t = Task(name="hostile", task_function=work)
    events = record(t)
    with pytest.raises(UnprintableError):
        await t.trigger()
    assert (t.running, t.error_count) == (False, 1)
    metadata = t.get_metadata()
    assert (metadata.status, metadata.last_error) == ("failed", UNPRINTABLE)
    assert [(e.type, e.error) for e in events] == [("started", None), ("failed", UNPRINTABLE)]
    assert events[-1].task.last_error == UNPRINTABLE

    # The next run, with a subscriber that reads the snapshot (last_error included), completes.
    fail = False
    snapshots: list[TaskMetadata] = []
    subscription = t.event_subject.subscribe(lambda event: snapshots.append(event.task))
    assert await t.trigger() == "ok"
    subscription.dispose()
    assert [s.last_error for s in snapshots] == [UNPRINTABLE, None]
    assert (t.running, t.get_metadata().status) == (False, "completed")


async def test_an_unprintable_error_inside_a_chain_or_a_report_still_gives_their_errors() -> None:
    async def work() -> None:
        raise UnprintableError()

    chain = Taskchain(name="c", task_array=[Task(name="inner", task_function=work)])
    with pytest.raises(TaskChainError) as chained:
        await chain.trigger()
    assert str(chained.value).endswith(f"UnprintableError: {UNPRINTABLE}")

    manager = TaskManager()
    with pytest.raises(TaskExecutionError) as failed:
        await manager.add_execute_remove_task(Task(name="t", task_function=work))
    assert failed.value.report.to_dict()["error"] == UNPRINTABLE
    json.dumps(failed.value.report.to_dict())


async def test_an_error_with_an_empty_message_shows_its_type_in_events_and_snapshots(
    record: Record,
) -> None:
    async def work() -> None:
        raise LookupError()

    t = Task(name="silent", task_function=work)
    events = record(t)
    with pytest.raises(LookupError):
        await t.trigger()
    assert events[-1].error == events[-1].task.last_error == "LookupError"
    assert t.get_metadata().last_error == "LookupError"
    manager = TaskManager()
    with pytest.raises(TaskExecutionError) as failed:
        await manager.add_execute_remove_task(Task(name="r", task_function=work))
    assert failed.value.report.to_dict()["error"] == "LookupError"


class Halt(BaseException):
    """A BaseException that is neither an Exception nor a cancellation."""


def error_whose_str_raises(raised: type[BaseException]) -> BaseException:
    """An error whose ``__str__`` and ``__repr__`` raise ``raised`` (not an Exception)."""

    class HostileError(Exception):
        def __str__(self) -> str:
            raise raised()

        def __repr__(self) -> str:
            raise raised()

    return HostileError()


@pytest.mark.parametrize("raised", [Halt, GeneratorExit, asyncio.CancelledError])
async def test_an_error_whose_str_raises_a_base_exception_still_fails_the_run_with_it(
    record: Record, raised: type[BaseException]
) -> None:
    error = error_whose_str_raises(raised)

    async def work() -> None:
        raise error

    t = Task(name="hostile", task_function=work)
    events = record(t)
    with pytest.raises(type(error)):
        await t.trigger()
    shown = f"<{type(error).__qualname__} object: str() failed: {raised.__qualname__}>"
    assert (t.running, t.error_count, t.get_metadata().last_error) == (False, 1, shown)
    assert [(e.type, e.error) for e in events] == [("started", None), ("failed", shown)]
    chained = Taskchain(name="c", task_array=[t])
    with pytest.raises(TaskChainError, match="str\\(\\) failed"):
        await chained.trigger()


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_an_error_whose_str_raises_an_interrupt_is_recorded_then_the_interrupt_propagates(
    raised: type[BaseException],
) -> None:
    """The run fails with its own error; the interrupt comes out of the loop afterwards."""
    error = error_whose_str_raises(raised)

    async def work() -> None:
        raise error

    t = Task(name="hostile", task_function=work)
    events: list[tuple[str, str | None]] = []
    t.event_subject.subscribe(lambda event: events.append((event.type, event.error)))
    failures: list[BaseException] = []
    shown = f"<{type(error).__qualname__} object: str() failed: {raised.__qualname__}>"

    async def main() -> None:
        try:
            await t.trigger()
        except BaseException as exc:
            failures.append(exc)
        assert t.get_metadata().last_error == shown
        await asyncio.sleep(1)  # the loop goes on: the interrupt comes out of it

    with pytest.raises(raised):
        asyncio.run(main())
    assert failures == [error]
    assert events == [("started", None), ("failed", shown)]
    assert (t.running, t.error_count, t.last_error) == (False, 1, error)


@pytest.mark.parametrize("error_type", [Halt, GeneratorExit, asyncio.CancelledError])
@pytest.mark.parametrize("subject_of", ["task", "manager", "both"])
async def test_a_subscriber_raising_a_base_exception_never_breaks_the_run(
    error_type: type[BaseException], subject_of: str, caplog: pytest.LogCaptureFixture
) -> None:
    t = Task(name="guarded", task_function=lambda x: x * 2)
    manager = TaskManager()
    manager.add_task(t)
    seen: list[str] = []

    def hostile(event: TaskEvent) -> None:
        raise error_type("subscriber")

    subjects = {"task": [t.event_subject], "manager": [manager.task_subject]}
    subjects["both"] = subjects["task"] + subjects["manager"]
    for subject in subjects[subject_of]:
        subject.subscribe(hostile)
    t.event_subject.subscribe(lambda event: seen.append(event.type))
    with caplog.at_level(logging.ERROR, logger="taskbuffer"):
        assert await t.trigger(21) == 42
        assert await manager.trigger_task(t, 1) == 2
    assert seen == ["started", "completed"] * 2
    assert (t.running, t.run_count, t.error_count) == (False, 2, 0)
    records = [r for r in caplog.records if r.name == "taskbuffer"]
    assert len(records) == 4 * len(subjects[subject_of])
    assert all(r.exc_info and isinstance(r.exc_info[1], error_type) for r in records)
    assert all("'guarded'" in r.getMessage() for r in records)


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_subscriber_raising_an_interrupt_lets_the_bookkeeping_finish_then_it_propagates(
    error_type: type[BaseException], is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Logged, the other subscribers get the event, then it is raised from the event loop."""

    async def slow(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 2

    t = Task(name="interrupted", task_function=slow if is_async else (lambda x: x * 2))
    interrupting: list[str] = []
    others: list[str] = []

    def interrupt(event: TaskEvent) -> None:
        interrupting.append(event.type)
        if event.type == "started":
            raise error_type()

    t.event_subject.subscribe(interrupt)
    t.event_subject.subscribe(lambda event: others.append(event.type))
    results: list[int] = []

    async def main() -> None:
        results.append(await t.trigger(21))
        await asyncio.sleep(1)  # the loop goes on: the interrupt comes out of it

    with pytest.raises(error_type):
        asyncio.run(main())
    # A sync run finished before the loop got to the interrupt; an async one was cancelled
    # by asyncio.run() on its way out. Either way the bookkeeping is complete.
    end = ["completed"] if not is_async else ["cancelled"]
    assert interrupting == others == ["started", *end]
    assert results == ([42] if not is_async else [])
    assert (t.running, t.run_count, t.error_count) == (False, 1, 0)
    # (a cancelled run neither completes nor fails: the status stays what it was)
    assert t.get_metadata().status == ("completed" if not is_async else "idle")
    logged = [r for r in caplog.records if r.name == "taskbuffer" and r.levelno == logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], error_type)


# -------------------------------------------------- subscribing during an event


@pytest.mark.parametrize("listeners", ["task only", "task and manager"])
async def test_a_subscription_made_during_an_event_starts_with_the_next_event(
    listeners: str,
) -> None:
    t = Task(name="growing", task_function=lambda: None)
    manager = TaskManager()
    manager.add_task(t)
    if listeners == "task and manager":  # the events fan out over both subjects
        manager.task_subject.subscribe(lambda event: None)
    late_task: list[str] = []
    late_manager: list[str] = []

    def subscribe_more(event: TaskEvent) -> None:
        if event.type == "started":
            t.event_subject.subscribe(lambda e: late_task.append(e.type))
            manager.task_subject.subscribe(lambda e: late_manager.append(e.type))

    t.event_subject.subscribe(subscribe_more)
    await t.trigger()
    assert late_task == late_manager == ["completed"]  # not the "started" they were made in


async def test_a_subscription_made_during_a_direct_on_next_starts_with_the_next_event() -> None:
    t = Task(name="direct", task_function=lambda: None)
    late: list[str] = []

    def subscribe_more(event: TaskEvent) -> None:
        t.event_subject.subscribe(lambda e: late.append(e.type))

    subscription = t.event_subject.subscribe(subscribe_more)
    event = TaskEvent(type="queued", task=t.get_metadata(), timestamp=0.0)
    t.event_subject.on_next(event)
    subscription.dispose()
    assert late == []
    t.event_subject.on_next(event)
    assert late == ["queued"]


@pytest.mark.parametrize("listeners", ["task only", "task and manager"])
async def test_an_observer_unsubscribed_during_an_event_gets_nothing_more(listeners: str) -> None:
    """Unsubscribing takes effect at once: not even the rest of the current event."""
    t = Task(name="shrinking", task_function=lambda: None)
    manager = TaskManager()
    manager.add_task(t)
    victim_subject = t.event_subject if listeners == "task only" else manager.task_subject
    victim: list[str] = []
    subscriptions: list[Any] = []

    def unsubscribe_the_victim(event: TaskEvent) -> None:
        subscriptions[0].dispose()

    t.event_subject.subscribe(unsubscribe_the_victim)
    subscriptions.append(victim_subject.subscribe(lambda e: victim.append(e.type)))
    await t.trigger()
    await t.trigger()
    assert victim == []
