"""Cron ticks offered to a distributed coordinator, on virtual time.

The backend suite runs against every coordinator without outside services (the in-memory one);
the Redis coordinator has its own module against a real server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from taskbuffer import Task, TaskEvent, TaskManager, _clock
from taskbuffer._clock import now_wall
from taskbuffer.distributed import (
    COORDINATOR_TIMEOUT,
    AbstractDistributedCoordinator,
    DistributedTaskRequest,
    DistributedTaskRequestResult,
    InMemoryDistributedCoordinator,
)

START = datetime(2024, 6, 3, 12, 0, 0, 250000, tzinfo=UTC)
BASE = START.timestamp() - 0.25  # the whole second before START: ticks are BASE + n

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


@pytest.fixture(autouse=True)
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's loop starts at START on the wall clock (``now_wall() == START + loop.time()``).

    taskbuffer anchors wall-clock instants on ``time.time()`` at a loop's first use; this feeds
    that first read, which happens inside the test.
    """

    def fake_time() -> float:
        return START.timestamp() + asyncio.get_running_loop().time()

    monkeypatch.setattr(_clock, "time", SimpleNamespace(time=fake_time))


@pytest.fixture(params=["memory"])
def shared(request: pytest.FixtureRequest) -> AbstractDistributedCoordinator:
    """A coordinator that several managers share (one per backend)."""
    assert request.param == "memory"
    return InMemoryDistributedCoordinator()


class Recording(AbstractDistributedCoordinator):
    """One manager's view of a shared coordinator: records every call, then passes it on."""

    def __init__(self, inner: AbstractDistributedCoordinator) -> None:
        self.inner = inner
        self.requests: list[DistributedTaskRequest] = []
        self.answers: list[DistributedTaskRequestResult] = []
        self.updates: list[DistributedTaskRequest] = []
        self.calls: list[str] = []

    async def fire_distributed_task_request(
        self, request: DistributedTaskRequest
    ) -> DistributedTaskRequestResult:
        self.requests.append(request)
        answer = await self.inner.fire_distributed_task_request(request)
        self.answers.append(answer)
        return answer

    async def update_distributed_task_request(self, request: DistributedTaskRequest) -> None:
        self.updates.append(request)
        await self.inner.update_distributed_task_request(request)

    async def start(self) -> None:
        self.calls.append("start")
        await self.inner.start()

    async def stop(self) -> None:
        self.calls.append("stop")
        await self.inner.stop()


def ticker(name: str, runs: list[tuple[str, float]], node: str) -> Task[None]:
    """A task recording which node ran it, and when."""

    async def job() -> None:  # async: a timeout cannot hold for a plain function
        runs.append((node, now_wall()))

    return Task(task_function=job, name=name, version="2.1", timeout=5)


# ----------------------------------------------------------------------- backend suite


