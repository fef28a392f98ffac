"""``TaskDebounced``: bursts coalesce into one run after the quiet period, with the last input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskbuffer import Task, TaskDebounced, TaskEvent

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


class Calls:
    """A debounced task's function: records (loop time, input) of each run."""

    def __init__(self, *, fail: bool = False, seconds: float = 0) -> None:
        self.runs: list[tuple[float, object]] = []
        self.fail = fail
        self.seconds = seconds
        self.started = asyncio.Event()

    async def __call__(self, value: object) -> str:
        self.runs.append((asyncio.get_running_loop().time(), value))
        self.started.set()
        if self.seconds:
            await asyncio.sleep(self.seconds)
        if self.fail:
            raise ValueError(f"failed with {value!r}")
        return f"result of {value!r}"


async def trigger_at(t: TaskDebounced[Any], at: float, value: object) -> object:
    await asyncio.sleep(at - asyncio.get_running_loop().time())
    return await t.trigger(value)


async def test_single_trigger_runs_after_the_quiet_period() -> None:
    calls = Calls()
    t = TaskDebounced(task_function=calls, debounce_time=5)
    async with asyncio.timeout(10):
        assert await t.trigger("only") == "result of 'only'"
    assert calls.runs == [(5.0, "only")]
    assert asyncio.get_running_loop().time() == 5.0


async def test_burst_coalesces_into_one_run_with_the_last_input() -> None:
    calls = Calls()
    t = TaskDebounced(name="d", task_function=calls, debounce_time=5)
    async with asyncio.timeout(20):
        results = list(
            await asyncio.gather(
                trigger_at(t, 0, "a"), trigger_at(t, 1, "b"), trigger_at(t, 2.5, "c")
            )
        )
    assert calls.runs == [(7.5, "c")]
    assert results == ["result of 'c'"] * 3
    assert t.run_count == 1


async def test_triggers_further_apart_than_the_quiet_period_run_separately() -> None:
    calls = Calls()
    t = TaskDebounced(task_function=calls, debounce_time=2)
    async with asyncio.timeout(20):
        results = list(
            await asyncio.gather(
                trigger_at(t, 0, "a"), trigger_at(t, 1, "b"), trigger_at(t, 4, "c")
            )
        )
    assert calls.runs == [(3.0, "b"), (6.0, "c")]
    assert results == ["result of 'b'", "result of 'b'", "result of 'c'"]


async def test_trigger_during_a_run_starts_the_next_burst() -> None:
    calls = Calls(seconds=10)
    t = TaskDebounced(task_function=calls, debounce_time=1)
    async with asyncio.timeout(30):
        first = asyncio.create_task(t.trigger("a"))
        await calls.started.wait()
        assert await t.trigger("b") == "result of 'b'"
        assert await first == "result of 'a'"
    assert calls.runs == [(1.0, "a"), (2.0, "b")]


async def test_every_coalesced_trigger_gets_the_error(record: Record) -> None:
    t = TaskDebounced(task_function=Calls(fail=True), debounce_time=1)
    events = record(t)
    async with asyncio.timeout(10):
        results = await asyncio.gather(
            trigger_at(t, 0, 1), trigger_at(t, 0.5, 2), return_exceptions=True
        )
    assert [type(r) for r in results] == [ValueError, ValueError]
    assert [str(r) for r in results] == ["failed with 2"] * 2
    assert [event.type for event in events] == ["started", "failed"]
    assert t.error_count == 1


async def test_zero_debounce_time_still_coalesces_a_synchronous_burst() -> None:
    calls = Calls()
    t = TaskDebounced(task_function=calls, debounce_time=0)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(t.trigger(i) for i in range(3)))
    assert calls.runs == [(0.0, 2)]
    assert results == ["result of 2"] * 3
    assert asyncio.get_running_loop().time() == 0.0


def test_debounce_time_property_and_task_options() -> None:
    t = TaskDebounced(name="d", task_function=lambda: None, debounce_time=2, labels={"k": "v"})
    assert t.debounce_time == 2.0
    assert isinstance(t, Task)
    assert t.name == "d" and t.get_label("k") == "v"


