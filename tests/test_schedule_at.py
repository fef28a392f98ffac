"""``TaskManager.schedule_task_at``: one-off runs at an instant, on virtual time."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, SimpleNamespace, TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import taskbuffer
from taskbuffer import Task, TaskConstraintGroup, TaskEvent, TaskManager, TaskNotFoundError, _clock
from taskbuffer._clock import now_wall

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
START = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # a Monday; 08:00 in New York

Record = Callable[[Task[Any, Any]], list[TaskEvent]]
WallClock = Callable[[float], None]


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    """Pin the running loop's wall clock: ``now_wall()`` is ``epoch + loop.time()``."""

    def pin(epoch: float) -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(_clock, "time", SimpleNamespace(time=lambda: epoch + loop.time()))
        assert abs(now_wall() - (epoch + loop.time())) < 1e-6, "the wall clock was read before"

    return pin


class Runs(list[tuple[float, Any]]):
    """The (wall-clock instant, input) of each run, with a way to wait for the next ones."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def add(self, input: Any) -> None:
        self.append((now_wall(), input))
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self) < count:
            self.changed.clear()
            await self.changed.wait()


def recorder(name: str = "job") -> tuple[Task[None], Runs]:
    """A task that records the wall-clock instant and input of each run."""
    runs = Runs()
    return Task(task_function=runs.add, name=name), runs


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_a_one_off_runs_once_at_its_instant_with_its_input(wall_clock: WallClock) -> None:
    wall_clock(START.timestamp())
    job, runs = recorder()
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_task(job)
        m.schedule_task_at("job", START + timedelta(seconds=5), input={"n": 1})
        m.schedule_task_at("job", START + timedelta(seconds=2))  # input defaults to None
        await asyncio.sleep(10)
    assert runs == [(START.timestamp() + 2, None), (START.timestamp() + 5, {"n": 1})]


async def test_an_aware_datetime_in_any_zone_is_that_instant(wall_clock: WallClock) -> None:
    wall_clock(START.timestamp())
    job, runs = recorder()
    async with asyncio.timeout(7200), TaskManager(timezone=BERLIN) as m:
        m.add_task(job)
        m.schedule_task_at("job", datetime(2024, 6, 3, 8, 30, tzinfo=NEW_YORK))
        await asyncio.sleep(3600)
    assert [t for t, _ in runs] == [at("2024-06-03T12:30:00+00:00")]


async def test_a_naive_datetime_is_read_in_the_manager_zone(wall_clock: WallClock) -> None:
    wall_clock(START.timestamp())
    job, runs = recorder()
    async with asyncio.timeout(10000), TaskManager(timezone=NEW_YORK) as m:
        m.add_task(job)
        m.schedule_task_at("job", datetime(2024, 6, 3, 9, 0))
        [listed] = m.get_next_scheduled_runs()
        assert listed["next_run"] == datetime(2024, 6, 3, 13, 0, tzinfo=UTC)
        await asyncio.sleep(7200)
    assert [t for t, _ in runs] == [at("2024-06-03T09:00:00-04:00")]


def test_a_naive_datetime_is_read_in_local_time_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        m = TaskManager()
        job, _ = recorder()
        m.add_task(job)
        m.schedule_task_at("job", datetime(2030, 1, 2, 3, 4))
        [listed] = m.get_next_scheduled_runs()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert listed["next_run"] == datetime(2030, 1, 2, 2, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "naive", "expected"),
    [
        # Skipped by the spring jump: the run is right after the jump (as for fixed-time cron).
        (BERLIN, datetime(2024, 3, 31, 2, 30), "2024-03-31T03:00:00+02:00"),
        (NEW_YORK, datetime(2024, 3, 10, 2, 15), "2024-03-10T03:00:00-04:00"),
        # Shown twice in autumn: the first occurrence.
        (BERLIN, datetime(2024, 10, 27, 2, 30), "2024-10-27T02:30:00+02:00"),
        (NEW_YORK, datetime(2024, 11, 3, 1, 30), "2024-11-03T01:30:00-04:00"),
    ],
)
def test_a_naive_datetime_around_a_dst_change(
    zone: ZoneInfo, naive: datetime, expected: str
) -> None:
    m = TaskManager(timezone=zone)
    job, _ = recorder()
    m.add_task(job)
    m.schedule_task_at("job", naive)
    assert m.get_next_scheduled_runs()[0]["next_run"].timestamp() == at(expected)


async def test_a_past_instant_runs_as_soon_as_the_manager_is_started(
    wall_clock: WallClock,
) -> None:
    wall_clock(START.timestamp())
    job, runs = recorder()
    m = TaskManager(timezone=UTC)
    m.add_task(job)
    m.schedule_task_at("job", START - timedelta(days=1), input="late")
    async with asyncio.timeout(60):
        await asyncio.sleep(5)
        assert runs == []  # not started: nothing runs
        await m.start()
        await runs.wait_for(1)  # no virtual time passes: it runs at once
        assert runs == [(START.timestamp() + 5, "late")]
        # While started, a past instant runs at once too.
        m.schedule_task_at("job", START, input="also late")
        await runs.wait_for(2)
        assert runs[-1] == (START.timestamp() + 5, "also late")
        await m.stop()


async def test_a_one_off_due_while_stopped_runs_on_the_next_start(wall_clock: WallClock) -> None:
    wall_clock(START.timestamp())
    job, runs = recorder()
    m = TaskManager(timezone=UTC)
    m.add_task(job)
    async with asyncio.timeout(60):
        await m.start()
        m.schedule_task_at("job", START + timedelta(seconds=10))
        await asyncio.sleep(5)
        await m.stop()
        await asyncio.sleep(10)
        assert runs == [] and m.statistics().scheduled == 1
        await m.start()
        await runs.wait_for(1)
        await m.stop()
    assert [t for t, _ in runs] == [START.timestamp() + 15]


async def test_a_one_off_cut_off_by_stop_before_it_began_stays_pending(
    wall_clock: WallClock,
) -> None:
    wall_clock(START.timestamp())
    job, runs = recorder()
    m = TaskManager(timezone=UTC)
    m.add_task(job)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(60):
        await m.start()
        m.schedule_task_at("job", START + timedelta(seconds=1))
        # Right after the scheduler's timer fires (same instant, armed later), before the run's
        # asyncio task takes its first step, the scheduler stops.
        loop.call_at(loop.time() + 1, m._scheduler.stop)
        await asyncio.sleep(2)
        assert runs == [] and m.statistics().scheduled == 1
        await m.stop()
        await m.start()
        await runs.wait_for(1)
        await m.stop()
    assert [t for t, _ in runs] == [START.timestamp() + 2]
    assert m.statistics().scheduled == 0


async def test_deschedule_cancels_pending_one_offs(wall_clock: WallClock) -> None:
    wall_clock(START.timestamp())
    job, runs = recorder()
    other, other_runs = recorder("other")
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_task(job)
        m.add_task(other)
        for seconds in (1, 2, 3):
            m.schedule_task_at("job", START + timedelta(seconds=seconds))
        m.schedule_task_at("other", START + timedelta(seconds=2))
        m.schedule_task_by_name("job", "*/10 * * * * *")
        assert m.statistics().scheduled == 5  # one cron schedule and four one-off runs
        m.deschedule_task_by_name("job")
        assert m.statistics().scheduled == 1
        assert job.get_metadata().next_run is None
        await asyncio.sleep(20)
        with pytest.raises(TaskNotFoundError):
            m.schedule_task_at("nope", START)
    assert runs == [] and len(other_runs) == 1


async def test_a_one_off_descheduled_at_the_instant_it_fell_due_does_not_run(
    wall_clock: WallClock,
) -> None:
    # Descheduled right after the scheduler's timer fired for it (same instant, armed later),
    # before its run began: it was still pending, so it is dropped; it ran, or came back
    # after a stop and start.
    wall_clock(START.timestamp())
    job, runs = recorder()
    m = TaskManager(timezone=UTC)
    m.add_task(job)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(60):
        await m.start()
        m.schedule_task_at("job", START + timedelta(seconds=1))
        loop.call_at(loop.time() + 1, m.deschedule_task_by_name, "job")
        await asyncio.sleep(2)
        assert runs == [] and m.statistics().scheduled == 0
        await m.stop()
        await m.start()
        await asyncio.sleep(2)
        await m.stop()
    assert runs == [] and m.statistics().scheduled == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_remove_task_drops_its_one_offs(wall_clock: WallClock) -> None:
    wall_clock(START.timestamp())
    job, runs = recorder()
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_task(job)
        m.schedule_task_at("job", START + timedelta(seconds=1))
        m.remove_task(job)
        assert m.statistics().scheduled == 0
        await asyncio.sleep(5)
    assert runs == []


async def test_one_offs_are_listed_and_counted(wall_clock: WallClock) -> None:
    wall_clock(START.timestamp())
    job, _ = recorder()
    cron, _ = recorder("cron")
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_task(job)
        m.add_and_schedule_task(cron, "0 13 * * *")
        m.schedule_task_at("job", START + timedelta(seconds=30), input=1)
        m.schedule_task_at("job", START + timedelta(seconds=10), input=2)
        assert m.statistics().scheduled == 3
        assert m.get_next_scheduled_runs() == [
            {"task_name": "job", "next_run": START + timedelta(seconds=10), "schedule": "once"},
            {"task_name": "job", "next_run": START + timedelta(seconds=30), "schedule": "once"},
            {"task_name": "cron", "next_run": START + timedelta(hours=1), "schedule": "0 13 * * *"},
        ]
        infos = {info.name: info for info in m.get_scheduled_tasks()}
        assert infos["job"].schedule == "once"
        assert infos["job"].next_run == START + timedelta(seconds=10)
        assert job.get_metadata().next_run == START + timedelta(seconds=10)
        assert job.get_metadata().cron_schedule is None
        await asyncio.sleep(15)
        assert m.statistics().scheduled == 2
        assert job.get_metadata().next_run == START + timedelta(seconds=30)
        await asyncio.sleep(15)
        assert m.statistics().scheduled == 1
        assert job.get_metadata().next_run is None
        assert [info.name for info in m.get_scheduled_tasks()] == ["cron"]


async def test_a_task_with_cron_and_one_offs_shows_the_soonest(wall_clock: WallClock) -> None:
    wall_clock(START.timestamp())
    job, _ = recorder()
    m = TaskManager(timezone=UTC)
    m.add_and_schedule_task(job, "0 13 * * *")
    m.schedule_task_at("job", START + timedelta(minutes=5))
    [info] = m.get_scheduled_tasks()
    assert (info.schedule, info.next_run) == ("0 13 * * *", START + timedelta(minutes=5))


def test_when_must_be_a_datetime() -> None:
    m = TaskManager()
    job, _ = recorder()
    m.add_task(job)
    with pytest.raises(TypeError, match="when must be a datetime, not 12"):
        m.schedule_task_at("job", 12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="when must be a datetime"):
        m.schedule_task_at("job", datetime(2030, 1, 1).date())  # type: ignore[arg-type]


async def test_a_one_off_goes_through_the_constraints(
    wall_clock: WallClock, record: Record
) -> None:
    wall_clock(START.timestamp())
    seen: list[Any] = []

    def should_execute(task: Task[Any, Any], input: Any) -> bool:
        seen.append(input)
        return bool(input != "no")

    group = TaskConstraintGroup(
        name="one",
        constraint_key_for_execution=lambda t, i: "k",
        max_concurrent=1,
        should_execute=should_execute,
    )
    starts: list[float] = []

    async def slow(input: Any) -> None:
        starts.append(now_wall())
        await asyncio.sleep(3)

    job = Task(task_function=slow, name="slow")
    events = record(job)
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_constraint_group(group)
        m.add_task(job)
        m.schedule_task_at("slow", START + timedelta(seconds=1), input="a")
        m.schedule_task_at("slow", START + timedelta(seconds=2), input="b")  # waits for "a"
        m.schedule_task_at("slow", START + timedelta(seconds=10), input="no")
        await asyncio.sleep(12)
    base = START.timestamp()
    assert starts == [base + 1, base + 4]
    assert seen == ["a", "b", "no"]
    assert [e.type for e in events] == [
        "started",
        "queued",
        "completed",
        "started",
        "completed",
        "skipped",
    ]


async def test_a_failing_one_off_is_reported_not_lost(
    wall_clock: WallClock, record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    wall_clock(START.timestamp())

    def broken() -> None:
        raise ValueError("bad row 7")

    job = Task(task_function=broken, name="broken")
    events = record(job)
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_task(job)
        m.schedule_task_at("broken", START + timedelta(seconds=1))
        await asyncio.sleep(2)
    gc.collect()
    assert [(e.type, e.error) for e in events] == [("started", None), ("failed", "bad row 7")]
    [logged] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged.name == "taskbuffer"
    assert logged.getMessage() == "one-off run of task 'broken' failed"
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], ValueError)
    assert asyncio.all_tasks() == {asyncio.current_task()}


class CallCounter:
    """Counts the calls made inside taskbuffer's code while active (``sys.setprofile``).

    Calls into taskbuffer's functions and builtins they call (``min``, ``list.remove``...): a
    loop over the pending runs shows as calls in proportion to them, so the count measures
    the work done, deterministically and without timing.
    """

    PACKAGE = str(Path(taskbuffer.__file__).parent)

    def __init__(self) -> None:
        self.calls = 0
        self._previous: Any = None

    def _profile(self, frame: FrameType, event: str, arg: object) -> None:
        if event in ("call", "c_call") and frame.f_code.co_filename.startswith(self.PACKAGE):
            self.calls += 1

    def __enter__(self) -> CallCounter:
        self._previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sys.setprofile(self._previous)


async def test_scheduling_a_one_off_costs_no_more_with_thousands_pending(
    wall_clock: WallClock,
) -> None:
    wall_clock(START.timestamp())

    async def calls_per_schedule(pending: int) -> float:
        job, _ = recorder()
        async with TaskManager(timezone=UTC) as m:
            m.add_task(job)
            for i in range(pending):
                m.schedule_task_at("job", START + timedelta(hours=1, seconds=i))
            later = [START + timedelta(hours=2, seconds=i) for i in range(100)]
            with CallCounter() as counter:
                for when in later:
                    m.schedule_task_at("job", when)
            assert m.statistics().scheduled == pending + 100
        return counter.calls / 100

    async with asyncio.timeout(60):
        few, many = await calls_per_schedule(10), await calls_per_schedule(3000)
    assert many <= few * 1.1, f"{few} calls per schedule_task_at with 10 pending, {many} with 3000"


async def test_firing_many_due_one_offs_costs_the_same_per_run_and_keeps_their_order(
    wall_clock: WallClock,
) -> None:
    wall_clock(START.timestamp())

    async def calls_per_firing(due: int) -> float:
        job, runs = recorder()
        m = TaskManager(timezone=UTC)
        m.add_task(job)
        order = list(range(due))
        random.Random(due).shuffle(order)
        for i in order:  # all due when the manager starts, scheduled out of order
            m.schedule_task_at("job", START - timedelta(hours=1) + timedelta(seconds=i), input=i)
        try:
            with CallCounter() as counter:
                await m.start()
                await runs.wait_for(due)
        finally:
            await m.stop()
        assert [input for _, input in runs] == list(range(due))
        assert m.statistics().scheduled == 0 and job.get_metadata().next_run is None
        return counter.calls / due

    async with asyncio.timeout(60):
        few, many = await calls_per_firing(100), await calls_per_firing(1500)
    assert many <= few * 1.2, f"{few} calls per firing of 100 due runs, {many} of 1500"
