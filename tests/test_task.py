"""``Task``: calling conventions, run order, state, timeout, retries and cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, assert_type

import pytest

from taskbuffer import (
    Task,
    TaskbufferError,
    Taskchain,
    TaskConstraintGroup,
    TaskDebounced,
    TaskEvent,
    TaskManager,
    TaskOnce,
    TaskOptions,
    Taskparallel,
    TaskParallelError,
    TaskTimeoutError,
    task,
)

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


def types(events: list[TaskEvent]) -> list[str]:
    return [event.type for event in events]


def options(name: str, value: object) -> dict[str, Any]:
    """Keyword options built by name, for parametrized tests."""
    return {name: value}


# ------------------------------------------------------------------------ construction


def test_task_function_must_be_callable() -> None:
    with pytest.raises(TypeError, match="task_function must be callable, not 42"):
        Task(task_function=42)  # type: ignore[call-overload]


def test_buffered_requires_buffer_max() -> None:
    with pytest.raises(ValueError, match=r"buffer_max is required when buffered=True"):
        Task(task_function=lambda: None, buffered=True)


def test_buffer_max_without_buffered_is_rejected() -> None:
    with pytest.raises(ValueError, match="buffer_max only applies to buffered tasks"):
        Task(task_function=lambda: None, buffer_max=3)


@pytest.mark.parametrize("bad", ["", 3])
def test_name_must_be_a_non_empty_string(bad: Any) -> None:
    with pytest.raises(ValueError, match="name must be a non-empty string or None"):
        Task(task_function=lambda: None, name=bad)


@pytest.mark.parametrize("option", ["pre_task", "after_task"])
def test_pre_and_after_task_must_be_tasks_or_factories(option: str) -> None:
    with pytest.raises(TypeError, match=rf"{option} must be a Task or a callable returning one"):
        Task(task_function=lambda: None, **options(option, "nope"))


def test_task_setup_must_be_callable() -> None:
    with pytest.raises(TypeError, match="task_setup must be callable or None, not 'nope'"):
        Task(task_function=lambda: None, task_setup="nope")  # type: ignore[call-overload]


def test_required_keyword_only_parameter_is_rejected() -> None:
    def needs_keyword(*, flag: bool) -> None: ...

    with pytest.raises(TypeError, match="required keyword-only parameter 'flag'"):
        Task(task_function=needs_keyword)


def test_more_than_two_required_parameters_are_rejected() -> None:
    def three(a: object, b: object, c: object) -> None: ...

    with pytest.raises(TypeError, match="requires 3 positional parameters"):
        Task(task_function=three)


# ------------------------------------------------------------------- calling conventions


def zero() -> str:
    return "zero"


def one(value: object) -> tuple[str, object]:
    return ("one", value)


def two(value: object, setup: object) -> tuple[str, object, object]:
    return ("two", value, setup)


async def async_zero() -> str:
    await asyncio.sleep(0)
    return "zero"


async def async_one(value: object) -> tuple[str, object]:
    await asyncio.sleep(0)
    return ("one", value)


async def async_two(value: object, setup: object) -> tuple[str, object, object]:
    await asyncio.sleep(0)
    return ("two", value, setup)


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (zero, "zero"),
        (one, ("one", 5)),
        (two, ("two", 5, "S")),
        (async_zero, "zero"),
        (async_one, ("one", 5)),
        (async_two, ("two", 5, "S")),
    ],
    ids=["sync-0", "sync-1", "sync-2", "async-0", "async-1", "async-2"],
)
async def test_function_is_called_with_as_many_arguments_as_it_takes(
    function: Callable[..., Any], expected: object
) -> None:
    t = Task(task_function=function, task_setup=lambda: "S")
    assert await t.trigger(5) == expected
    assert await t.trigger_unbuffered(5) == expected


async def test_trigger_without_input_passes_none() -> None:
    t = Task(task_function=one)
    assert await t.trigger() == ("one", None)


async def test_setup_value_is_none_without_task_setup() -> None:
    t = Task(task_function=two)
    assert await t.trigger(1) == ("two", 1, None)


async def test_var_positional_function_gets_input_and_setup_value() -> None:
    def variadic(*args: object) -> tuple[object, ...]:
        return args

    t = Task(task_function=variadic, task_setup=lambda: "S")
    assert await t.trigger(7) == (7, "S")


async def test_builtin_without_signature_gets_the_input() -> None:
    t = Task(task_function=str)
    assert await t.trigger(12) == "12"


async def test_optional_keyword_parameters_do_not_count() -> None:
    def function(value: int, *, scale: int = 2, **extra: object) -> int:
        return value * scale

    t = Task(task_function=function, task_setup=lambda: "ignored")
    assert await t.trigger(4) == 8


async def test_sync_function_returning_an_awaitable_is_awaited() -> None:
    def deferred(value: int) -> Awaitable[int]:
        return async_double(value)

    async def async_double(value: int) -> int:
        return value * 2

    t = Task(task_function=deferred)
    assert await t.trigger(21) == 42


async def test_decorator_without_options() -> None:
    @task
    async def greet(name: str) -> str:
        return f"hello {name}"

    assert isinstance(greet, Task)
    assert greet.name is None
    assert await greet.trigger("ada") == "hello ada"


async def test_decorator_with_options() -> None:
    @task(name="greet", version="2", labels={"team": "core"})
    def greet(name: str) -> str:
        return f"hello {name}"

    assert isinstance(greet, Task)
    assert (greet.name, greet.version, greet.labels) == ("greet", "2", {"team": "core"})
    assert await greet.trigger("bob") == "hello bob"


# ------------------------------------------------------------------------ order of a run


async def test_setup_pre_function_after_run_in_order() -> None:
    calls: list[tuple[str, object]] = []

    def setup() -> str:
        calls.append(("setup", None))
        return "S"

    def function(value: int, setup_value: str) -> int:
        calls.append(("function", (value, setup_value)))
        return value * 2

    pre = Task(name="pre", task_function=lambda value: calls.append(("pre", value)))
    after = Task(name="after", task_function=lambda result: calls.append(("after", result)))
    t = Task(task_function=function, pre_task=pre, after_task=after, task_setup=setup)

    assert await t.trigger(21) == 42
    assert calls == [("setup", None), ("pre", 21), ("function", (21, "S")), ("after", 42)]

    calls.clear()
    assert await t.trigger(1) == 2
    assert calls == [("pre", 1), ("function", (1, "S")), ("after", 2)]


async def test_pre_and_after_task_factories_are_resolved_at_run_time() -> None:
    calls: list[str] = []
    pre = Task(task_function=lambda: calls.append("pre"))
    after = Task(task_function=lambda: calls.append("after"))
    t = Task(
        task_function=lambda: calls.append("main"), pre_task=lambda: pre, after_task=lambda: after
    )
    await t.trigger()
    assert calls == ["pre", "main", "after"]


@pytest.mark.parametrize("option", ["pre_task", "after_task"])
async def test_factory_returning_a_non_task_fails_the_run(option: str) -> None:
    t = Task(task_function=lambda: None, **options(option, lambda: "nope"))
    with pytest.raises(TypeError, match=rf"{option} factory must return a Task, not 'nope'"):
        await t.trigger()
    assert t.error_count == 1


async def test_failing_pre_task_fails_the_run_before_the_function() -> None:
    called = False

    def function() -> None:
        nonlocal called
        called = True

    def fail() -> None:
        raise LookupError("pre failed")

    t = Task(task_function=function, pre_task=Task(task_function=fail))
    with pytest.raises(LookupError, match="pre failed"):
        await t.trigger()
    assert not called
    assert t.get_metadata().status == "failed"


async def test_failing_after_task_fails_the_run() -> None:
    def fail(result: object) -> None:
        raise LookupError(f"after got {result!r}")

    t = Task(task_function=lambda: "r", after_task=Task(task_function=fail))
    with pytest.raises(LookupError, match="after got 'r'"):
        await t.trigger()
    assert t.error_count == 1


async def test_task_that_is_its_own_pre_and_after_task_runs_once() -> None:
    calls: list[str] = []
    t: Task[None] = Task(
        task_function=lambda: calls.append("t"), pre_task=lambda: t, after_task=lambda: t
    )
    await t.trigger()
    assert calls == ["t"]
    assert t.run_count == 1


async def test_cycle_of_pre_and_after_tasks_runs_each_task_once() -> None:
    calls: list[str] = []
    a: Task[None]
    b = Task(
        name="b", task_function=lambda: calls.append("b"), pre_task=lambda: a, after_task=lambda: a
    )
    a = Task(name="a", task_function=lambda: calls.append("a"), pre_task=b, after_task=b)
    await a.trigger()
    assert calls == ["b", "a"]
    assert (a.run_count, b.run_count) == (1, 1)

    await a.trigger()  # a new run: every task runs again, once
    assert calls == ["b", "a", "b", "a"]


async def test_task_reached_as_pre_and_after_task_runs_once_per_run() -> None:
    calls: list[str] = []
    helper = Task(task_function=lambda: calls.append("helper"))
    t = Task(task_function=lambda: calls.append("main"), pre_task=helper, after_task=helper)
    await t.trigger()
    assert calls == ["helper", "main"]


async def test_run_once_pre_task_keeps_its_own_semantics() -> None:
    """A ``TaskOnce`` pre-task runs once, however many runs of the main task reach it."""
    calls: list[str] = []
    init = TaskOnce(task_function=lambda: calls.append("init"))
    t = Task(task_function=lambda value: calls.append(f"main {value}"), pre_task=init)
    await t.trigger(1)
    await t.trigger(2)
    assert calls == ["init", "main 1", "main 2"]


async def test_buffered_after_task_goes_through_its_buffer() -> None:
    results: list[object] = []

    async def slow_after(value: object) -> None:
        await asyncio.sleep(1)
        results.append(value)

    after = Task(task_function=slow_after, buffered=True, buffer_max=1)
    t = Task(task_function=lambda value: value, after_task=after)
    async with asyncio.timeout(10):
        await asyncio.gather(t.trigger("a"), t.trigger("b"))
    assert results == ["a"]  # "b" joined the after-task run in progress
    assert after.run_count == 1


# -------------------------------------------------------------------------- task_setup


async def test_task_setup_runs_once_across_runs() -> None:
    setups = 0

    def setup() -> int:
        nonlocal setups
        setups += 1
        return setups

    t = Task(task_function=two, task_setup=setup)
    assert await t.trigger(1) == ("two", 1, 1)
    assert await t.trigger(2) == ("two", 2, 1)
    assert setups == 1


async def test_concurrent_first_runs_share_one_setup() -> None:
    loop = asyncio.get_running_loop()
    setups = 0

    async def setup() -> str:
        nonlocal setups
        setups += 1
        await asyncio.sleep(1)
        return "S"

    t = Task(task_function=two, task_setup=setup)
    async with asyncio.timeout(5):
        results = await asyncio.gather(*(t.trigger(i) for i in range(3)))
    assert results == [("two", 0, "S"), ("two", 1, "S"), ("two", 2, "S")]
    assert setups == 1
    assert loop.time() == 1.0


async def test_failed_setup_fails_the_run_and_is_tried_again() -> None:
    attempts = 0

    async def setup() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("setup failed")
        return "S"

    t = Task(task_function=two, task_setup=setup)
    with pytest.raises(ConnectionError, match="setup failed"):
        await t.trigger(1)
    assert t.error_count == 1
    assert await t.trigger(2) == ("two", 2, "S")
    assert await t.trigger(3) == ("two", 3, "S")
    assert attempts == 2


async def test_setup_survives_a_cancelled_first_run() -> None:
    setups = 0
    setup_started = asyncio.Event()

    async def setup() -> str:
        nonlocal setups
        setups += 1
        setup_started.set()
        await asyncio.sleep(1)
        return "S"

    t = Task(task_function=two, task_setup=setup)
    first = asyncio.create_task(t.trigger(1))
    async with asyncio.timeout(5):
        await setup_started.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await t.trigger(2) == ("two", 2, "S")
    assert setups == 1


# ------------------------------------------------------------------------------- state


async def test_state_through_success_failure_and_recovery() -> None:
    seen: list[tuple[bool, bool, str, int]] = []

    def function(value: str) -> str:
        seen.append((t.running, t.idle, t.get_metadata().status, t.run_count))
        if value == "fail":
            raise ValueError("boom")
        return value

    t = Task(name="state", task_function=function)
    metadata = t.get_metadata()
    assert (t.running, t.idle, metadata.status, t.run_count, t.error_count) == (
        False,
        True,
        "idle",
        0,
        0,
    )
    assert (t.last_run, metadata.last_error, metadata.last_run) == (None, None, None)

    assert await t.trigger("ok") == "ok"
    assert seen[-1] == (True, False, "running", 1)
    assert (t.running, t.get_metadata().status) == (False, "completed")

    with pytest.raises(ValueError, match="boom") as caught:
        await t.trigger("fail")
    assert seen[-1] == (True, False, "running", 2)
    last_error = t.last_error
    assert last_error is caught.value
    metadata = t.get_metadata()
    assert (metadata.status, metadata.last_error, metadata.error_count) == ("failed", "boom", 1)
    assert (t.run_count, t.error_count) == (2, 1)

    t.clear_error()
    assert (t.last_error, t.error_count) == (None, 1)
    assert t.get_metadata().status == "failed"

    with pytest.raises(ValueError):
        await t.trigger("fail")
    assert await t.trigger("ok") == "ok"
    assert t.last_error is None
    assert (t.run_count, t.error_count, t.get_metadata().status) == (4, 2, "completed")


async def test_running_while_any_run_is_in_flight() -> None:
    release = [asyncio.Event(), asyncio.Event()]
    entered = asyncio.Semaphore(0)

    async def function(index: int) -> int:
        entered.release()
        await release[index].wait()
        return index

    t = Task(task_function=function)
    async with asyncio.timeout(5):
        runs = [asyncio.create_task(t.trigger(i)) for i in range(2)]
        await entered.acquire()
        await entered.acquire()
        release[0].set()
        assert await runs[0] == 0
        assert t.running and not t.idle
        assert t.get_metadata().status == "running"
        release[1].set()
        assert await runs[1] == 1
    assert (t.running, t.idle) == (False, True)


async def test_catch_errors_returns_none_and_records_the_error(record: Record) -> None:
    def fail() -> str:
        raise ValueError("caught")

    t = Task(task_function=fail, catch_errors=True)
    events = record(t)
    assert await t.trigger() is None
    assert isinstance(t.last_error, ValueError)
    assert (t.error_count, t.get_metadata().status) == (1, "failed")
    assert types(events) == ["started", "failed"]
    assert events[-1].error == "caught"


async def test_last_run_is_an_aware_datetime_of_the_run_start() -> None:
    before = time.time()

    async def function() -> None:
        await asyncio.sleep(30)

    t = Task(task_function=function)
    await t.trigger()
    last_run = t.last_run
    assert isinstance(last_run, datetime)
    assert last_run.tzinfo is not None
    # The run started at loop time 0, so 30 virtual seconds earlier than "now" on the loop.
    assert before - 1 <= last_run.timestamp() <= time.time() + 1
    assert t.get_metadata().last_run == last_run


async def test_average_duration_is_over_finished_runs() -> None:
    async def function(seconds: float) -> None:
        await asyncio.sleep(seconds)

    t = Task(task_function=function)
    assert t.get_metadata().average_duration is None
    await t.trigger(2)
    await t.trigger(4)
    assert t.get_metadata().average_duration == 3.0


async def test_metadata_snapshot_fields_and_json() -> None:
    async def load() -> None:
        t.notify_step("load")

    t = Task(
        name="report",
        version="1.2",
        labels={"team": "core"},
        steps=[{"name": "load", "description": "read input", "percentage": 40}],
        timeout=9.5,
        task_function=load,
    )
    await t.trigger()
    metadata = t.get_metadata()
    assert metadata.name == "report"
    assert metadata.version == "1.2"
    assert metadata.labels == {"team": "core"}
    assert (metadata.buffered, metadata.buffer_max, metadata.timeout) == (False, None, 9.5)
    assert (metadata.next_run, metadata.cron_schedule) == (None, None)
    assert metadata.current_step is None
    assert metadata.current_progress == 40
    assert [step.status for step in metadata.steps] == ["completed"]

    as_dict = metadata.to_dict()
    decoded = json.loads(json.dumps(as_dict))
    assert decoded == as_dict
    assert decoded["labels"] == {"team": "core"}
    assert decoded["steps"][0]["name"] == "load"
    last_run = datetime.fromisoformat(decoded["last_run"])
    assert last_run == metadata.last_run
    assert last_run.tzinfo is not None


def test_metadata_name_defaults_to_unnamed_and_is_frozen() -> None:
    metadata = Task(task_function=zero).get_metadata()
    assert metadata.name == "unnamed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        metadata.name = "other"  # type: ignore[misc]


def test_labels() -> None:
    source = {"env": "prod"}
    t = Task(task_function=zero, labels=source)
    source["env"] = "changed"
    assert t.get_label("env") == "prod"

    t.set_label("team", "core")
    assert t.labels == {"env": "prod", "team": "core"}
    assert t.has_label("team")
    assert t.has_label("team", "core")
    assert not t.has_label("team", "other")
    assert not t.has_label("missing")
    assert t.get_label("missing") is None

    snapshot = t.get_metadata()
    t.set_label("team", "infra")
    assert snapshot.labels["team"] == "core"

    assert t.remove_label("team") is True
    assert t.remove_label("team") is False
    assert t.labels == {"env": "prod"}


def test_label_keys_and_values_must_be_strings() -> None:
    t = Task(task_function=zero)
    with pytest.raises(TypeError, match="labels are str -> str"):
        t.set_label("n", 1)  # type: ignore[arg-type]


def test_data_defaults_to_a_fresh_dict() -> None:
    first, second = Task(task_function=zero), Task(task_function=zero)
    assert first.data == {}
    assert first.data is not second.data
    tagged = Task(task_function=zero, data={"region": "eu"})
    assert tagged.data == {"region": "eu"}


def test_buffer_and_timeout_properties() -> None:
    plain = Task(task_function=zero)
    assert (plain.buffered, plain.buffer_max, plain.timeout) == (False, None, None)
    buffered = Task(task_function=async_zero, buffered=True, buffer_max=4, timeout=3)
    assert (buffered.buffered, buffered.buffer_max, buffered.timeout) == (True, 4, 3.0)


def test_repr_shows_name_status_and_counts() -> None:
    assert repr(Task(name="r", task_function=zero)) == "<Task 'r' status=idle runs=0 errors=0>"
    assert repr(Task(task_function=zero)) == "<Task 'unnamed' status=idle runs=0 errors=0>"


# ----------------------------------------------------------------------------- timeout


async def test_timeout_cancels_the_run_and_raises_task_timeout_error(record: Record) -> None:
    loop = asyncio.get_running_loop()
    cancelled = False

    async def slow() -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled = True
            raise

    t = Task(name="slow", task_function=slow, timeout=2.5)
    events = record(t)
    with pytest.raises(TaskTimeoutError) as caught:
        await t.trigger()
    assert loop.time() == 2.5
    assert cancelled
    error = caught.value
    assert isinstance(error, TimeoutError) and isinstance(error, TaskbufferError)
    assert (error.task_name, error.timeout) == ("slow", 2.5)
    assert str(error) == "task 'slow' timed out after 2.5 s"
    assert (t.error_count, t.get_metadata().status) == (1, "failed")
    assert types(events) == ["started", "failed"]
    assert events[-1].error == "task 'slow' timed out after 2.5 s"


async def test_run_within_timeout_succeeds() -> None:
    async def quick() -> str:
        await asyncio.sleep(1)
        return "done"

    t = Task(task_function=quick, timeout=2)
    assert await t.trigger() == "done"
    assert asyncio.get_running_loop().time() == 1.0


async def test_timeout_error_raised_by_the_function_is_not_a_task_timeout() -> None:
    async def own_timeout() -> None:
        raise TimeoutError("from the function")

    t = Task(task_function=own_timeout, timeout=5)
    with pytest.raises(TimeoutError, match="from the function") as caught:
        await t.trigger()
    assert not isinstance(caught.value, TaskTimeoutError)


# ----------------------------------------------------------------------------- retries


async def test_retries_until_success(record: Record) -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    def flaky(value: str) -> str:
        times.append(loop.time())
        if len(times) < 3:
            raise ValueError(f"attempt {len(times)}")
        return value

    t = Task(task_function=flaky, retries=3, retry_delay=1.0, retry_backoff=2.0)
    events = record(t)
    assert await t.trigger("v") == "v"
    assert times == [0.0, 1.0, 3.0]
    assert types(events) == ["started", "retrying", "retrying", "completed"]
    assert [event.error for event in events[1:3]] == ["attempt 1", "attempt 2"]
    assert [event.task.status for event in events] == ["running", "running", "running", "completed"]
    assert (t.run_count, t.error_count, t.last_error) == (1, 0, None)


async def test_last_attempt_error_is_raised_after_exponential_backoff(record: Record) -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    def always_fails() -> None:
        times.append(loop.time())
        raise ValueError(f"attempt {len(times)}")

    t = Task(task_function=always_fails, retries=3, retry_delay=0.5, retry_backoff=3)
    events = record(t)
    with pytest.raises(ValueError, match="^attempt 4$"):
        await t.trigger()
    assert times == [0.0, 0.5, 2.0, 6.5]
    assert types(events) == ["started", "retrying", "retrying", "retrying", "failed"]
    assert events[-1].error == "attempt 4"
    assert (t.run_count, t.error_count) == (1, 1)
    assert str(t.last_error) == "attempt 4"


async def test_retries_without_delay_happen_at_once() -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    def always_fails() -> None:
        times.append(loop.time())
        raise ValueError("no")

    t = Task(task_function=always_fails, retries=2)
    with pytest.raises(ValueError):
        await t.trigger()
    assert times == [0.0, 0.0, 0.0]


async def test_retries_with_catch_errors_return_none() -> None:
    def always_fails() -> str:
        raise ValueError("no")

    t = Task(task_function=always_fails, retries=1, catch_errors=True)
    assert await t.trigger() is None
    assert (t.run_count, t.error_count) == (1, 1)


async def test_every_attempt_starts_from_the_pre_task() -> None:
    calls: list[str] = []

    def flaky() -> str:
        calls.append("main")
        if calls.count("main") < 3:
            raise ValueError("again")
        return "ok"

    pre = Task(task_function=lambda: calls.append("pre"))
    t = Task(task_function=flaky, pre_task=pre, retries=2)
    assert await t.trigger() == "ok"
    assert calls == ["pre", "main", "pre", "main", "pre", "main"]


async def test_retried_attempts_of_a_nested_pre_task_start_from_its_own_pre_task() -> None:
    calls: list[str] = []

    def flaky() -> None:
        calls.append("middle")
        if calls.count("middle") == 1:
            raise ValueError("again")

    inner = Task(name="inner", task_function=lambda: calls.append("inner"))
    middle = Task(name="middle", task_function=flaky, pre_task=inner, retries=1)
    outer = Task(name="outer", task_function=lambda: calls.append("outer"), pre_task=middle)
    await outer.trigger()
    assert calls == ["inner", "middle", "inner", "middle", "outer"]


async def test_timeout_applies_to_each_attempt(record: Record) -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def slow() -> None:
        times.append(loop.time())
        await asyncio.sleep(10)

    t = Task(name="slow", task_function=slow, timeout=2, retries=2, retry_delay=1)
    events = record(t)
    with pytest.raises(TaskTimeoutError):
        await t.trigger()
    assert times == [0.0, 3.0, 7.0]
    assert loop.time() == 9.0
    assert types(events) == ["started", "retrying", "retrying", "failed"]
    assert events[1].error == "task 'slow' timed out after 2 s"


async def test_attempt_after_a_timeout_can_succeed() -> None:
    durations = [5.0, 1.0]

    async def slower_then_quick() -> float:
        seconds = durations.pop(0)
        await asyncio.sleep(seconds)
        return seconds

    t = Task(task_function=slower_then_quick, timeout=2, retries=1)
    assert await t.trigger() == 1.0
    assert asyncio.get_running_loop().time() == 3.0
    assert t.error_count == 0


# ------------------------------------------------------------------------ retry policy


def failing_with(errors: list[BaseException], times: list[float]) -> Callable[[], str]:
    """A function raising ``errors`` in turn (recording when), then returning ``"ok"``."""
    loop = asyncio.get_running_loop()

    def function() -> str:
        times.append(loop.time())
        if errors:
            raise errors.pop(0)
        return "ok"

    return function


async def test_retry_on_a_class_fails_at_once_on_another_error(record: Record) -> None:
    times: list[float] = []
    errors: list[BaseException] = [ConnectionError("flaky"), ValueError("bad input")]
    t = Task(
        task_function=failing_with(errors, times),
        retries=5,
        retry_delay=1,
        retry_on=ConnectionError,
    )
    events = record(t)
    with pytest.raises(ValueError, match="^bad input$"):
        await t.trigger()
    assert times == [0.0, 1.0]  # no delay, no attempt after the rejected error
    assert types(events) == ["started", "retrying", "failed"]
    assert [event.error for event in events[1:]] == ["flaky", "bad input"]
    assert (t.run_count, t.error_count) == (1, 1)


async def test_retry_on_a_tuple_retries_each_of_its_classes(record: Record) -> None:
    times: list[float] = []
    errors: list[BaseException] = [ConnectionError("a"), TimeoutError("b"), KeyError("c")]
    t = Task(
        task_function=failing_with(errors, times),
        retries=5,
        retry_on=(ConnectionError, TimeoutError),
    )
    events = record(t)
    with pytest.raises(KeyError):
        await t.trigger()
    assert len(times) == 3
    assert types(events) == ["started", "retrying", "retrying", "failed"]


async def test_retry_on_a_predicate_decides_from_the_error(record: Record) -> None:
    times: list[float] = []
    errors: list[BaseException] = [OSError("transient"), OSError("transient"), OSError("disk")]
    seen: list[BaseException] = []

    def transient(error: BaseException) -> bool:
        seen.append(error)
        return "transient" in str(error)

    t = Task(task_function=failing_with(errors, times), retries=5, retry_on=transient)
    events = record(t)
    with pytest.raises(OSError, match="^disk$"):
        await t.trigger()
    assert [str(error) for error in seen] == ["transient", "transient", "disk"]
    assert types(events) == ["started", "retrying", "retrying", "failed"]


async def test_a_timeout_is_retried_only_when_retry_on_accepts_task_timeout_error() -> None:
    attempts = 0

    async def slow() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(10)

    t = Task(name="slow", task_function=slow, timeout=1, retries=2, retry_on=ConnectionError)
    with pytest.raises(TaskTimeoutError):
        await t.trigger()
    assert attempts == 1
    t = Task(name="slow", task_function=slow, timeout=1, retries=2, retry_on=TimeoutError)
    with pytest.raises(TaskTimeoutError):
        await t.trigger()
    assert attempts == 1 + 3


async def test_a_retry_on_predicate_that_raises_fails_the_run_with_its_own_error(
    record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    times: list[float] = []
    errors: list[BaseException] = [ValueError("the run's own")]

    def broken(error: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    t = Task(name="t", task_function=failing_with(errors, times), retries=3, retry_on=broken)
    events = record(t)
    with pytest.raises(ValueError, match="^the run's own$"):
        await t.trigger()
    assert times == [0.0]
    assert types(events) == ["started", "failed"]
    assert events[-1].error == "the run's own"
    logged = [r for r in caplog.records if r.name == "taskbuffer" and r.levelname == "ERROR"]
    assert len(logged) == 1
    assert "retry_on" in logged[0].getMessage() and "not retried" in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert str(logged[0].exc_info[1]) == "predicate bug"


async def test_a_cancelled_attempt_is_not_retried_whatever_retry_on_says(
    record: Record,
) -> None:
    entered = asyncio.Event()
    attempts = 0

    async def blocks() -> None:
        nonlocal attempts
        attempts += 1
        entered.set()
        await asyncio.Event().wait()

    t = Task(task_function=blocks, retries=3, retry_on=BaseException)
    events = record(t)
    caller = asyncio.create_task(t.trigger())
    async with asyncio.timeout(5):
        await entered.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert attempts == 1
    assert types(events) == ["started", "cancelled"]


async def test_retry_max_delay_caps_each_delay() -> None:
    times: list[float] = []
    errors: list[BaseException] = [ValueError(str(n)) for n in range(4)]
    t = Task(
        task_function=failing_with(errors, times),
        retries=4,
        retry_delay=1,
        retry_backoff=2,
        retry_max_delay=3,
    )
    assert await t.trigger() == "ok"
    assert times == [0.0, 1.0, 3.0, 6.0, 9.0]  # delays 1, 2, then 4 and 8 capped at 3


async def test_retry_jitter_multiplies_each_delay_by_a_factor_drawn_in_its_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    factors = [0.5, 1.5, 1.0]
    ranges: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        ranges.append((low, high))
        return factors.pop(0)

    monkeypatch.setattr(random, "uniform", uniform)
    times: list[float] = []
    errors: list[BaseException] = [ValueError(str(n)) for n in range(3)]
    t = Task(
        task_function=failing_with(errors, times),
        retries=3,
        retry_delay=2,
        retry_backoff=2,
        retry_jitter=0.5,
    )
    assert await t.trigger() == "ok"
    assert times == [0.0, 1.0, 7.0, 15.0]  # 2 * 0.5, 4 * 1.5, 8 * 1.0
    assert ranges == [(0.5, 1.5)] * 3


async def test_retry_max_delay_applies_after_the_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    factors = [1.5, 0.5]
    monkeypatch.setattr(random, "uniform", lambda low, high: factors.pop(0))
    times: list[float] = []
    errors: list[BaseException] = [ValueError("1"), ValueError("2")]
    t = Task(
        task_function=failing_with(errors, times),
        retries=2,
        retry_delay=4,
        retry_backoff=2,
        retry_jitter=0.5,
        retry_max_delay=5,
    )
    assert await t.trigger() == "ok"
    # min(4 * 1.5, 5) = 5, then min(8 * 0.5, 5) = 4: the cap bounds the jittered delay.
    assert times == [0.0, 5.0, 9.0]


async def test_a_full_jitter_factor_of_zero_retries_at_once_even_after_overflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: 0.0)
    times: list[float] = []
    errors: list[BaseException] = [ValueError(str(n)) for n in range(3)]
    # The unjittered delay overflows to inf after the first retry: inf * 0 must not be NaN.
    t = Task(
        task_function=failing_with(errors, times),
        retries=3,
        retry_delay=1e300,
        retry_backoff=1e300,
        retry_jitter=1,
    )
    assert await t.trigger() == "ok"
    assert times == [0.0, 0.0, 0.0, 0.0]


def test_every_task_kind_accepts_the_retry_policy_options() -> None:
    policy: TaskOptions = {
        "retries": 2,
        "retry_on": ConnectionError,
        "retry_jitter": 0.25,
        "retry_max_delay": 10.0,
    }

    async def job(value: Any = None) -> Any:
        return value

    member = Task(task_function=job)
    built: list[Task[Any, Any]] = [
        Task(task_function=job, **policy),
        task(**policy)(job),
        Taskchain(task_array=[member], **policy),
        Taskparallel(task_array=[member], **policy),
        TaskDebounced(task_function=job, debounce_time=1, **policy),
        TaskOnce(task_function=job, **policy),
    ]
    assert len(built) == 6


async def test_a_chain_retries_per_its_own_retry_on() -> None:
    attempts = 0

    async def flaky(value: Any) -> str:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("down")

    chain = Taskchain(
        task_array=[Task(name="fetch", task_function=flaky)],
        retries=2,
        retry_on=lambda error: isinstance(error.__cause__, ConnectionError),
    )
    with pytest.raises(TaskbufferError):
        await chain.trigger()
    assert attempts == 3


# ------------------------------------------------------------------------ cancellation


async def test_run_cancelled_by_its_caller(record: Record) -> None:
    entered = asyncio.Event()
    cancelled_inside = False

    async def blocks() -> None:
        nonlocal cancelled_inside
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled_inside = True
            raise

    t = Task(name="blocked", task_function=blocks)
    events = record(t)
    before = asyncio.all_tasks()
    caller = asyncio.create_task(t.trigger())
    async with asyncio.timeout(5):
        await entered.wait()
        assert t.running
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert cancelled_inside
    assert types(events) == ["started", "cancelled"]
    assert events[-1].error == "cancelled"
    assert (t.running, t.idle) == (False, True)
    assert (t.run_count, t.error_count, t.last_error) == (1, 0, None)
    assert t.get_metadata().status == "idle"
    assert asyncio.all_tasks() == before


async def test_cancelled_run_does_not_hide_the_previous_outcome() -> None:
    entered = asyncio.Event()

    async def function(block: bool) -> str:
        if block:
            entered.set()
            await asyncio.Event().wait()
        return "ok"

    t = Task(task_function=function)
    await t.trigger(False)
    caller = asyncio.create_task(t.trigger(True))
    async with asyncio.timeout(5):
        await entered.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    metadata = t.get_metadata()
    assert (metadata.status, metadata.run_count, metadata.error_count) == ("completed", 2, 0)


async def test_cancelled_during_retry_delay_is_cancelled_not_failed(record: Record) -> None:
    loop = asyncio.get_running_loop()

    def fails() -> None:
        raise ValueError("no")

    t = Task(task_function=fails, retries=1, retry_delay=10)
    events = record(t)
    caller = asyncio.create_task(t.trigger())
    loop.call_later(4, caller.cancel)
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(20):
            await caller
    assert loop.time() == 4.0
    assert types(events) == ["started", "retrying", "cancelled"]
    assert t.error_count == 0


class Halt(BaseException):
    """A BaseException that is neither an Exception nor a cancellation."""


def kinds_of_base_exception() -> list[type[BaseException]]:
    return [Halt, KeyboardInterrupt, SystemExit]


@pytest.mark.parametrize("error_type", kinds_of_base_exception())
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("catch_errors", [False, True], ids=["raising", "catch_errors"])
async def test_a_base_exception_from_the_function_is_a_recorded_failure_that_propagates(
    record: Record, error_type: type[BaseException], is_async: bool, catch_errors: bool
) -> None:
    def stop() -> None:
        raise error_type("halt")

    async def stop_async() -> None:
        await asyncio.sleep(1)
        stop()

    t = Task(name="halting", task_function=stop_async if is_async else stop)
    t.catch_errors = catch_errors  # catch_errors catches Exceptions only
    events = record(t)
    with pytest.raises(error_type):
        await t.trigger()
    assert (t.running, t.run_count, t.error_count) == (False, 1, 1)
    assert isinstance(t.last_error, error_type)
    metadata = t.get_metadata()
    assert (metadata.status, metadata.last_error) == ("failed", "halt")
    assert [(e.type, e.error) for e in events] == [("started", None), ("failed", "halt")]


async def test_a_base_exception_is_not_retried_and_ends_the_timeout(record: Record) -> None:
    attempts = 0

    async def stop() -> None:
        nonlocal attempts
        attempts += 1
        raise Halt("halt")

    t = Task(task_function=stop, retries=3, timeout=5)
    events = record(t)
    with pytest.raises(Halt):
        await t.trigger()
    assert attempts == 1
    assert (t.running, t.error_count, t.get_metadata().status) == (False, 1, "failed")
    assert types(events) == ["started", "failed"]


@pytest.mark.parametrize("error_type", kinds_of_base_exception())
async def test_a_base_exception_is_not_retried_whatever_retry_on_says(
    record: Record, error_type: type[BaseException]
) -> None:
    times: list[float] = []
    asked: list[BaseException] = []

    def always(error: BaseException) -> bool:
        asked.append(error)
        return True

    for retry_on in (BaseException, always):
        t = Task(
            task_function=failing_with([error_type("halt")], times), retries=3, retry_on=retry_on
        )
        events = record(t)
        with pytest.raises(error_type):
            await t.trigger()
        assert types(events) == ["started", "failed"]
    assert len(times) == 2 and asked == []


def halting_task(kind: str) -> tuple[Task[Any, Any], Task[Any, Any]]:
    """(the task to trigger, the task whose function raises Halt on its first run only)."""
    runs = 0

    async def stop(value: Any = None) -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)
        if runs == 1:
            raise Halt("halt")
        return "ok"

    inner: Task[Any, Any] = Task(name="inner", task_function=stop)
    if kind == "chain":
        return Taskchain(name="outer", task_array=[inner]), inner
    if kind == "parallel":
        failing = Task(name="failing", task_function=_fail)
        return Taskparallel(name="outer", task_array=[inner, failing]), inner
    if kind == "buffered":
        inner = Task(name="t", task_function=stop, buffered=True, buffer_max=2)
    elif kind == "once":
        inner = TaskOnce(name="t", task_function=stop)
    elif kind == "debounced":
        inner = TaskDebounced(name="t", task_function=stop, debounce_time=1)
    return inner, inner


async def _fail() -> None:
    raise ValueError("an ordinary failure beside it")


@pytest.mark.parametrize("kind", ["chain", "parallel", "buffered", "once", "debounced"])
async def test_a_base_exception_propagates_as_itself_through_every_kind_of_task(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    outer, inner = halting_task(kind)
    async with asyncio.timeout(10):
        with pytest.raises(Halt):
            await outer.trigger()
        # Recorded where it happened (and by the composite), and nothing is left stuck:
        assert (inner.running, inner.error_count, inner.get_metadata().status) == (
            False,
            1,
            "failed",
        )
        assert isinstance(inner.last_error, Halt)
        assert (outer.running, outer.get_metadata().status) == (False, "failed")
        if kind == "parallel":  # the second run: only the ordinary failure is left
            with pytest.raises(TaskParallelError) as caught:
                await outer.trigger()
            assert [str(e) for e in caught.value.exceptions] == ["an ordinary failure beside it"]
        else:
            assert await outer.trigger() == "ok"
    gc.collect()  # a lost task exception would be reported when the task is collected
    assert not [r for r in caplog.records if r.name == "asyncio"]


async def test_a_base_exception_through_the_manager_releases_the_slots() -> None:
    _, inner = halting_task("plain")
    manager = TaskManager()
    manager.add_task(inner)
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="one", constraint_key_for_execution=lambda t, i: "k", max_concurrent=1
        )
    )
    async with asyncio.timeout(10):
        with pytest.raises(Halt):
            await manager.trigger_task(inner)
        assert (inner.running, inner.error_count) == (False, 1)
        assert await manager.trigger_task(inner) == "ok"
        assert manager.constraint_groups[0].get_running_count("k") == 0


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("kind", ["buffered", "once", "debounced", "parallel"])
def test_an_interrupt_in_a_run_of_its_own_stops_the_loop_after_it_is_recorded(
    kind: str, error_type: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """Runs in an asyncio task of their own (buffer, once, debounce, parallel members): asyncio
    raises KeyboardInterrupt and SystemExit out of the loop; the run is recorded first."""
    runs = 0

    async def stop() -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)
        raise error_type("halt")

    inner: Task[Any, Any]
    if kind == "parallel":
        inner = Task(name="inner", task_function=stop)
        outer: Task[Any, Any] = Taskparallel(task_array=[inner])
    elif kind == "buffered":
        inner = outer = Task(name="t", task_function=stop, buffered=True, buffer_max=2)
    elif kind == "once":
        inner = outer = TaskOnce(name="t", task_function=stop)
    else:
        inner = outer = TaskDebounced(name="t", task_function=stop, debounce_time=0.01)

    async def main() -> None:
        await outer.trigger()

    with pytest.raises(error_type):
        asyncio.run(main())
    gc.collect()
    assert runs == 1
    assert (inner.running, inner.error_count, inner.get_metadata().status) == (
        False,
        1,
        "failed",
    )
    assert isinstance(inner.last_error, error_type)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


# ------------------------------------------------------------- timeout and sync functions

SYNC_TIMEOUT_WARNING = r"cannot interrupt a plain \(sync\) task function"


def plain() -> str:
    return "done"


def blocking() -> str:
    time.sleep(0.2)
    return "done"


class SyncCallable:
    def __call__(self) -> str:
        return "done"


class AsyncCallable:
    async def __call__(self) -> str:
        return "done"


@pytest.mark.parametrize("kind", ["Task", "TaskOnce", "TaskDebounced", "@task", "retries"])
async def test_a_timeout_on_a_plain_function_warns_once_pointing_at_the_function(
    kind: str,
) -> None:
    t: Task[Any, Any]
    if kind == "TaskOnce":
        t = TaskOnce(name="plain", task_function=plain, timeout=0.1)
    elif kind == "TaskDebounced":
        t = TaskDebounced(name="plain", task_function=plain, timeout=0.1, debounce_time=1)
    elif kind == "@task":
        t = task(name="plain", timeout=0.1)(plain)
    else:
        t = Task(name="plain", task_function=plain, timeout=0.1, retries=3 * (kind == "retries"))
    with pytest.warns(UserWarning, match=SYNC_TIMEOUT_WARNING) as warned:
        async with asyncio.timeout(10):
            assert await t.trigger() == "done"
            assert await t.trigger() == "done"
    [warning] = warned.list  # once per task
    assert (warning.filename, warning.lineno) == (__file__, plain.__code__.co_firstlineno)
    assert str(warning.message).startswith("task 'plain': timeout=0.1 cannot interrupt")


async def test_the_warning_points_at_a_callable_objects_call_method() -> None:
    t = Task(task_function=SyncCallable(), timeout=1)
    with pytest.warns(UserWarning, match=SYNC_TIMEOUT_WARNING) as warned:
        await t.trigger()
    call = SyncCallable.__call__.__code__
    assert (warned.list[0].filename, warned.list[0].lineno) == (__file__, call.co_firstlineno)


@pytest.mark.parametrize(
    "options",
    [
        {"task_function": async_zero, "timeout": 0.1},
        {"task_function": AsyncCallable(), "timeout": 0.1},
        {"task_function": functools.partial(async_zero), "timeout": 0.1},
        {"task_function": lambda: asyncio.sleep(0, "done"), "timeout": 0.1},
        {"task_function": plain, "timeout": None},
        {"task_function": plain, "timeout": math.inf},
    ],
    ids=["async def", "async __call__", "partial", "returns an awaitable", "none", "inf"],
)
async def test_no_warning_where_the_timeout_holds_or_there_is_none(
    options: dict[str, Any],
) -> None:
    await Task(**options).trigger()  # filterwarnings=error: a warning would fail this test


@pytest.mark.realtime
async def test_a_blocking_plain_function_is_not_timed_out_as_documented() -> None:
    t = Task(task_function=blocking, timeout=0.05)
    started = time.monotonic()
    with pytest.warns(UserWarning, match=SYNC_TIMEOUT_WARNING):
        async with asyncio.timeout(10):
            assert await t.trigger() == "done"  # it ran on the loop, to its end
    assert time.monotonic() - started >= 0.2
    assert t.error_count == 0


# --------------------------------------------------------------------------- real time


@pytest.mark.realtime
async def test_timeout_on_the_real_clock() -> None:
    async def slow() -> None:
        await asyncio.sleep(5)

    t = Task(task_function=slow, timeout=0.05)
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        await t.trigger()
    assert 0.04 <= time.monotonic() - started < 2


# ---------------------------------------------------------------------- logging, typing


async def test_failures_are_logged_not_printed(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail() -> None:
        raise ValueError("quietly")

    t = Task(name="quiet", task_function=fail, catch_errors=True)
    with caplog.at_level(logging.DEBUG, logger="taskbuffer"):
        await t.trigger()
    assert capsys.readouterr() == ("", "")
    assert any(
        r.name == "taskbuffer" and "quiet" in r.getMessage() and r.exc_info for r in caplog.records
    )


async def test_results_and_data_are_typed() -> None:
    async def double(value: int) -> int:
        return value * 2

    t = Task(task_function=double, data={"region": "eu"})
    assert_type(t.data, dict[str, str])
    assert_type(await t.trigger(2), int)

    @task(name="greet")
    def greet() -> str:
        return "hi"

    assert_type(await greet.trigger(), str)
    once = TaskOnce(task_function=double)
    assert_type(await once.trigger(1), int)


@pytest.mark.parametrize("buffered", [False, True])
async def test_trigger_returns_a_coroutine_that_runs_only_when_awaited(buffered: bool) -> None:
    calls: list[int] = []

    def record(x: int) -> int:
        calls.append(x)
        return x * 10

    t = Task(task_function=record, buffered=buffered, buffer_max=10 if buffered else None)
    pending = t.trigger(1)
    assert asyncio.iscoroutine(pending)
    await asyncio.sleep(0)
    assert (calls, t.run_count) == ([], 0)  # nothing happens until it is awaited
    assert await pending == 10
    assert await asyncio.create_task(t.trigger(2)) == 20
    assert await asyncio.gather(t.trigger(3), t.trigger(4)) == [30, 40]
    assert calls == [1, 2, 3, 4]
