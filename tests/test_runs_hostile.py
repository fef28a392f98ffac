"""Runs used the way a hostile (or merely unlucky) user would: asyncio tasks that outlive the
run that made them, run coroutines closed from outside their asyncio task, subscribers that
change while a route is being worked out, many tasks and subscriptions."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import threading
import time
from types import FrameType
from typing import Any

import pytest

from taskbuffer import Task, TaskEvent, current_run

STEPS = [{"name": "parse", "percentage": 40}, {"name": "store", "percentage": 60}]


# ------------------------------------------------------------- runs that outlive their parent


async def test_notify_step_in_an_asyncio_task_that_outlives_its_run_refuses() -> None:
    """A run's code may start an asyncio task and return without awaiting it. Once the run
    has ended, that task is no longer inside any run of the task, even when a run of another
    task (started while the first was still running) is what executes there: notify_step
    raises instead of moving the ended run's steps and emitting a step event for it."""
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    seen: asyncio.Future[BaseException | None] = loop.create_future()
    children: list[asyncio.Task[Any]] = []

    async def late() -> None:
        await release.wait()
        try:
            parent.notify_step("store")
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            seen.set_result(exc)
        else:
            seen.set_result(None)

    inner = Task(name="inner", task_function=late)

    async def start_and_leave() -> None:
        parent.notify_step("parse")
        children.append(loop.create_task(inner.trigger()))
        await asyncio.sleep(0)  # the child's run of `inner` starts inside this run

    parent = Task(name="parent", task_function=start_and_leave, steps=STEPS)
    events: list[TaskEvent] = []
    parent.event_subject.subscribe(events.append)
    await parent.trigger()
    assert inner.running
    assert [event.type for event in events] == ["started", "step", "completed"]
    ended = (parent.get_progress(), parent.get_steps_metadata())
    release.set()
    async with asyncio.timeout(1):
        error = await seen
        await children[0]
    assert isinstance(error, RuntimeError), error
    assert "outside any run" in str(error)
    assert [event.type for event in events] == ["started", "step", "completed"]
    assert (parent.get_progress(), parent.get_steps_metadata()) == ended  # as the run ended


async def test_current_run_in_an_orphaned_asyncio_task_is_its_own_run_or_none() -> None:
    """In an asyncio task that outlives the run that started it, current_run() names a run of
    that task's own (started while the first was running) and nothing once that one ends."""
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    seen: list[str | None] = []
    children: list[asyncio.Task[Any]] = []

    async def late() -> None:
        await release.wait()
        info = current_run()
        seen.append(None if info is None else info.task_name)

    inner = Task(name="inner", task_function=late)

    async def start_and_leave() -> None:
        async def child() -> None:
            await inner.trigger()
            info = current_run()
            seen.append(None if info is None else info.task_name)

        children.append(loop.create_task(child()))
        await asyncio.sleep(0)

    parent = Task(name="parent", task_function=start_and_leave)
    await parent.trigger()
    release.set()
    async with asyncio.timeout(1):
        await children[0]
    assert seen == ["inner", None]


# ------------------------------------------------- a run coroutine closed outside its context


async def test_a_run_closed_outside_its_asyncio_context_ends_cleanly() -> None:
    """The garbage collector closes the coroutine of a pending asyncio task that nobody holds
    in whatever context is current then, not the task's. Closing an outermost run there must
    end it (as cancelled: it was abandoned, not failed) and raise nothing but the
    GeneratorExit that close() expects: an error there would be printed as "Exception ignored
    in <coroutine ...>" (a test failure here, with filterwarnings=error)."""
    gate = asyncio.get_running_loop().create_future()

    async def wait_forever(_value: int) -> None:
        await gate

    t = Task(name="abandoned", task_function=wait_forever, steps=STEPS)
    events: list[TaskEvent] = []
    t.event_subject.subscribe(events.append)
    run = t.trigger(1)
    elsewhere = contextvars.copy_context()
    assert elsewhere.run(run.send, None) is gate  # started, in a context of its own
    assert t.running
    run.close()  # here, in another context: as the garbage collector would
    assert current_run() is None
    assert not t.running and t.run_count == 1
    assert [event.type for event in events] == ["started", "cancelled"]
    assert t.error_count == 0 and t.get_metadata().last_error is None
    gate.cancel()


def test_a_pending_run_collected_after_its_loop_closed_ends_cleanly() -> None:
    """The realistic way to get there: a run in an asyncio task nobody holds, its loop closed
    without cancelling it. asyncio reports the pending task as destroyed; the run itself must
    not add "Exception ignored" to that."""

    async def wait_forever(_value: int) -> None:
        await asyncio.get_running_loop().create_future()

    t = Task(name="collected", task_function=wait_forever)

    async def start() -> None:
        asyncio.get_running_loop().create_task(t.trigger(1))  # nobody keeps it
        await asyncio.sleep(0)  # its run starts and waits for ever

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, _context: None)  # "Task was destroyed..."
    try:
        loop.run_until_complete(start())
    finally:
        loop.close()
    assert t.running
    del loop
    gc.collect()
    assert not t.running and t.error_count == 0 and t.get_metadata().last_error is None


