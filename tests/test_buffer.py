"""Buffered tasks: one run at a time, at most ``buffer_max`` runs, the newest input wins."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskbuffer import Task, TaskEvent

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


class Recorder:
    """A buffered task's function: records each run's input and tracks concurrency."""

    def __init__(self) -> None:
        self.inputs: list[object] = []
        self.active = 0
        self.max_active = 0
        self.started = asyncio.Event()  # set when the first run starts

    async def __call__(self, value: object) -> tuple[int, object]:
        self.inputs.append(value)
        self.started.set()
        run = len(self.inputs)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(1)
        finally:
            self.active -= 1
        return (run, value)


async def test_100_rapid_triggers_with_buffer_max_5_make_5_runs() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=5)
    async with asyncio.timeout(60):
        results = await asyncio.gather(*(t.trigger(i) for i in range(1, 101)))
    assert recorder.inputs == [1, 2, 3, 4, 100]
    assert results[:4] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert results[4:] == [(5, 100)] * 96
    assert recorder.max_active == 1
    assert t.run_count == 5
    assert loop.time() == 5.0  # one at a time, one second each


async def test_buffer_max_1_joins_the_run_in_progress() -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=1)
    async with asyncio.timeout(10):
        first = asyncio.create_task(t.trigger("a"))
        await recorder.started.wait()  # the run of "a" is in progress
        second = await t.trigger("b")
        assert await first == (1, "a")
    assert second == (1, "a")
    assert recorder.inputs == ["a"]
    assert asyncio.get_running_loop().time() == 1.0

    assert await t.trigger("c") == (2, "c")  # the buffer is empty again: a new run


async def test_trigger_with_room_adds_a_waiting_run() -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=2)
    async with asyncio.timeout(10):
        first = asyncio.create_task(t.trigger("a"))
        await recorder.started.wait()
        results = list(await asyncio.gather(t.trigger("b"), t.trigger("c"), t.trigger("d")))
        assert await first == (1, "a")
    assert results == [(2, "d")] * 3
    assert recorder.inputs == ["a", "d"]
    assert asyncio.get_running_loop().time() == 2.0


@settings(max_examples=40, deadline=None)
@given(burst=st.integers(min_value=1, max_value=40), buffer_max=st.integers(1, 8))
async def test_a_burst_makes_min_burst_buffer_max_runs(burst: int, buffer_max: int) -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=buffer_max)
    async with asyncio.timeout(100):
        results = await asyncio.gather(*(t.trigger(i) for i in range(burst)))
    runs = min(burst, buffer_max)
    # The first run starts at once with the first input; the last waiting run (if any) ends
    # up with the newest input.
    assert recorder.inputs == ([0] if runs == 1 else [*range(runs - 1), burst - 1])
    # Trigger i joined run min(i, runs - 1) + 1, and returned that run's result.
    assert results == [
        (min(i, runs - 1) + 1, recorder.inputs[min(i, runs - 1)]) for i in range(burst)
    ]
    assert recorder.max_active == 1


async def test_every_joined_trigger_gets_the_error() -> None:
    async def fail(value: str) -> None:
        await asyncio.sleep(1)
        raise ValueError(f"failed on {value}")

    t = Task(task_function=fail, buffered=True, buffer_max=1)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(t.trigger(c) for c in "abc"), return_exceptions=True)
    assert [str(r) for r in results] == ["failed on a"] * 3
    assert all(isinstance(r, ValueError) for r in results)
    assert (t.run_count, t.error_count) == (1, 1)


async def test_buffered_catch_errors_gives_none_to_every_joiner() -> None:
    def fail() -> None:
        raise ValueError("no")

    t = Task(task_function=fail, buffered=True, buffer_max=1, catch_errors=True)
    assert list(await asyncio.gather(t.trigger(), t.trigger())) == [None, None]


async def test_trigger_unbuffered_bypasses_the_buffer() -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=1)
    async with asyncio.timeout(10):
        results = await asyncio.gather(t.trigger("a"), t.trigger_unbuffered("b"), t.trigger("c"))
    assert sorted(recorder.inputs, key=str) == ["a", "b"]
    assert results[0] == results[2]
    assert recorder.max_active == 2


def test_buffer_shows_in_metadata() -> None:
    metadata = Task(task_function=lambda: None, buffered=True, buffer_max=3).get_metadata()
    assert (metadata.buffered, metadata.buffer_max) == (True, 3)


# ------------------------------------------------------------------------ cancellation


async def test_cancelling_one_joiner_detaches_only_it(record: Record) -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=1)
    events = record(t)
    async with asyncio.timeout(10):
        leaving = asyncio.create_task(t.trigger("a"))
        staying = asyncio.create_task(t.trigger("b"))
        await recorder.started.wait()
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert await staying == (1, "a")
    assert [event.type for event in events] == ["started", "completed"]


async def test_run_is_cancelled_when_every_joiner_is_cancelled(record: Record) -> None:
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

    t = Task(task_function=blocks, buffered=True, buffer_max=1)
    events = record(t)
    before = asyncio.all_tasks()
    callers = [asyncio.create_task(t.trigger()) for _ in range(2)]
    async with asyncio.timeout(10):
        await entered.wait()
        spawned = asyncio.all_tasks() - before - set(callers)
        assert len(spawned) == 1  # the run itself
        for caller in callers:
            caller.cancel()
        for caller in callers:
            with pytest.raises(asyncio.CancelledError):
                await caller
        await asyncio.wait(spawned)
    assert cancelled_inside
    assert [event.type for event in events] == ["started", "cancelled"]
    assert (t.running, t.error_count) == (False, 0)
    assert asyncio.all_tasks() == before


async def test_cancelling_a_waiting_run_drops_it_and_the_next_one_runs() -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=3)
    async with asyncio.timeout(10):
        first = asyncio.create_task(t.trigger("a"))
        dropped = asyncio.create_task(t.trigger("b"))
        kept = asyncio.create_task(t.trigger("c"))
        await recorder.started.wait()
        dropped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dropped
        # The dropped run frees its room: a new trigger adds a run instead of joining "c".
        extra = asyncio.create_task(t.trigger("d"))
        assert await first == (1, "a")
        assert await kept == (2, "c")
        assert await extra == (3, "d")
    assert recorder.inputs == ["a", "c", "d"]


async def test_after_an_abandoned_run_the_next_waiting_run_starts(record: Record) -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=1)
    events = record(t)
    async with asyncio.timeout(10):
        abandoned = asyncio.create_task(t.trigger("a"))
        await recorder.started.wait()
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        # The cancelled run may still be winding down; it takes no room and cannot be joined.
        assert await t.trigger("b") == (2, "b")
    assert recorder.inputs == ["a", "b"]
    assert [event.type for event in events] == ["started", "cancelled", "started", "completed"]


@pytest.mark.parametrize("buffer_max", [1, 2])
async def test_a_buffered_task_triggering_itself_from_its_run_raises(buffer_max: int) -> None:
    """With buffer_max=1 it would join its own run, with room it would queue behind it:
    both wait for the caller itself."""

    async def calls_itself(depth: int) -> int:
        if depth == 0:
            return await t.trigger(1)
        return depth

    t = Task(name="selfish", task_function=calls_itself, buffered=True, buffer_max=buffer_max)
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match=r"'selfish' was triggered from inside its own run"):
            await t.trigger(0)
        # trigger_unbuffered() from inside the run is the way, and the buffer still works.
        assert await t.trigger(5) == 5
    assert (t.run_count, t.error_count, t.running) == (2, 1, False)


async def test_a_buffered_task_may_run_itself_unbuffered_from_its_run() -> None:
    async def calls_itself(depth: int) -> int:
        if depth == 0:
            return await t.trigger_unbuffered(1) + 1
        return depth

    t = Task(task_function=calls_itself, buffered=True, buffer_max=1)
    async with asyncio.timeout(10):
        assert await t.trigger(0) == 2


@pytest.mark.parametrize("buffer_max", [1, 2])
@pytest.mark.parametrize("turns", [1, 2, 3])
async def test_a_trigger_never_joins_a_run_being_cancelled(buffer_max: int, turns: int) -> None:
    """The only joiner is cancelled; ``turns`` loop turns later (it has left, the run is
    winding down) a new trigger gets a fresh run's result, not a CancelledError."""
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=buffer_max)
    async with asyncio.timeout(10):
        leaving = asyncio.create_task(t.trigger("a"))
        await recorder.started.wait()
        leaving.cancel()
        for _ in range(turns):
            await asyncio.sleep(0)
        assert await t.trigger("b") == (2, "b")
    assert leaving.cancelled()
    assert recorder.inputs == ["a", "b"]
    assert recorder.max_active == 1
    assert asyncio.all_tasks() == {asyncio.current_task()}


