"""``TaskOnce``: at most one successful run; its result is cached."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from taskbuffer import Task, TaskEvent, TaskOnce

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


class Flaky:
    """Fails the first ``failures`` runs, then returns a result naming the run."""

    def __init__(self, failures: int = 0, seconds: float = 1) -> None:
        self.failures = failures
        self.seconds = seconds
        self.inputs: list[object] = []
        self.started = asyncio.Event()

    async def __call__(self, value: object) -> str:
        self.inputs.append(value)
        self.started.set()
        await asyncio.sleep(self.seconds)
        if len(self.inputs) <= self.failures:
            raise ValueError(f"run {len(self.inputs)} failed")
        return f"run {len(self.inputs)} with {value!r}"


async def test_concurrent_triggers_share_the_first_run() -> None:
    function = Flaky()
    t = TaskOnce(task_function=function)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(t.trigger(i) for i in range(5)))
    assert results == ["run 1 with 0"] * 5
    assert function.inputs == [0]
    assert asyncio.get_running_loop().time() == 1.0


async def test_later_triggers_return_the_cached_result_without_running(record: Record) -> None:
    function = Flaky()
    t = TaskOnce(task_function=function)
    events = record(t)
    assert await t.trigger("first") == "run 1 with 'first'"
    assert await t.trigger("second") == "run 1 with 'first'"
    assert await t.trigger_unbuffered("third") == "run 1 with 'first'"
    assert function.inputs == ["first"]
    assert t.run_count == 1
    assert [event.type for event in events] == ["started", "completed"]


async def test_failed_run_gives_waiters_the_error_and_the_next_trigger_tries_again() -> None:
    function = Flaky(failures=1)
    t = TaskOnce(task_function=function)
    async with asyncio.timeout(10):
        results = await asyncio.gather(t.trigger("a"), t.trigger("b"), return_exceptions=True)
    assert [str(r) for r in results] == ["run 1 failed"] * 2
    assert all(isinstance(r, ValueError) for r in results)
    assert t.has_triggered
    assert t.error_count == 1

    assert await t.trigger("c") == "run 2 with 'c'"
    assert await t.trigger("d") == "run 2 with 'c'"
    assert function.inputs == ["a", "c"]
    assert t.last_error is None


async def test_has_triggered_once_a_run_has_started() -> None:
    function = Flaky(seconds=5)
    t = TaskOnce(task_function=function)
    assert not t.has_triggered
    run = asyncio.create_task(t.trigger())
    async with asyncio.timeout(10):
        await function.started.wait()
        assert (t.has_triggered, t.running) == (True, True)
        await run
    assert t.has_triggered


async def test_failure_caught_by_catch_errors_is_not_cached() -> None:
    function = Flaky(failures=1)
    t = TaskOnce(task_function=function, catch_errors=True)
    assert await t.trigger("a") is None
    assert await t.trigger("b") == "run 2 with 'b'"
    assert await t.trigger("c") == "run 2 with 'b'"


async def test_cached_none_result_is_still_cached() -> None:
    runs = 0

    def returns_none() -> str | None:
        nonlocal runs
        runs += 1
        return None

    t = TaskOnce(task_function=returns_none)
    assert await t.trigger() is None
    assert await t.trigger() is None
    assert runs == 1


async def test_cancelling_one_waiter_detaches_only_it() -> None:
    function = Flaky()
    t = TaskOnce(task_function=function)
    async with asyncio.timeout(10):
        leaving = asyncio.create_task(t.trigger("a"))
        staying = asyncio.create_task(t.trigger("b"))
        await function.started.wait()
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert await staying == "run 1 with 'a'"


async def test_run_is_cancelled_when_every_waiter_is_cancelled(record: Record) -> None:
    function = Flaky(seconds=10)
    t = TaskOnce(task_function=function)
    events = record(t)
    before = asyncio.all_tasks()
    callers = [asyncio.create_task(t.trigger(i)) for i in range(2)]
    async with asyncio.timeout(20):
        await function.started.wait()
        spawned = asyncio.all_tasks() - before - set(callers)
        for caller in callers:
            caller.cancel()
        for caller in callers:
            with pytest.raises(asyncio.CancelledError):
                await caller
        await asyncio.wait(spawned)
        assert asyncio.all_tasks() == before
        assert [event.type for event in events] == ["started", "cancelled"]
        assert (t.running, t.error_count) == (False, 0)

        # Nothing was cached: the next trigger runs.
        function.seconds = 1
        assert await t.trigger("again") == "run 2 with 'again'"


async def test_once_is_a_task_with_options() -> None:
    function = Flaky(failures=1, seconds=0)
    t = TaskOnce(name="once", task_function=function, retries=1)
    assert isinstance(t, Task)
    assert await t.trigger("x") == "run 2 with 'x'"
    assert (t.run_count, t.error_count) == (1, 0)
    assert t.get_metadata().name == "once"


async def test_a_task_once_triggering_itself_from_its_run_raises() -> None:
    async def calls_itself() -> str:
        return await t.trigger()

    t: TaskOnce[str] = TaskOnce(name="selfish", task_function=calls_itself)
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match=r"'selfish' was triggered from inside its own run"):
            await t.trigger()
    assert (t.run_count, t.error_count, t.running) == (1, 1, False)


async def test_a_task_once_triggering_itself_through_a_plain_task_raises() -> None:
    async def calls_back() -> str:
        return await once.trigger()

    between = Task(name="between", task_function=calls_back)

    async def calls_between() -> str:
        return await between.trigger()

    once: TaskOnce[str] = TaskOnce(name="once", task_function=calls_between)
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match="from inside its own run"):
            await once.trigger()


async def test_a_trigger_after_the_run_was_abandoned_starts_a_fresh_run(record: Record) -> None:
    """The only awaiter is cancelled; one loop turn later (it has left, the run is being
    cancelled) a new trigger must not join that run: it gets a fresh run's result."""
    function = Flaky(seconds=10)
    t = TaskOnce(task_function=function)
    events = record(t)
    async with asyncio.timeout(30):
        leaving = asyncio.create_task(t.trigger("a"))
        await function.started.wait()
        leaving.cancel()
        await asyncio.sleep(0)  # ``leaving`` has left; the run's cancellation is pending
        assert not leaving.done() or leaving.cancelled()
        function.seconds = 1
        assert await t.trigger("b") == "run 2 with 'b'"
        assert leaving.cancelled()
    assert [event.type for event in events] == ["started", "cancelled", "started", "completed"]
    assert await t.trigger("c") == "run 2 with 'b'"
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_fresh_run_waits_for_the_abandoned_one_and_keeps_its_late_success() -> None:
    """A run whose function swallows the cancellation and succeeds anyway is that task's one
    successful run: the trigger that came while it was winding down gets its result (the
    task never runs twice successfully, nor two runs at once)."""
    release = asyncio.Event()
    runs: list[str] = []

    async def stubborn(value: str) -> str:
        runs.append(value)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await release.wait()  # a slow cleanup, after which it returns anyway
        return f"result of {value!r}"

    t = TaskOnce(task_function=stubborn)
    async with asyncio.timeout(30):
        leaving = asyncio.create_task(t.trigger("a"))
        await asyncio.sleep(1)
        leaving.cancel()
        await asyncio.sleep(0)
        late = asyncio.create_task(t.trigger("b"))
        await asyncio.sleep(1)
        assert runs == ["a"] and not late.done()
        release.set()
        assert await late == "result of 'a'"
    assert leaving.cancelled()
    assert runs == ["a"]
    assert await t.trigger("c") == "result of 'a'"


