"""A manager without constraint groups runs a by-name trigger as a plain run (no admission);
stop(), nesting and loops treat it as any other run of the manager, also mixed with the
constrained runs of ``trigger_task`` in one asyncio task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _constraint_support import event_types, settle

from taskbuffer import Task, TaskConstraintGroup, TaskManager, TaskManagerStoppedError


@pytest.mark.parametrize("outer_by_name", [True, False], ids=["plain-outer", "constrained-outer"])
async def test_stop_timeout_cancels_plain_and_constrained_runs_nested_in_one_task(
    record: Any, outer_by_name: bool
) -> None:
    """A by-name run awaits a ``trigger_task`` run (or the other way round) in the same
    asyncio task: stop's cancellation reaches both levels as a cancellation (nothing failed
    or retried) and only the outermost awaiter gets TaskManagerStoppedError."""
    loop = asyncio.get_running_loop()
    manager = TaskManager()

    async def forever() -> None:
        await asyncio.sleep(100)

    inner = Task(name="inner", task_function=forever, retries=3, retry_delay=1)

    async def triggers_inner() -> Any:
        if outer_by_name:
            return await manager.trigger_task(inner)
        return await manager.trigger_task_by_name("inner")

    outer = Task(name="outer", task_function=triggers_inner, retries=3, retry_delay=1)
    manager.add_task(inner)
    manager.add_task(outer)
    events = [record(inner), record(outer)]
    if outer_by_name:
        run = asyncio.ensure_future(manager.trigger_task_by_name("outer"))
    else:
        run = asyncio.ensure_future(manager.trigger_task(outer))
    await settle()
    assert manager.statistics().running == 2
    assert [r.task_name for r in manager.get_active_runs()] == ["outer", "inner"]
    async with asyncio.timeout(10):
        await manager.stop(timeout=0.05)
    assert loop.time() == 0.05
    with pytest.raises(TaskManagerStoppedError):
        await run
    for t, seen in zip((inner, outer), events, strict=True):
        assert event_types(seen) == ["started", "cancelled"], t.name
        assert (t.run_count, t.error_count) == (1, 0), t.name
    assert manager.statistics().running == 0
    assert manager.get_active_runs() == []


async def test_stop_awaited_inside_a_by_name_run_raises() -> None:
    manager = TaskManager()

    async def stops_its_manager() -> None:
        await manager.stop()

    manager.add_task(Task(name="stopper", task_function=stops_its_manager))
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match=r"stop\(\) was awaited from inside a run"):
            await manager.trigger_task_by_name("stopper")
    manager.add_task(Task(name="job", task_function=lambda: "ran"))
    assert await manager.trigger_task_by_name("job") == "ran"
    async with asyncio.timeout(10):
        await manager.stop()


def test_a_manager_with_a_by_name_run_in_flight_refuses_a_second_loop() -> None:
    manager = TaskManager()
    first = asyncio.new_event_loop()
    try:
        gate: asyncio.Future[str] = first.create_future()

        async def held() -> str:
            return await gate

        manager.add_task(Task(name="held", task_function=held))
        manager.add_task(Task(name="second", task_function=lambda: "ran"))
        run = first.create_task(manager.trigger_task_by_name("held"))
        first.run_until_complete(asyncio.sleep(0))
        assert manager.statistics().running == 1

        async def from_another_loop() -> None:
            with pytest.raises(RuntimeError, match="another event loop"):
                await manager.trigger_task_by_name("second")
            with pytest.raises(RuntimeError, match="another event loop"):
                await manager.trigger_task_constrained(Task(name="third", task_function=str))
            with pytest.raises(RuntimeError, match="another event loop"):
                await manager.stop()

        asyncio.run(from_another_loop())
        assert manager.statistics().running == 1
        gate.set_result("held")
        assert first.run_until_complete(run) == "held"
    finally:
        first.close()
    # Its runs over, the manager serves a new loop as before.
    assert asyncio.run(manager.trigger_task_by_name("second")) == "ran"
    asyncio.run(manager.stop())


async def test_stop_returns_once_a_waiter_completes_with_a_shared_result() -> None:
    """stop(drain=True) waits for a share-latest run whose caller left and for a trigger
    waiting for its key; the waiter, the last thing in flight, completes with the run's result
    without running, and stop() returns then."""
    manager = TaskManager()
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="g",
            max_concurrent=1,
            result_sharing="share-latest",
            constraint_key_for_execution=lambda task, x: "k",
        )
    )
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    started: list[int] = []

    async def work(x: int) -> str:
        started.append(x)
        return await gate

    t = Task(name="t", task_function=work)
    first = asyncio.ensure_future(manager.trigger_task(t, 1))
    await settle()
    waiter = asyncio.ensure_future(manager.trigger_task(t, 2))
    await settle()
    assert (manager.statistics().running, manager.statistics().waiting) == (1, 1)
    stopping = asyncio.ensure_future(manager.stop(drain=True))
    first.cancel()  # the run goes on for the waiter
    await settle()
    assert first.cancelled()
    assert not stopping.done()
    gate.set_result("shared")
    async with asyncio.timeout(10):
        await stopping
    assert await waiter == "shared"
    assert started == [1]
    assert manager.get_active_runs() == []