# ------------------------------------------------- joiners: cancelled at every await point


def _collect_loop_errors() -> list[dict[str, Any]]:
    """What the running loop's exception handler gets ("never retrieved" among others)."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    return errors


async def test_a_trigger_cancelled_before_it_ran_neither_joins_nor_adds_a_run() -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=2)
    async with asyncio.timeout(10):
        first = asyncio.create_task(t.trigger("a"))
        await recorder.started.wait()
        never_ran = asyncio.create_task(t.trigger("b"))
        never_ran.cancel()
        with pytest.raises(asyncio.CancelledError):
            await never_ran
        assert await first == (1, "a")
    assert recorder.inputs == ["a"]
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_joiner_cancelled_while_its_run_waits_leaves_the_run_to_the_others() -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=2)
    async with asyncio.timeout(10):
        first = asyncio.create_task(t.trigger("a"))
        await recorder.started.wait()
        staying = asyncio.create_task(t.trigger("b"))  # adds the waiting run
        leaving = asyncio.create_task(t.trigger("c"))  # joins it: "c" is its input now
        await asyncio.sleep(0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert await first == (1, "a")
        # The input a leaving joiner gave stays: the newest input wins, whoever waits for it.
        assert await staying == (2, "c")
    assert recorder.inputs == ["a", "c"]
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_the_last_joiner_leaving_a_waiting_run_drops_it() -> None:
    recorder = Recorder()
    t = Task(task_function=recorder, buffered=True, buffer_max=2)
    async with asyncio.timeout(10):
        first = asyncio.create_task(t.trigger("a"))
        await recorder.started.wait()
        joiners = [asyncio.create_task(t.trigger(c)) for c in "bcd"]
        await asyncio.sleep(0)
        for joiner in joiners[:2]:
            joiner.cancel()
        await asyncio.wait(joiners[:2])
        # One joiner is left: the run is kept, and a trigger still finds the buffer full.
        late = asyncio.create_task(t.trigger("e"))
        await asyncio.sleep(0)
        for joiner in (joiners[2], late):
            joiner.cancel()
        await asyncio.wait((joiners[2], late))
        # Nobody waits for it any more: it is gone, and the next trigger adds a fresh run.
        assert await t.trigger("f") == (2, "f")
        assert await first == (1, "a")
    assert all(joiner.cancelled() for joiner in (*joiners, late))
    assert recorder.inputs == ["a", "f"]
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("fails", [False, True])
@pytest.mark.parametrize("last", [False, True])
async def test_a_joiner_cancelled_as_its_run_ends_leaves_the_outcome_to_the_others(
    record: Record, fails: bool, last: bool
) -> None:
    """The run's function cancels a joiner on its way out: the cancellation is not delivered
    yet when the run hands its outcome out. The run is not cancelled, even when that joiner
    was the last one; the others get the outcome; an error is not "never retrieved"."""
    errors = _collect_loop_errors()
    callers: list[asyncio.Task[Any]] = []

    async def ends(value: str) -> str:
        await asyncio.sleep(1)
        callers[-1].cancel()
        if fails:
            raise ValueError(value)
        return value

    t = Task(task_function=ends, buffered=True, buffer_max=1)
    events = record(t)
    async with asyncio.timeout(10):
        callers.extend(asyncio.create_task(t.trigger(c)) for c in ("ab"[int(last) :]))
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(outcomes[-1], asyncio.CancelledError)
    for outcome in outcomes[:-1]:
        if fails:
            assert (type(outcome), str(outcome)) == (ValueError, "a")
        else:
            assert outcome == "a"
    assert [event.type for event in events] == ["started", "failed" if fails else "completed"]
    assert asyncio.all_tasks() == {asyncio.current_task()}
    del outcomes
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


@pytest.mark.parametrize("fails", [False, True])
async def test_a_joiner_cancelled_after_its_outcome_came_but_before_it_resumed(
    record: Record, fails: bool
) -> None:
    """The first joiner to resume cancels the second, whose outcome is already in: the
    second gets the CancelledError it asked for, and nothing is left unretrieved."""
    errors = _collect_loop_errors()

    async def ends() -> str:
        await asyncio.sleep(1)
        if fails:
            raise ValueError("no")
        return "done"

    t = Task(task_function=ends, buffered=True, buffer_max=1)
    events = record(t)

    async def first() -> str:
        try:
            return await t.trigger()
        finally:
            second.cancel()

    async with asyncio.timeout(10):
        leader = asyncio.create_task(first())
        second = asyncio.create_task(t.trigger())
        outcomes = await asyncio.gather(leader, second, return_exceptions=True)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    if fails:
        assert isinstance(outcomes[0], ValueError)
    else:
        assert outcomes[0] == "done"
    assert [event.type for event in events] == ["started", "failed" if fails else "completed"]
    assert asyncio.all_tasks() == {asyncio.current_task()}
    del outcomes
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


async def test_a_run_that_ends_cancelled_cancels_every_joiner(record: Record) -> None:
    """Its function raised ``CancelledError`` of its own: every trigger on that run gets it,
    and the buffer goes on."""
    seen: list[str] = []

    async def gives_up(value: str) -> str:
        seen.append(value)
        await asyncio.sleep(1)
        if value == "a":
            raise asyncio.CancelledError
        return value

    t = Task(task_function=gives_up, buffered=True, buffer_max=1)
    events = record(t)
    async with asyncio.timeout(10):
        callers = [asyncio.create_task(t.trigger(c)) for c in "ab"]
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
        assert await t.trigger("c") == "c"
    assert seen == ["a", "c"]
    assert [event.type for event in events] == ["started", "cancelled", "started", "completed"]
    assert asyncio.all_tasks() == {asyncio.current_task()}