async def test_three_managers_run_each_tick_exactly_once_between_them(
    shared: AbstractDistributedCoordinator,
) -> None:
    runs: list[tuple[str, float]] = []
    views = [Recording(shared) for _ in range(3)]
    managers = [TaskManager(distributed_coordinator=v, timezone=UTC) for v in views]
    for i, m in enumerate(managers):
        m.add_and_schedule_task(ticker("job", runs, f"node-{i}"), "* * * * * *")
    async with asyncio.timeout(60):
        for m in managers:
            await m.start()
        await asyncio.sleep(10)
        for m in managers:
            await m.stop()
    assert sorted(t for _, t in runs) == [BASE + n for n in range(1, 11)]
    # Every manager offered every tick; exactly one of the three was told to run it.
    for view in views:
        assert [r.task_execution_time for r in view.requests] == [BASE + n for n in range(1, 11)]
    winners = [
        sum(a.should_trigger for v in views for a in v.answers[n : n + 1]) for n in range(10)
    ]
    assert winners == [1] * 10
    assert sum(len(v.updates) for v in views) == 10
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_each_request_has_every_field_filled(
    shared: AbstractDistributedCoordinator,
) -> None:
    runs: list[tuple[str, float]] = []
    view, other = Recording(shared), Recording(InMemoryDistributedCoordinator())
    failing_calls = 0

    def sometimes_fails() -> None:
        nonlocal failing_calls
        failing_calls += 1
        if failing_calls == 2:
            raise RuntimeError("boom")

    async with asyncio.timeout(60):
        async with TaskManager(distributed_coordinator=view, timezone=UTC) as m:
            m.add_and_schedule_task(ticker("job", runs, "a"), "* * * * * *")
            m.add_and_schedule_task(
                Task(task_function=sometimes_fails, name="flaky"), "*/2 * * * * *"
            )
            await asyncio.sleep(4)
        async with TaskManager(distributed_coordinator=other, timezone=UTC) as m2:
            m2.add_and_schedule_task(ticker("job", runs, "b"), "* * * * * *")
            await asyncio.sleep(1)

    jobs = [r for r in view.requests if r.task_name == "job"]
    assert [r.task_execution_time for r in jobs] == [BASE + 1, BASE + 2, BASE + 3, BASE + 4]
    for r in view.requests:
        assert r.status == "requesting"
        assert r.task_execution_parallel == 1
        assert len(r.submitter_id) == 32  # a uuid4 hex: stable for the manager
    assert {r.submitter_id for r in view.requests} == {view.requests[0].submitter_id}
    assert other.requests[0].submitter_id != view.requests[0].submitter_id
    assert len({r.request_response_id for r in view.requests}) == len(view.requests)
    assert {(r.task_version, r.task_execution_timeout) for r in jobs} == {("2.1", 5.0)}
    flaky = [r for r in view.requests if r.task_name == "flaky"]
    assert [(r.task_version, r.task_execution_timeout) for r in flaky] == [(None, None)] * 2
    # Each update repeats its request with the outcome.
    outcome = {u.request_response_id: u for u in view.updates}
    for r in view.requests:
        update = outcome[r.request_response_id]
        assert update.task_execution_time == r.task_execution_time
        assert update.submitter_id == r.submitter_id
    statuses = [outcome[r.request_response_id].status for r in flaky]
    assert statuses == ["succeeded", "failed"]
    assert {outcome[r.request_response_id].status for r in jobs} == {"succeeded"}


async def test_a_tick_whose_instant_was_claimed_does_not_run(
    shared: AbstractDistributedCoordinator,
) -> None:
    runs: list[tuple[str, float]] = []
    # Another submitter claimed the second tick before this manager asked.
    await shared.fire_distributed_task_request(
        DistributedTaskRequest(
            submitter_id="elsewhere",
            request_response_id="r0",
            task_name="job",
            task_version=None,
            task_execution_time=BASE + 2,
            task_execution_timeout=None,
            task_execution_parallel=1,
            status="requesting",
        )
    )
    view = Recording(shared)
    async with asyncio.timeout(60), TaskManager(distributed_coordinator=view, timezone=UTC) as m:
        m.add_and_schedule_task(ticker("job", runs, "here"), "* * * * * *")
        await asyncio.sleep(3)
    assert [t for _, t in runs] == [BASE + 1, BASE + 3]
    assert [a.should_trigger for a in view.answers] == [True, False, True]
    assert "another manager" in view.answers[1].reason
    assert len(view.updates) == 2  # only ticks that ran here are reported


def block_loop(seconds: float) -> None:
    """Stand for a blocking call of ``seconds`` on the loop's thread, on virtual time (looptime
    moves its clock only between loop iterations; it has no public API for this)."""
    loop = asyncio.get_running_loop()
    now, per_second = "_LoopTimeEventLoop__now", "_LoopTimeEventLoop__resolution_reciprocal"
    setattr(loop, now, getattr(loop, now) + round(seconds * getattr(loop, per_second)))


