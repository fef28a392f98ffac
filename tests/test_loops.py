"""Loop independence: objects built at import time work in one event loop after another."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskbuffer import Task, TaskDebounced, TaskOnce

setups: list[str] = []


def _setup() -> str:
    setups.append("setup")
    return "S"


async def _echo(value: object) -> object:
    await asyncio.sleep(0.01)
    return value


async def _with_setup(value: object, setup_value: str) -> tuple[object, str]:
    await asyncio.sleep(0.01)
    return (value, setup_value)


# Built at import time, outside any event loop, and shared by every test below.
BUFFERED = Task(name="buffered", task_function=_echo, buffered=True, buffer_max=2)
DEBOUNCED = TaskDebounced(name="debounced", task_function=_echo, debounce_time=0.05)
ONCE = TaskOnce(name="once", task_function=lambda: "once")
WITH_SETUP = Task(name="setup", task_function=_with_setup, task_setup=_setup)


async def _exercise() -> None:
    async with asyncio.timeout(5):
        assert await asyncio.gather(*(BUFFERED.trigger(i) for i in range(4))) == [0, 3, 3, 3]
        assert list(await asyncio.gather(DEBOUNCED.trigger("a"), DEBOUNCED.trigger("b"))) == [
            "b",
            "b",
        ]
        assert list(await asyncio.gather(ONCE.trigger(), ONCE.trigger())) == ["once", "once"]
        assert await WITH_SETUP.trigger(1) == (1, "S")
    assert setups == ["setup"]
    for task in (BUFFERED, DEBOUNCED, ONCE, WITH_SETUP):
        assert not task.running


def test_one_asyncio_run_after_another() -> None:
    asyncio.run(_exercise())
    asyncio.run(_exercise())


async def test_in_a_pytest_asyncio_loop() -> None:
    await _exercise()


async def test_in_another_pytest_asyncio_loop() -> None:
    await _exercise()


def _left_pending(task: Task[Any, Any], *inputs: object) -> None:
    """Start triggers and leave them running when ``asyncio.run`` ends (it cancels them)."""

    async def main() -> None:
        for value in inputs:
            asyncio.get_running_loop().create_task(task.trigger(value))
        await asyncio.sleep(0)

    asyncio.run(main())


def test_runs_cut_short_by_the_end_of_a_loop_leave_nothing_behind() -> None:
    async def slow(value: object) -> object:
        await asyncio.sleep(10)
        return value

    buffered = Task(task_function=slow, buffered=True, buffer_max=1)
    debounced = TaskDebounced(task_function=slow, debounce_time=0.01)
    once = TaskOnce(task_function=slow)
    for task in (buffered, debounced, once):
        _left_pending(task, "old", "older")
        assert not task.running

    for task in (buffered, debounced, once):
        asyncio.run(_starts_a_run_of_its_own(task))
        assert not task.running


async def _starts_a_run_of_its_own(task: Task[Any, Any]) -> None:
    """In a fresh loop, a trigger starts a run at once (it does not wait on the old loop)."""
    started = asyncio.Event()
    subscription = task.event_subject.subscribe(
        lambda event: started.set() if event.type == "started" else None
    )
    try:
        caller = asyncio.create_task(task.trigger("new"))
        async with asyncio.timeout(1):
            await started.wait()
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
    finally:
        subscription.dispose()


def test_setup_cut_short_by_the_end_of_a_loop_runs_again_in_the_next() -> None:
    calls: list[str] = []

    async def setup() -> str:
        calls.append("setup")
        await asyncio.sleep(0.01)
        return "S"

    t = Task(task_function=_with_setup, task_setup=setup)
    _left_pending(t, "old")
    assert asyncio.run(t.trigger("new")) == ("new", "S")
    assert asyncio.run(t.trigger("newer")) == ("newer", "S")
    assert calls == ["setup", "setup"]


@pytest.mark.parametrize("ending", ["finish", "cancel"])
def test_buffer_with_runs_pending_in_another_live_loop(ending: str) -> None:
    """A loop that is still alive (a pytest-asyncio module-scoped loop, say) keeps its own runs.

    When they end there, later, they must not disturb the buffer's runs in other loops.
    """
    gate = asyncio.Event()

    async def function(value: str) -> str:
        if value == "a":
            await gate.wait()
        await asyncio.sleep(0.01)
        return value

    t = Task(task_function=function, buffered=True, buffer_max=2)
    other = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    other.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        pending = [other.create_task(t.trigger(value)) for value in ("a", "waiting")]
        other.run_until_complete(asyncio.sleep(0))
        assert t.running

        assert asyncio.run(t.trigger("b")) == "b"

        if ending == "finish":
            gate.set()
            results = other.run_until_complete(asyncio.gather(*pending))
            assert results == ["a", "waiting"]
        else:
            for caller in pending:
                caller.cancel()
            other.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
        other.close()
    assert errors == []

    async def full_buffer() -> list[str]:
        return await asyncio.gather(*(t.trigger(v) for v in ("c", "d", "e")))

    assert asyncio.run(full_buffer()) == ["c", "e", "e"]
