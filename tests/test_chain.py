"""``Taskchain``: tasks in sequence, each result the next input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from taskbuffer import Task, TaskbufferError, Taskchain, TaskChainError, TaskEvent

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


def adder(amount: int, name: str | None = None) -> Task[int]:
    return Task(name=name, task_function=lambda value: value + amount)


async def test_each_result_is_the_next_input() -> None:
    calls: list[tuple[str, int]] = []

    def step(label: str, amount: int) -> Task[int]:
        def function(value: int) -> int:
            calls.append((label, value))
            return value * amount

        return Task(name=label, task_function=function)

    async def slow_plus_one(value: int) -> int:
        await asyncio.sleep(1)
        calls.append(("slow", value))
        return value + 1

    chain = Taskchain(
        name="pipeline",
        task_array=[step("double", 2), Task(task_function=slow_plus_one), step("triple", 3)],
    )
    assert await chain.trigger(5) == 33
    assert calls == [("double", 5), ("slow", 10), ("triple", 11)]
    assert asyncio.get_running_loop().time() == 1.0


async def test_empty_chain_returns_its_input() -> None:
    assert await Taskchain(task_array=[]).trigger("same") == "same"


async def test_add_remove_and_shift_tasks() -> None:
    first, second, third = adder(1, "first"), adder(10, "second"), adder(100, "third")
    chain = Taskchain(task_array=[first, second])
    chain.add_task(third)
    assert chain.task_array == [first, second, third]
    assert await chain.trigger(0) == 111

    assert chain.remove_task(second) is True
    assert chain.remove_task(second) is False
    assert await chain.trigger(0) == 101

    assert chain.shift_task() is first
    assert chain.task_array == [third]
    assert chain.shift_task() is third
    assert chain.shift_task() is None
    assert await chain.trigger(7) == 7


def test_task_array_is_a_copy() -> None:
    chain = Taskchain(task_array=[adder(1)])
    chain.task_array.clear()
    assert len(chain.task_array) == 1


def test_only_tasks_can_be_chained() -> None:
    with pytest.raises(TypeError, match="a Taskchain holds Task objects, not 'nope'"):
        Taskchain(task_array=["nope"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="a Taskchain holds Task objects"):
        Taskchain(task_array=[]).add_task(len)  # type: ignore[arg-type]


async def test_failure_raises_chain_error_naming_chain_task_and_index(record: Record) -> None:
    ran: list[str] = []

    def fail(value: int) -> int:
        raise ValueError(f"bad value {value}")

    after = Task(name="after", task_function=lambda value: ran.append("after"))
    chain = Taskchain(
        name="pipeline",
        task_array=[adder(1, "inc"), Task(name="breaks", task_function=fail), after],
    )
    events = record(chain)
    with pytest.raises(TaskChainError) as caught:
        await chain.trigger(1)
    error = caught.value
    assert isinstance(error, TaskbufferError)
    assert (error.chain_name, error.task_name, error.task_index) == ("pipeline", "breaks", 1)
    assert str(error) == (
        "chain 'pipeline' failed at task 'breaks' (index 1): ValueError: bad value 2"
    )
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "bad value 2"
    assert ran == []  # the tasks after the failure do not run
    assert [event.type for event in events] == ["started", "failed"]
    assert chain.last_error is error
    assert chain.error_count == 1


async def test_unnamed_chain_and_task_are_called_unnamed() -> None:
    def fail() -> None:
        raise RuntimeError("x")

    with pytest.raises(TaskChainError) as caught:
        await Taskchain(task_array=[Task(task_function=fail)]).trigger()
    assert (caught.value.chain_name, caught.value.task_name, caught.value.task_index) == (
        "unnamed",
        "unnamed",
        0,
    )


async def test_a_member_with_catch_errors_passes_none_on() -> None:
    def fail(value: int) -> int:
        raise ValueError("swallowed")

    chain = Taskchain(
        task_array=[Task(task_function=fail, catch_errors=True), Task(task_function=repr)]
    )
    assert await chain.trigger(1) == "None"


async def test_members_run_through_their_own_trigger() -> None:
    """A buffered member coalesces even inside chains; a TaskOnce member runs once."""
    calls: list[int] = []

    async def slow(value: int) -> int:
        calls.append(value)
        await asyncio.sleep(1)
        return value

    member = Task(task_function=slow, buffered=True, buffer_max=1)
    chains = [Taskchain(task_array=[member]) for _ in range(3)]
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(c.trigger(i) for i, c in enumerate(chains)))
    assert results == [0, 0, 0]
    assert calls == [0]


async def test_chain_is_a_task() -> None:
    chain = Taskchain(
        name="c",
        task_array=[adder(1)],
        labels={"kind": "chain"},
        steps=[{"name": "only", "percentage": 100}],
        retries=1,
    )
    assert isinstance(chain, Task)
    assert chain.has_label("kind", "chain")
    assert await chain.trigger(1) == 2
    assert chain.run_count == 1
    assert chain.get_metadata().name == "c"


async def test_chain_retries_start_from_the_first_task() -> None:
    calls: list[str] = []
    attempts = 0

    def flaky(value: int) -> int:
        nonlocal attempts
        attempts += 1
        calls.append("flaky")
        if attempts == 1:
            raise ValueError("once")
        return value

    def first_function(value: int) -> int:
        calls.append("first")
        return value

    first = Task(task_function=first_function)
    chain = Taskchain(task_array=[first, Task(task_function=flaky)], retries=1)
    assert await chain.trigger(3) == 3
    assert calls == ["first", "flaky", "first", "flaky"]


async def test_changes_during_a_run_apply_to_the_next_run() -> None:
    chain: Taskchain
    late = adder(100)

    def grows(value: int) -> int:
        chain.add_task(late)
        return value + 1

    chain = Taskchain(task_array=[Task(task_function=grows)])
    assert await chain.trigger(0) == 1
    assert len(chain.task_array) == 2