class Recent(Recording):
    """Refuses a tick more than ``max_age`` seconds old, as the Redis coordinator does."""

    max_age = 1.5

    async def fire_distributed_task_request(
        self, request: DistributedTaskRequest
    ) -> DistributedTaskRequestResult:
        if now_wall() - request.task_execution_time <= self.max_age:
            return await super().fire_distributed_task_request(request)
        self.requests.append(request)
        answer = DistributedTaskRequestResult(
            submitter_id=request.submitter_id,
            request_response_id=request.request_response_id,
            considered=True,
            rank=1,
            reason="too old",
            should_trigger=False,
        )
        self.answers.append(answer)
        return answer


async def test_ticks_coalesced_after_a_blocked_loop_are_offered_as_the_oldest_of_them(
    record: Record,
) -> None:
    # The loop is blocked from +2 to +5.5: the ticks at +3, +4 and +5 are coalesced into one
    # run, offered as +3, the tick it is late for. A coordinator bounding the age refuses a
    # run that late; the schedule goes on at +6. (Offered as +5, a manager resumed after a
    # pause would claim a tick that others may have run while it was paused, and after Redis
    # lost its writes, run it a second time.)
    runs: list[tuple[str, float]] = []
    view = Recent(InMemoryDistributedCoordinator())

    async def job() -> None:
        runs.append(("here", now_wall()))
        if len(runs) == 2:
            block_loop(3.5)

    task = Task(task_function=job, name="job")
    events = record(task)
    async with asyncio.timeout(60), TaskManager(distributed_coordinator=view, timezone=UTC) as m:
        m.add_and_schedule_task(task, "* * * * * *")
        await asyncio.sleep(7)
    offered = [r.task_execution_time for r in view.requests]
    assert offered == [BASE + n for n in (1, 2, 3, 6, 7)]
    assert [a.should_trigger for a in view.answers] == [True, True, False, True, True]
    assert [t for _, t in runs] == [BASE + 1, BASE + 2, BASE + 6, BASE + 7]
    assert [e.type for e in events].count("missed") == 1


# -------------------------------------------------------------------- coordinator faults


class Failing(AbstractDistributedCoordinator):
    """Raises on the first ``fail`` requests, hangs on the next ``hang``, then says yes."""

    def __init__(
        self,
        *,
        fail: int = 0,
        hang: int = 0,
        fail_updates: bool = False,
        error: Callable[[str], BaseException] = ConnectionError,
    ) -> None:
        self.fail = fail
        self.hang = hang
        self.fail_updates = fail_updates
        self.error = error
        self.cancelled = 0

    async def fire_distributed_task_request(
        self, request: DistributedTaskRequest
    ) -> DistributedTaskRequestResult:
        if self.fail:
            self.fail -= 1
            raise self.error("coordinator unreachable")
        if self.hang:
            self.hang -= 1
            try:
                await asyncio.Event().wait()  # never answers
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return DistributedTaskRequestResult(
            submitter_id=request.submitter_id,
            request_response_id=request.request_response_id,
            considered=True,
            rank=0,
            reason="ok",
            should_trigger=True,
        )

    async def update_distributed_task_request(self, request: DistributedTaskRequest) -> None:
        if self.fail_updates:
            raise self.error("cannot report")


