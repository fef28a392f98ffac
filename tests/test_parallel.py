"""``Taskparallel``: tasks at once on the same input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from taskbuffer import Task, TaskbufferError, TaskEvent, Taskparallel, TaskParallelError

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


def sleeper(seconds: float, label: str, finished: list[str] | None = None) -> Task[Any]:
    async def function(value: object) -> tuple[str, object]:
        await asyncio.sleep(seconds)
        if finished is not None:
            finished.append(label)
        return (label, value)

    return Task(name=label, task_function=function)


def failer(seconds: float, message: str) -> Task[Any]:
    async def function(value: object) -> None:
        await asyncio.sleep(seconds)
        raise ValueError(f"{message}: {value}")

    return Task(name=message, task_function=function)


async def test_results_in_task_array_order_all_at_once() -> None:
    parallel = Taskparallel(
        name="p", task_array=[sleeper(3, "slow"), sleeper(1, "fast"), sleeper(2, "mid")]
    )
    assert await parallel.trigger("x") == [("slow", "x"), ("fast", "x"), ("mid", "x")]
    assert asyncio.get_running_loop().time() == 3.0  # not 6: they ran at once


async def test_empty_parallel_returns_an_empty_list() -> None:
    assert await Taskparallel(task_array=[]).trigger() == []


async def test_failures_raise_a_group_after_every_task_finished(record: Record) -> None:
    finished: list[str] = []
    slowest = sleeper(5, "slowest", finished)
    parallel = Taskparallel(
        name="group",
        task_array=[failer(1, "first"), slowest, failer(2, "second"), sleeper(1, "ok", finished)],
    )
    events = record(parallel)
    with pytest.raises(TaskParallelError) as caught:
        await parallel.trigger(7)
    assert asyncio.get_running_loop().time() == 5.0
    assert finished == ["ok", "slowest"]
    assert slowest.get_metadata().status == "completed"

    group = caught.value
    assert isinstance(group, ExceptionGroup)
    assert isinstance(group, TaskbufferError)
    assert [str(e) for e in group.exceptions] == ["first: 7", "second: 7"]
    assert all(isinstance(e, ValueError) for e in group.exceptions)
    assert group.message == "2 of 4 tasks of parallel 'group' failed"
    assert [event.type for event in events] == ["started", "failed"]
    assert parallel.error_count == 1


async def test_parallel_error_works_with_except_star() -> None:
    def fail() -> None:
        raise KeyError("k")

    parallel = Taskparallel(task_array=[Task(task_function=fail), Task(task_function=fail)])
    caught: list[BaseException] = []
    try:
        await parallel.trigger()
    except* KeyError as group:
        caught.extend(group.exceptions)
    assert len(caught) == 2


def test_only_tasks_run_in_parallel() -> None:
    with pytest.raises(TypeError, match="a Taskparallel holds Task objects, not 3"):
        Taskparallel(task_array=[3])  # type: ignore[list-item]


def test_task_array_is_a_copy() -> None:
    members = [sleeper(1, "a"), sleeper(1, "b")]
    parallel = Taskparallel(task_array=members)
    members.pop()
    parallel.task_array.clear()
    assert len(parallel.task_array) == 2


async def test_cancelling_the_caller_cancels_every_member(record: Record) -> None:
    members = [sleeper(10, "a"), sleeper(10, "b")]
    parallel = Taskparallel(task_array=members)
    member_events = [record(member) for member in members]
    events = record(parallel)
    before = asyncio.all_tasks()
    caller = asyncio.create_task(parallel.trigger())
    asyncio.get_running_loop().call_later(1, caller.cancel)
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(20):
            await caller
    assert [event.type for event in events] == ["started", "cancelled"]
    for recorded in member_events:
        assert [event.type for event in recorded] == ["started", "cancelled"]
    assert not any(member.running for member in members)
    assert asyncio.all_tasks() == before


async def test_a_member_cancelled_on_its_own_cancels_the_parallel_run(record: Record) -> None:
    def cancels_itself() -> None:
        raise asyncio.CancelledError

    parallel = Taskparallel(task_array=[Task(task_function=cancels_itself), sleeper(1, "ok")])
    events = record(parallel)
    with pytest.raises(asyncio.CancelledError):
        await parallel.trigger()
    assert [event.type for event in events] == ["started", "cancelled"]
    assert parallel.error_count == 0


async def test_parallel_is_a_task() -> None:
    parallel = Taskparallel(task_array=[sleeper(1, "a")], name="p", buffered=True, buffer_max=1)
    assert isinstance(parallel, Task)
    results = list(await asyncio.gather(parallel.trigger(1), parallel.trigger(2)))
    assert results == [[("a", 1)], [("a", 1)]]
    assert parallel.run_count == 1


async def test_a_cancelled_run_waits_for_its_members_to_clean_up() -> None:
    loop = asyncio.get_running_loop()
    cleaned: list[float] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(2)  # cleanup that takes time
            cleaned.append(loop.time())
            raise

    parallel = Taskparallel(task_array=[Task(task_function=slow_to_stop), sleeper(10, "b")])
    start = loop.time()
    caller = asyncio.create_task(parallel.trigger())
    loop.call_later(1, caller.cancel)
    with pytest.raises(asyncio.CancelledError):
        await caller
    # The cancellation reached the caller only once the member had cleaned up.
    assert cleaned == [pytest.approx(start + 3)]
    assert loop.time() == pytest.approx(start + 3)
    assert not parallel.running


async def test_a_timeout_around_a_run_is_a_timeout_and_leaves_nothing_behind() -> None:
    before = asyncio.all_tasks()
    failed_early = failer(0.5, "early")
    parallel = Taskparallel(task_array=[failed_early, sleeper(10, "late")])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            await parallel.trigger("x")
    # The member that failed before the timeout had its error retrieved (no warning under
    # filterwarnings=error), and no member task is left.
    assert failed_early.error_count == 1
    assert asyncio.all_tasks() == before