@pytest.mark.parametrize("turns", [1, 2, 3])
async def test_a_run_abandoned_while_waiting_for_an_abandoned_one_keeps_the_next_waiting(
    turns: int,
) -> None:
    """a's run is abandoned and winds down slowly; b's fresh run waits for it and is abandoned
    too, while still waiting; ``turns`` loop turns later (b's run may be over by then) c's run
    must still wait for a's, and a's late success stays the one result."""
    release = asyncio.Event()
    runs: list[str] = []

    async def stubborn(value: str) -> str:
        runs.append(value)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await release.wait()  # a slow cleanup, after which it returns anyway
        return f"result of {value!r}"

    t = TaskOnce(task_function=stubborn)
    async with asyncio.timeout(30):
        first = asyncio.create_task(t.trigger("a"))
        await asyncio.sleep(1)
        first.cancel()
        await asyncio.sleep(0)
        second = asyncio.create_task(t.trigger("b"))
        await asyncio.sleep(1)
        second.cancel()
        for _ in range(turns):
            await asyncio.sleep(0)
        third = asyncio.create_task(t.trigger("c"))
        await asyncio.sleep(1)
        release.set()
        assert runs == ["a"]
        assert await third == "result of 'a'"
    assert first.cancelled() and second.cancelled()
    assert runs == ["a"]
    assert await t.trigger("d") == "result of 'a'"
    assert asyncio.all_tasks() == {asyncio.current_task()}
