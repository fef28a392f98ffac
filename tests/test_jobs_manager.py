"""Durable jobs through the manager: the shared backend suite's worker half.

Each test runs on every backend (``backend`` fixture of ``_jobs_support``): memory on virtual
time, SQLite and PostgreSQL on the real clock (their calls are real I/O on threads or
sockets), so leases are short here. Numbers in the names are the contract's semantics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from _jobs_support import Backend, Picky, backend

from taskbuffer import (
    Task,
    TaskConstraintGroup,
    TaskEvent,
    TaskManager,
    TaskNotFoundError,
)
from taskbuffer.jobs import JobCancelledError, JobFailedError, JobSchemaError, JobStore

__all__ = ("backend",)

LEASE = 0.6  # seconds: renewals every 0.2 s


@pytest_asyncio.fixture
async def stores(backend: Backend) -> AsyncIterator[Callable[..., JobStore]]:
    """Stores on one shared database: the first call makes it, later calls join it."""
    made: list[JobStore] = []

    def make(**options: Any) -> JobStore:
        options.setdefault("lease", LEASE)
        store = backend.make(**options) if not made else backend.another(made[0], **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def recording(name: str, runs: list[Any], *, gate: asyncio.Event | None = None) -> Task[Any, Any]:
    async def work(value: Any) -> Any:
        runs.append(value)
        if gate is not None:
            await gate.wait()
        return {"echo": value}

    return Task(task_function=work, name=name)


async def test_manager_members_need_a_store() -> None:
    m = TaskManager()
    with pytest.raises(RuntimeError, match=r"enqueue\(\) needs a job store.*job_store="):
        await m.enqueue("x")
    with pytest.raises(RuntimeError, match=r"list_jobs\(\) needs a job store"):
        await m.list_jobs()
    with pytest.raises(RuntimeError, match=r"job_result\(\) needs a job store"):
        await m.job_result("id")


def test_bad_job_options_raise_at_construction() -> None:
    with pytest.raises(TypeError, match="job_store must be a taskbuffer.jobs.JobStore"):
        TaskManager(job_store=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown scheme"):
        TaskManager(job_store="mysql://x")
    with pytest.raises(ValueError, match="job_concurrency must be"):
        TaskManager(job_concurrency=-1)
    with pytest.raises(TypeError, match="worker_id must be"):
        TaskManager(worker_id=3)  # type: ignore[arg-type]


async def test_enqueue_checks_its_arguments(stores: Callable[..., JobStore]) -> None:
    m = TaskManager(job_store=stores())
    m.add_task(recording("t", []))
    with pytest.raises(TaskNotFoundError):
        await m.enqueue("nope")
    with pytest.raises(TaskNotFoundError):
        await m.enqueue(recording("t", []))  # same name, another object
    with pytest.raises(ValueError, match="run_at and delay are exclusive"):
        from datetime import UTC, datetime

        await m.enqueue("t", run_at=datetime.now(UTC), delay=1.0)
    with pytest.raises(ValueError, match="max_attempts must be"):
        await m.enqueue("t", max_attempts=0)
    with pytest.raises(TypeError, match=r"set value at input\['k'\]"):
        await m.enqueue("t", {"k": {1}})
    assert await m.list_jobs() == []


async def test_2_a_started_manager_runs_jobs_by_priority_with_their_input(
    stores: Callable[..., JobStore],
) -> None:
    runs: list[Any] = []
    m = TaskManager(job_store=stores(), job_concurrency=1)
    m.add_task(recording("t", runs))
    jobs = [await m.enqueue("t", n, priority=p) for n, p in ((1, 0), (2, 5), (3, 1))]
    async with asyncio.timeout(10):
        await m.start()
        results = [await m.job_result(job.id) for job in jobs]
        await m.stop()
    assert runs == [2, 3, 1]
    assert results == [{"echo": 1}, {"echo": 2}, {"echo": 3}]
    done = await m.get_job(jobs[0].id)
    assert done is not None and done.status == "succeeded" and done.attempts == 1
    [attempt] = await m.get_job_attempts(jobs[0].id)
    assert attempt.outcome == "succeeded" and attempt.worker_id == done.worker_id


async def test_9_a_jobs_runs_carry_its_id(stores: Callable[..., JobStore]) -> None:
    runs: list[Any] = []
    m = TaskManager(job_store=stores(), job_concurrency=1)
    m.add_task(recording("t", runs))
    events: list[TaskEvent] = []
    m.task_subject.subscribe(events.append)
    job = await m.enqueue("t", "in")
    async with asyncio.timeout(10):
        await m.start()
        await m.job_result(job.id)
        await m.stop()
    assert [(e.type, e.run.job_id, e.run.input) for e in events if e.run] == [
        ("started", job.id, "in"),
        ("completed", job.id, "in"),
    ]


async def test_2_jobs_go_through_the_constraints(stores: Callable[..., JobStore]) -> None:
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    m = TaskManager(job_store=stores(), job_concurrency=5)
    m.add_task(Task(task_function=work, name="t"))
    m.add_constraint_group(
        TaskConstraintGroup(
            name="one", constraint_key_for_execution=lambda t, i: "k", max_concurrent=1
        )
    )
    jobs = [await m.enqueue("t") for _ in range(4)]
    async with asyncio.timeout(10):
        await m.start()
        for job in jobs:
            await m.wait_for_job(job.id)
        await m.stop()
    assert peak == 1


async def test_2_a_job_of_a_task_not_registered_here_is_never_claimed(
    stores: Callable[..., JobStore],
) -> None:
    producer = TaskManager(job_store=stores(), job_concurrency=0)
    producer.add_task(recording("a", []))
    producer.add_task(recording("b", []))
    runs: list[Any] = []
    worker = TaskManager(job_store=stores(), job_concurrency=4)
    worker.add_task(recording("a", runs))
    async with asyncio.timeout(10):
        await producer.start()
        await worker.start()
        b = await producer.enqueue("b", "B")
        a = await producer.enqueue("a", "A")
        await worker.wait_for_job(a.id)
        await producer.stop()
        await worker.stop()
    assert runs == ["A"]
    assert (await producer.get_job(b.id)).status == "queued"  # type: ignore[union-attr]


async def test_3_two_managers_sharing_a_store_run_each_job_once(
    stores: Callable[..., JobStore],
) -> None:
    runs: list[Any] = []
    managers = [TaskManager(job_store=stores(), job_concurrency=3) for _ in range(2)]
    for m in managers:
        m.add_task(recording("t", runs))
    async with asyncio.timeout(20):
        for m in managers:
            await m.start()
        jobs = [await managers[0].enqueue("t", n) for n in range(20)]
        for job in jobs:
            await managers[1].wait_for_job(job.id)
        for m in managers:
            await m.stop()
    assert sorted(runs) == list(range(20))


async def test_3_a_worker_that_lost_its_lease_is_fenced_out_and_its_run_cancelled(
    stores: Callable[..., JobStore], caplog: pytest.LogCaptureFixture
) -> None:
    from taskbuffer._clock import now_wall

    gate = asyncio.Event()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    store = stores()
    m = TaskManager(job_store=store, job_concurrency=1)
    m.add_task(Task(task_function=work, name="t"))
    thief = stores()
    async with asyncio.timeout(10):
        job = await m.enqueue("t")
        await m.start()
        await started.wait()
        # Another worker claims it as if this one's lease had run out.
        [stolen] = await thief.claim(
            worker_id="thief", task_names=["t"], limit=1, now=now_wall() + LEASE * 2
        )
        with caplog.at_level(logging.WARNING, logger="taskbuffer"):
            await cancelled.wait()
            await m.stop()
        assert await thief.finish([thief.succeeded_outcome(stolen, "thief")], now=now_wall()) == [
            True
        ]
    finished = await m.get_job(job.id)
    assert finished is not None and finished.result == "thief"
    outcomes = [(a.worker_id == "thief", a.outcome) for a in await m.get_job_attempts(job.id)]
    assert outcomes == [(False, "lost"), (True, "succeeded")]
    assert "lease was lost" in caplog.text


async def test_1_a_job_that_cannot_be_read_fails_without_holding_up_its_batch(
    stores: Callable[..., JobStore],
) -> None:
    serializer = Picky()
    runs: list[Any] = []
    store = stores(serializer=serializer)
    m = TaskManager(job_store=store, job_concurrency=10)
    m.add_task(recording("t", runs))
    jobs = [await m.enqueue("t", value) for value in (1, "unreadable", 3, 4)]
    serializer.picky = True
    async with asyncio.timeout(10):
        await m.start()
        for job in (jobs[0], *jobs[2:]):
            await m.job_result(job.id)
        await m.stop()
    assert sorted(runs) == [1, 3, 4]
    for job in (jobs[0], *jobs[2:]):  # run once, by the claim that took them all
        assert [a.outcome for a in await m.get_job_attempts(job.id)] == ["succeeded"]
    [attempt] = await m.get_job_attempts(jobs[1].id)
    assert attempt.outcome == "failed" and attempt.error is not None
    assert attempt.error.type == "ValueError"


async def test_4_a_run_that_fails_after_its_retries_fails_the_job_for_good(
    stores: Callable[..., JobStore],
) -> None:
    calls: list[int] = []

    async def work() -> None:
        calls.append(1)
        raise ValueError("broken")

    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=work, name="t", retries=2))
    async with asyncio.timeout(10):
        job = await m.enqueue("t")
        await m.start()
        with pytest.raises(JobFailedError, match="ValueError: broken") as caught:
            await m.job_result(job.id)
        await m.stop()
    assert len(calls) == 3
    failed = caught.value.job
    assert failed.status == "failed" and failed.attempts == 1 and failed.error is not None
    assert failed.error.type == "ValueError" and "Traceback" in (failed.error.traceback or "")
    [attempt] = await m.get_job_attempts(job.id)
    assert attempt.outcome == "failed"


async def test_5_cancelling_a_running_job_cancels_its_run_within_one_renewal(
    stores: Callable[..., JobStore],
) -> None:
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=work, name="t"))
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        job = await m.enqueue("t")
        await m.start()
        await started.wait()
        asked = loop.time()
        assert await m.cancel_job(job.id) is True
        with pytest.raises(JobCancelledError):
            await m.job_result(job.id)
        took = loop.time() - asked
        await m.stop()
    assert took <= LEASE / 3 + 0.1
    assert [a.outcome for a in await m.get_job_attempts(job.id)] == ["cancelled"]
    assert await m.cancel_job(job.id) is False


async def test_6_enqueue_with_a_live_dedupe_key_returns_that_job(
    stores: Callable[..., JobStore],
) -> None:
    m = TaskManager(job_store=stores())
    m.add_task(recording("t", []))
    first = await m.enqueue("t", 1, dedupe_key="k")
    again = await m.enqueue("t", 2, dedupe_key="k")
    assert again.id == first.id and again.input == 1
    assert len(await m.list_jobs()) == 1


async def test_8_stop_releases_the_jobs_it_never_started_and_those_it_cancels(
    stores: Callable[..., JobStore],
) -> None:
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    m = TaskManager(job_store=stores(), job_concurrency=2)
    m.add_task(Task(task_function=work, name="t"))
    m.add_constraint_group(
        TaskConstraintGroup(
            name="one", constraint_key_for_execution=lambda t, i: "k", max_concurrent=1
        )
    )
    async with asyncio.timeout(10):
        jobs = [await m.enqueue("t") for _ in range(2)]
        await m.start()
        await started.wait()  # both were claimed at once; the second waits for the group
        assert len(await m.list_jobs(status="running")) == 2
        await m.stop(timeout=0.05)
    for job in jobs:
        back = await m.get_job(job.id)
        assert back is not None and back.status == "queued" and back.attempts == 0
        assert [a.outcome for a in await m.get_job_attempts(job.id)] == ["released"]


async def test_10_a_manager_on_a_store_with_a_newer_schema_refuses_to_start(
    backend: Backend,
) -> None:
    store = backend.make()
    await store.open()
    await backend.force_schema_version(store, 99)
    await store.close()
    m = TaskManager(job_store=backend.another(store))
    with pytest.raises(JobSchemaError, match="newer"):
        await m.start()
    await m.stop()


async def test_wait_for_job_times_out(stores: Callable[..., JobStore]) -> None:
    m = TaskManager(job_store=stores(), job_concurrency=0)
    m.add_task(recording("t", []))
    job = await m.enqueue("t")
    with pytest.raises(TimeoutError):
        await m.wait_for_job(job.id, timeout=0.2)


async def test_a_delayed_job_runs_once_its_delay_has_passed(
    stores: Callable[..., JobStore],
) -> None:
    runs: list[Any] = []
    m = TaskManager(job_store=stores())
    m.add_task(recording("t", runs))
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        await m.start()
        begin = loop.time()
        job = await m.enqueue("t", "x", delay=0.3)
        await m.wait_for_job(job.id)
        waited = loop.time() - begin
        await m.stop()
    assert runs == ["x"] and 0.3 <= waited < 1.0


# ------------------------------------------------------------ 7: cron ticks are jobs


async def test_7_managers_sharing_a_store_run_each_cron_tick_exactly_once(
    stores: Callable[..., JobStore],
) -> None:
    runs: list[Any] = []
    managers = [TaskManager(job_store=stores(), job_concurrency=2) for _ in range(3)]
    for m in managers:
        m.add_and_schedule_task(recording("tick", runs), "* * * * * *")
    async with asyncio.timeout(20):
        for m in managers:
            await m.start()
        await asyncio.sleep(3.2)
        for m in managers:
            await m.stop(timeout=1.0)
    jobs = await managers[0].list_jobs(task_name="tick")
    keys = [job.schedule_key for job in jobs]
    assert len(keys) == len(set(keys)) >= 3
    assert all(key is not None and key.startswith("cron:tick:") for key in keys)
    succeeded = [job for job in jobs if job.status == "succeeded"]
    assert len(runs) == len(succeeded) and all(job.attempts == 1 for job in succeeded)


async def test_7_ticks_missed_while_no_worker_ran_coalesce_into_one_job_with_missed(
    stores: Callable[..., JobStore],
) -> None:
    from datetime import UTC, datetime

    from taskbuffer._clock import now_wall
    from taskbuffer.jobs import JobRequest

    store = stores()
    await store.open()
    runs: list[Any] = []
    events: list[TaskEvent] = []
    task = recording("tick", runs)
    task.event_subject.subscribe(events.append)
    now = now_wall()
    last = float(int(now) - 10)  # a tick stored ten seconds ago, by a manager since gone
    stamp = datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await store.enqueue(JobRequest(task_name="tick", schedule_key=f"cron:tick:{stamp}"), now=last)
    m = TaskManager(job_store=store, job_concurrency=0)
    m.add_and_schedule_task(task, "* * * * * *")
    async with asyncio.timeout(10):
        await m.start()
        await m.stop()
    missed = [e for e in events if e.type == "missed"]
    assert len(missed) == 1 and "missed while no worker was running" in (missed[0].error or "")
    keys = sorted(job.schedule_key or "" for job in await m.list_jobs(task_name="tick"))
    assert len(keys) == 2 and keys[0].endswith(stamp)


async def test_7_a_one_off_run_becomes_a_job(stores: Callable[..., JobStore]) -> None:
    from datetime import UTC, datetime

    ran = asyncio.Event()

    def work(value: Any) -> str:
        ran.set()
        return f"ran {value}"

    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=work, name="once"))
    m.schedule_task_at("once", datetime.fromtimestamp(0, UTC), "in")
    async with asyncio.timeout(10):
        await m.start()
        await ran.wait()
        [job] = await m.list_jobs()
        assert await m.job_result(job.id) == "ran in"
        await m.stop()
    assert job.input == "in" and (job.schedule_key or "").startswith("once:once:")


async def test_1_a_result_the_serializer_refuses_fails_the_job(
    stores: Callable[..., JobStore],
) -> None:
    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=lambda: object(), name="t"))
    async with asyncio.timeout(10):
        await m.start()
        job = await m.enqueue("t")
        with pytest.raises(JobFailedError, match="object value at result") as caught:
            await m.job_result(job.id)
        await m.stop()
    assert caught.value.job.error is not None and caught.value.job.error.type == "TypeError"


async def test_9_a_jobs_run_emits_the_tasks_usual_events(stores: Callable[..., JobStore]) -> None:
    events: list[TaskEvent] = []
    m = TaskManager(job_store=stores())
    m.add_task(recording("t", []))
    m.task_subject.subscribe(events.append)
    async with asyncio.timeout(10):
        await m.start()
        job = await m.enqueue("t", 1)
        await m.wait_for_job(job.id)
        await m.stop()
    assert [e.type for e in events] == ["started", "completed"]


async def test_a_job_enqueued_while_the_worker_looks_for_work_is_run_without_waiting_a_poll() -> (
    None
):
    # The wake-up of an enqueue that commits while the claimer is between its claim and its
    # sleep must not be lost (MemoryJobStore polls once an hour: a lost one shows).
    import time

    from taskbuffer.jobs import JobRequest, MemoryJobStore

    class EnqueuesWhileLooking(MemoryJobStore):
        pending: list[JobRequest]

        async def next_due_at(self, task_names: Any) -> float | None:
            due = await super().next_due_at(task_names)
            while self.pending:
                await self.enqueue(self.pending.pop(), now=time.time())
            return due

    store = EnqueuesWhileLooking()
    store.pending = []
    ran = asyncio.Event()
    m = TaskManager(job_store=store)
    m.add_task(Task(task_function=lambda: ran.set(), name="t"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    store.pending.append(JobRequest(task_name="t"))
    async with asyncio.timeout(60):
        await m.start()
        await ran.wait()
        await m.stop()
    assert loop.time() - began < 1.0