async def test_trigger_unbuffered_is_debounced_too() -> None:
    calls = Calls()
    t = TaskDebounced(task_function=calls, debounce_time=3)
    async with asyncio.timeout(10):
        results = list(await asyncio.gather(t.trigger_unbuffered("a"), t.trigger("b")))
    assert results == ["result of 'b'"] * 2
    assert calls.runs == [(3.0, "b")]


async def test_buffered_debounced_task() -> None:
    calls = Calls()
    t = TaskDebounced(task_function=calls, debounce_time=1, buffered=True, buffer_max=1)
    async with asyncio.timeout(10):
        assert await t.trigger("a") == "result of 'a'"
    assert calls.runs == [(1.0, "a")]


# ------------------------------------------------------------------------ cancellation


async def test_cancelling_one_awaiter_detaches_only_it() -> None:
    calls = Calls()
    t = TaskDebounced(task_function=calls, debounce_time=5)
    async with asyncio.timeout(10):
        leaving = asyncio.create_task(t.trigger("a"))
        staying = asyncio.create_task(trigger_at(t, 1, "b"))
        asyncio.get_running_loop().call_later(2, leaving.cancel)
        assert await staying == "result of 'b'"
    assert leaving.cancelled()
    assert calls.runs == [(6.0, "b")]


async def test_burst_whose_awaiters_all_left_before_the_quiet_period_does_not_run() -> None:
    loop = asyncio.get_running_loop()
    calls = Calls()
    t = TaskDebounced(task_function=calls, debounce_time=5)
    before = asyncio.all_tasks()
    callers = [asyncio.create_task(t.trigger(i)) for i in range(2)]
    for caller in callers:
        loop.call_later(1, caller.cancel)
    async with asyncio.timeout(20):
        for caller in callers:
            with pytest.raises(asyncio.CancelledError):
                await caller
        await asyncio.sleep(10)  # well past the quiet period
        assert calls.runs == []
        # The next burst runs normally.
        assert await t.trigger("next") == "result of 'next'"
    assert calls.runs == [(16.0, "next")]
    assert asyncio.all_tasks() == before


async def test_run_is_cancelled_when_every_awaiter_is_cancelled(record: Record) -> None:
    calls = Calls(seconds=10)
    t = TaskDebounced(task_function=calls, debounce_time=1)
    events = record(t)
    before = asyncio.all_tasks()
    callers = [asyncio.create_task(t.trigger(i)) for i in range(2)]
    async with asyncio.timeout(20):
        await calls.started.wait()
        spawned = asyncio.all_tasks() - before - set(callers)
        for caller in callers:
            caller.cancel()
        for caller in callers:
            with pytest.raises(asyncio.CancelledError):
                await caller
        await asyncio.wait(spawned)
    assert [event.type for event in events] == ["started", "cancelled"]
    assert not t.running
    assert asyncio.all_tasks() == before
    assert asyncio.get_running_loop().time() == 1.0


@pytest.mark.realtime
async def test_debounce_on_the_real_clock() -> None:
    calls = Calls()
    t = TaskDebounced(task_function=calls, debounce_time=0.05)
    started = time.monotonic()
    async with asyncio.timeout(5):
        results = list(await asyncio.gather(t.trigger("a"), t.trigger("b")))
    elapsed = time.monotonic() - started
    assert results == ["result of 'b'"] * 2
    assert [value for _, value in calls.runs] == ["b"]
    assert 0.04 <= elapsed < 2


@pytest.mark.parametrize("turns", [1, 2, 3])
async def test_a_trigger_never_joins_a_run_being_cancelled(turns: int) -> None:
    """The only awaiter of a started run is cancelled; ``turns`` loop turns later a new
    trigger starts the next burst and gets its result, not a CancelledError."""
    calls = Calls(seconds=10)
    t = TaskDebounced(task_function=calls, debounce_time=1)
    async with asyncio.timeout(30):
        leaving = asyncio.create_task(t.trigger("a"))
        await calls.started.wait()
        leaving.cancel()
        for _ in range(turns):
            await asyncio.sleep(0)
        calls.seconds = 0
        assert await t.trigger("b") == "result of 'b'"
    assert leaving.cancelled()
    assert calls.runs == [(1.0, "a"), (2.0, "b")]
    assert asyncio.all_tasks() == {asyncio.current_task()}