async def test_a_run_closed_in_its_own_context_ends_as_cancelled() -> None:
    gate = asyncio.get_running_loop().create_future()

    async def wait_forever(_value: int) -> None:
        await gate

    t = Task(name="abandoned", task_function=wait_forever, retries=2)
    events: list[TaskEvent] = []
    t.event_subject.subscribe(events.append)
    run = t.trigger(1)
    assert run.send(None) is gate
    run.close()
    assert current_run() is None
    assert [event.type for event in events] == ["started", "cancelled"]
    assert t.error_count == 0 and not t.running
    gate.cancel()


# ---------------------------------------------------------- subscribers changing mid-route


def _once_after_route_is_worked_out(action: Any) -> Any:
    """A tracer that runs ``action`` once, as the emitter's route lookup returns: the moment
    another thread's subscribe lands between the lookup and the cache store (a thread switch
    can happen there; this makes it deterministic)."""
    fired: list[bool] = []

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == "route_for" and not fired:
            return local
        return None

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "return" and not fired:
            fired.append(True)
            action()
        return local

    tracer.fired = fired  # type: ignore[attr-defined]
    return tracer


async def test_a_subscription_made_while_a_route_is_worked_out_is_not_lost() -> None:
    t = Task(name="raced", task_function=lambda value: value)
    t.event_subject.subscribe(lambda _event: None).dispose()  # t's route: to be worked out
    received: list[TaskEvent] = []
    tracer = _once_after_route_is_worked_out(lambda: t.event_subject.subscribe(received.append))
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        await t.trigger(1)  # works its route out; the subscription lands in between
    finally:
        sys.settrace(previous)
    assert tracer.fired == [True]
    await t.trigger(2)
    assert [(event.type, event.run.input) for event in received if event.run] == [
        ("completed", 1),
        ("started", 2),
        ("completed", 2),
    ]


def test_tasks_made_in_one_thread_while_another_subscribes() -> None:
    """Every subscription marks every task's route stale; tasks made meanwhile in another
    thread must neither break the subscriber's call nor be missed."""
    stop = threading.Event()
    errors: list[BaseException] = []
    made: list[Task[Any, Any]] = []

    def make_tasks() -> None:
        try:
            while not stop.is_set():
                made.append(Task(task_function=lambda value: value))
                if len(made) > 2000:
                    made.clear()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    subject_owner = Task(name="watched", task_function=lambda value: value)
    # Enough tasks for a subscription's work on them to be interrupted by a thread switch.
    made.extend(Task(task_function=lambda value: value) for _ in range(100))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    maker = threading.Thread(target=make_tasks)
    maker.start()
    try:
        for _ in range(3000):
            subject_owner.event_subject.subscribe(lambda _event: None).dispose()
    finally:
        stop.set()
        maker.join()
        sys.setswitchinterval(interval)
    assert errors == []


# ------------------------------------------------------------ a loop whose clock switches


def test_wall_clock_instants_follow_a_loop_whose_clock_switches_to_virtual_time() -> None:
    """looptime's pytest plugin makes every loop a looptime loop on the real clock, and turns
    virtual time on around the test function only: async fixtures run on the real clock
    first. Instants taken after the switch must still be wall-clock instants of now (they
    were off by the host's monotonic clock, hours), and move with virtual time."""
    import looptime

    t = Task(name="switched", task_function=lambda value: value)

    async def run_and_sleep(seconds: float) -> float:
        await t.trigger(0)
        first = t.get_metadata().last_run
        await asyncio.sleep(seconds)
        await t.trigger(1)
        last = t.get_metadata().last_run
        assert first is not None and last is not None
        assert abs(first.timestamp() - time.time()) < 60
        return last.timestamp() - first.timestamp()

    # What the plugin does to the loop of every test (its own keyword for "not yet on").
    loop = looptime.new_event_loop(_enabled=False)
    try:
        assert loop.run_until_complete(run_and_sleep(0)) < 60  # a fixture, on the real clock
        with loop.looptime_enabled():
            assert loop.run_until_complete(run_and_sleep(3600)) == pytest.approx(3600)
        assert loop.run_until_complete(run_and_sleep(0)) < 60  # and back
    finally:
        loop.close()


async def test_run_count_is_read_only_state_and_running_follows_the_runs() -> None:
    # running and idle are derived from the runs started and ended: a writable run_count
    # (task.run_count = 0 to reset statistics) would leave the task "running" for good.
    async def work(x: int) -> int:
        return x

    task = Task(task_function=work, name="w")
    await task.trigger(1)
    assert (task.run_count, task.running, task.idle) == (1, False, True)
    with pytest.raises(AttributeError):
        task.run_count = 0  # type: ignore[misc]
    assert (task.run_count, task.running, task.idle) == (1, False, True)
    assert task.get_metadata().status == "completed"