async def test_a_coordinator_that_raises_makes_the_tick_not_run_here(
    record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[tuple[str, float]] = []
    job = ticker("job", runs, "here")
    events = record(job)
    coordinator = Failing(fail=1)
    async with (
        asyncio.timeout(60),
        TaskManager(distributed_coordinator=coordinator, timezone=UTC) as m,
    ):
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(2)
    assert [t for _, t in runs] == [BASE + 2]
    expected = (
        "tick at 2024-06-03T12:00:01+00:00 not run here: the coordinator failed: "
        "ConnectionError: coordinator unreachable"
    )
    assert [(e.type, e.error) for e in events][0] == ("skipped", expected)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "taskbuffer"
    assert warning.getMessage() == f"task 'job': {expected}"


class CoordinatorHalt(BaseException):
    """Not an Exception: what a buggy coordinator (or a library under it) might raise."""


async def test_a_coordinator_raising_a_base_exception_is_handled_like_any_failure(
    record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the offer nor the report may leave the tick's asyncio task with an exception
    that nobody retrieves: the tick is not run here, and both are logged."""
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unhandled.append(context))
    runs: list[tuple[str, float]] = []
    job = ticker("job", runs, "here")
    events = record(job)
    coordinator = Failing(fail=1, fail_updates=True, error=CoordinatorHalt)
    async with (
        asyncio.timeout(60),
        TaskManager(distributed_coordinator=coordinator, timezone=UTC) as m,
    ):
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(2)
    gc.collect()
    assert [t for _, t in runs] == [BASE + 2]
    assert [(e.type, e.error) for e in events][0] == (
        "skipped",
        "tick at 2024-06-03T12:00:01+00:00 not run here: the coordinator failed: "
        "CoordinatorHalt: coordinator unreachable",
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "reporting the tick at 2024-06-03T12:00:02+00:00" in warnings[1]
    assert unhandled == []


async def test_a_coordinator_that_does_not_answer_times_out(record: Record) -> None:
    runs: list[tuple[str, float]] = []
    job = ticker("job", runs, "here")
    events = record(job)
    coordinator = Failing(hang=1)
    async with (
        asyncio.timeout(120),
        TaskManager(distributed_coordinator=coordinator, timezone=UTC) as m,
    ):
        m.add_and_schedule_task(job, "*/30 * * * * *")
        await asyncio.sleep(60)
    assert [t for _, t in runs] == [BASE + 60]  # the tick at +30 was given up after 10 s
    [skipped] = [e for e in events if e.type == "skipped"]
    assert skipped.error == (
        "tick at 2024-06-03T12:00:30+00:00 not run here: "
        f"the coordinator did not answer within {COORDINATOR_TIMEOUT:g} s"
    )
    assert skipped.timestamp == BASE + 30 + COORDINATOR_TIMEOUT
    assert coordinator.cancelled == 1


async def test_a_failed_report_is_logged_and_the_tick_still_ran(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[tuple[str, float]] = []
    coordinator = Failing(fail_updates=True)
    async with (
        asyncio.timeout(60),
        TaskManager(distributed_coordinator=coordinator, timezone=UTC) as m,
    ):
        m.add_and_schedule_task(ticker("job", runs, "here"), "* * * * * *")
        await asyncio.sleep(1)
    assert len(runs) == 1
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        "task 'job': reporting the tick at 2024-06-03T12:00:01+00:00 to the coordinator failed"
    )


async def test_stop_cancels_a_tick_waiting_for_the_coordinator() -> None:
    runs: list[tuple[str, float]] = []
    coordinator = Failing(hang=1)
    m = TaskManager(distributed_coordinator=coordinator, timezone=UTC)
    m.add_and_schedule_task(ticker("job", runs, "here"), "* * * * * *")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(60):
        await m.start()
        await asyncio.sleep(1.5)
        stopping = loop.time()
        await m.stop()
        assert loop.time() == stopping  # did not wait for the coordinator
    assert runs == [] and coordinator.cancelled == 1
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_task_removed_while_its_tick_is_offered_does_not_run() -> None:
    runs: list[tuple[str, float]] = []
    answer = asyncio.Event()

    class Slow(Recording):
        async def fire_distributed_task_request(
            self, request: DistributedTaskRequest
        ) -> DistributedTaskRequestResult:
            await answer.wait()
            return await super().fire_distributed_task_request(request)

    view = Slow(InMemoryDistributedCoordinator())
    job = ticker("job", runs, "here")
    async with asyncio.timeout(60), TaskManager(distributed_coordinator=view, timezone=UTC) as m:
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(1.5)  # the tick at +1 waits for the coordinator
        m.remove_task(job)
        answer.set()
        await asyncio.sleep(1)
    assert runs == []
    assert [u.status for u in view.updates] == ["failed"]


async def test_start_and_stop_reach_the_coordinator(
    shared: AbstractDistributedCoordinator,
) -> None:
    view = Recording(shared)
    m = TaskManager(distributed_coordinator=view)
    async with asyncio.timeout(10):
        await m.stop()  # never started: the coordinator is not stopped
        await m.start()
        await m.stop()
        async with m:
            pass
    assert view.calls == ["start", "stop", "start", "stop"]


async def test_one_off_runs_are_not_offered_to_the_coordinator(
    shared: AbstractDistributedCoordinator,
) -> None:
    runs: list[tuple[str, float]] = []
    view = Recording(shared)
    async with asyncio.timeout(60), TaskManager(distributed_coordinator=view, timezone=UTC) as m:
        m.add_task(ticker("job", runs, "here"))
        m.schedule_task_at("job", START + timedelta(seconds=2))
        await asyncio.sleep(3)
    assert len(runs) == 1 and view.requests == []


async def test_a_coordinator_needs_only_its_two_request_methods() -> None:
    class Minimal(AbstractDistributedCoordinator):
        async def fire_distributed_task_request(
            self, request: DistributedTaskRequest
        ) -> DistributedTaskRequestResult:
            raise NotImplementedError

        async def update_distributed_task_request(self, request: DistributedTaskRequest) -> None:
            raise NotImplementedError

    coordinator = Minimal()  # no constructor arguments
    await coordinator.start()  # the lifecycle hooks are optional no-ops
    await coordinator.stop()
    with pytest.raises(TypeError, match="abstract"):
        AbstractDistributedCoordinator()  # type: ignore[abstract]


# ----------------------------------------------------------- the in-memory coordinator


def request(submitter: str, instant: float, *, task: str = "job", parallel: int = 1) -> Any:
    return DistributedTaskRequest(
        submitter_id=submitter,
        request_response_id=f"{submitter}-{instant}",
        task_name=task,
        task_version=None,
        task_execution_time=instant,
        task_execution_timeout=None,
        task_execution_parallel=parallel,
        status="requesting",
    )


async def test_the_in_memory_coordinator_gives_each_tick_to_the_first_askers() -> None:
    c = InMemoryDistributedCoordinator()
    answers = [await c.fire_distributed_task_request(request(s, 1.0)) for s in "abc"]
    assert [(a.should_trigger, a.rank, a.considered) for a in answers] == [
        (True, 0, True),
        (False, 1, True),
        (False, 2, True),
    ]
    assert answers[0].reason == "claimed the tick"
    assert answers[1].reason == "another manager claimed this tick (a)"
    assert answers[1].submitter_id == "b" and answers[1].request_response_id == "b-1.0"
    # task_execution_parallel: that many submitters run it.
    two = [await c.fire_distributed_task_request(request(s, 2.0, parallel=2)) for s in "abc"]
    assert [a.should_trigger for a in two] == [True, True, False]
    # Other tasks and other instants are separate ticks.
    other = await c.fire_distributed_task_request(request("b", 1.0, task="other"))
    assert other.should_trigger
    await c.update_distributed_task_request(request("a", 1.0))
    assert repr(c) == "<InMemoryDistributedCoordinator ticks=3>"


async def test_the_in_memory_coordinator_forgets_old_ticks_and_refuses_them() -> None:
    c = InMemoryDistributedCoordinator()
    c.retention = 100.0
    assert (await c.fire_distributed_task_request(request("a", 0.0))).should_trigger
    for n in range(1, 2000):  # enough distinct ticks to make it prune
        await c.fire_distributed_task_request(request("a", float(n)))
    assert len(c._ticks) < 1100
    # A forgotten tick is refused to a late asker, not given out a second time.
    late = await c.fire_distributed_task_request(request("b", 0.0))
    assert not late.should_trigger
    assert late.reason == "the tick is older than the coordinator's retention (100 s)"
    # A recent one is still known.
    recent = await c.fire_distributed_task_request(request("b", 1999.0))
    assert not recent.should_trigger and recent.reason == "another manager claimed this tick (a)"
