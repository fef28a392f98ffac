"""Durable jobs at their edges: what a hostile user tries, on every backend.

The store half uses the shared suite's ``store``/``backend`` fixtures (every engine passes
it); the manager half drives a manager on each backend as ``test_jobs_manager`` does. Numbers
in the names are the contract's semantics of durable jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _jobs_support import Backend, backend, store

from taskbuffer import Task, TaskManager, TaskNotFoundError
from taskbuffer.jobs import (
    SCHEMA_VERSION,
    JobCancelledError,
    JobFailedError,
    JobOutcome,
    JobRequest,
    JobStore,
    JSONSerializer,
    MemoryJobStore,
    SQLiteJobStore,
)

__all__ = ("backend", "store")

T0 = 1_800_000_000.0
LEASE = 0.6


@pytest_asyncio.fixture
async def stores(backend: Backend) -> AsyncIterator[Callable[..., JobStore]]:
    """Stores on one shared database: the first call makes it, later calls join it."""
    made: list[JobStore] = []

    def make(**options: Any) -> JobStore:
        options.setdefault("lease", LEASE)
        made_store = backend.make(**options) if not made else backend.another(made[0], **options)
        made.append(made_store)
        return made_store

    yield make
    for made_store in made:
        await made_store.close()


def store_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("taskbuffer-")]


# ----------------------------------------------------- 1: where the serializer refuses


async def test_1_a_cyclic_input_raises_type_error_naming_the_container_holding_the_cycle(
    store: JobStore,
) -> None:
    looping: dict[str, Any] = {}
    looping["x"] = [looping]
    with pytest.raises(TypeError, match=r"list value at input\['x'\] \(ValueError: Circular"):
        await store.enqueue(JobRequest(task_name="t", input=looping), now=T0)
    assert await store.list_jobs() == []


async def test_1_a_too_deeply_nested_input_raises_type_error_not_recursion_error(
    store: JobStore,
) -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(TypeError, match=r"list value at input\[0\]\[0\].*RecursionError"):
        await store.enqueue(JobRequest(task_name="t", input=deep), now=T0)


async def test_1_a_dict_key_the_serializer_refuses_is_named_as_a_key(store: JobStore) -> None:
    with pytest.raises(TypeError, match=r"tuple value at input\['a'\] key \(1, 2\)"):
        await store.enqueue(JobRequest(task_name="t", input={"a": {(1, 2): 3}}), now=T0)


# ---------------------------------------------------------------- 6: dedupe on retry


async def test_6_retry_is_refused_while_another_job_holds_the_dedupe_key(store: JobStore) -> None:
    first = await store.enqueue(JobRequest(task_name="t", dedupe_key="k"), now=T0)
    assert await store.cancel(first.id, now=T0)
    live = await store.enqueue(JobRequest(task_name="t", dedupe_key="k"), now=T0 + 1)
    assert live.id != first.id
    with pytest.raises(ValueError, match=r"cannot be retried while .*dedupe_key"):
        await store.retry(first.id, now=T0 + 2)
    assert [j.status for j in await store.list_jobs()] == ["queued", "cancelled"]
    await store.cancel(live.id, now=T0 + 3)
    assert (await store.retry(first.id, now=T0 + 4)).status == "queued"


# ------------------------------------------------------------ enqueue's arguments


async def test_enqueue_refuses_priorities_and_attempts_that_no_store_can_hold(
    stores: Callable[..., JobStore],
) -> None:
    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=lambda: None, name="t"))
    with pytest.raises(ValueError, match=r"priority must be an int from -2147483648 to 2147483647"):
        await m.enqueue("t", priority=2**31)
    with pytest.raises(ValueError, match=r"max_attempts must be an int from 1 to 2147483647"):
        await m.enqueue("t", max_attempts=2**63)
    with pytest.raises(TypeError, match=r"priority must be an int .*, not bool True"):
        await m.enqueue("t", priority=True)
    assert await m.list_jobs() == []
    edge = await m.enqueue("t", priority=-(2**31), max_attempts=2**31 - 1)
    assert edge.priority == -(2**31) and edge.max_attempts == 2**31 - 1


async def test_list_jobs_refuses_a_limit_or_offset_no_store_takes(
    stores: Callable[..., JobStore],
) -> None:
    m = TaskManager(job_store=stores())
    with pytest.raises(ValueError, match=r"limit must be an int from 0 to 9223372036854775807"):
        await m.list_jobs(limit=2**63)
    with pytest.raises(ValueError, match=r"offset must be an int from 0 to 9223372036854775807"):
        await m.list_jobs(offset=2**64)
    assert await m.list_jobs(limit=2**63 - 1, offset=2**63 - 1) == []


# ------------------------------------------------------------- waiting at its edges


async def test_wait_for_job_with_timeout_zero_returns_a_finished_job_on_every_store(
    stores: Callable[..., JobStore],
) -> None:
    m = TaskManager(job_store=stores(), job_concurrency=0)
    m.add_task(Task(task_function=lambda: None, name="t"))
    job = await m.enqueue("t")
    async with asyncio.timeout(5):
        with pytest.raises(TimeoutError):
            await m.wait_for_job(job.id, timeout=0)
        await m.cancel_job(job.id)
        assert (await m.wait_for_job(job.id, timeout=0)).status == "cancelled"
        with pytest.raises(JobCancelledError):
            await m.job_result(job.id, timeout=0)


# ------------------------------------------------- what a job's own code may raise


async def run_to_end(m: TaskManager, job_id: str) -> Any:
    async with asyncio.timeout(10):
        await m.start()
        try:
            return await m.wait_for_job(job_id)
        finally:
            await m.stop(timeout=1.0)


async def test_4_a_job_whose_code_raises_task_not_found_error_fails_once(
    stores: Callable[..., JobStore],
) -> None:
    calls: list[int] = []

    async def work() -> None:
        calls.append(1)
        raise TaskNotFoundError("some other task")

    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=work, name="t"))
    job = await run_to_end(m, (await m.enqueue("t")).id)
    assert job.status == "failed" and job.error.type == "TaskNotFoundError"
    assert calls == [1] and job.attempts == 1


async def test_5_a_job_whose_code_raises_cancelled_error_ends_cancelled_once(
    stores: Callable[..., JobStore],
) -> None:
    calls: list[int] = []

    async def work() -> None:
        calls.append(1)
        raise asyncio.CancelledError("from inside")

    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=work, name="t"))
    job = await run_to_end(m, (await m.enqueue("t")).id)
    assert job.status == "cancelled" and calls == [1]
    assert [a.outcome for a in await m.get_job_attempts(job.id)] == ["cancelled"]


class Escape(BaseException):
    """Neither an Exception nor an interrupt."""


async def test_4_a_base_exception_from_a_job_fails_it_and_frees_its_slot(
    stores: Callable[..., JobStore],
) -> None:
    def work(n: int) -> int:
        if n == 1:
            raise Escape("out")
        return n

    m = TaskManager(job_store=stores(), job_concurrency=1)
    m.add_task(Task(task_function=work, name="t"))
    bad = await m.enqueue("t", 1, priority=1)
    good = await m.enqueue("t", 2)
    async with asyncio.timeout(10):
        await m.start()
        assert await m.job_result(good.id) == 2  # the slot of the failed job came back
        with pytest.raises(JobFailedError, match="Escape: out"):
            await m.job_result(bad.id)
        await m.stop()


async def test_1_a_result_that_contains_itself_fails_the_job(
    stores: Callable[..., JobStore],
) -> None:
    looping: dict[str, Any] = {}
    looping["x"] = [looping]
    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=lambda: looping, name="t"))
    job = await run_to_end(m, (await m.enqueue("t")).id)
    assert job.status == "failed" and job.error is not None
    assert "list value at result['x']" in job.error.message


async def test_2_jobs_claimed_are_run_when_looking_for_the_next_due_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Hiccup(MemoryJobStore):
        failures = 1

        async def next_due_at(self, task_names: Sequence[str]) -> float | None:
            if self.failures:
                self.failures -= 1
                raise OSError("the database hiccuped")
            return await super().next_due_at(task_names)

    m = TaskManager(job_store=Hiccup(lease=30.0), job_concurrency=2)
    m.add_task(Task(task_function=lambda: "ran", name="t"))
    job = await m.enqueue("t")
    async with asyncio.timeout(10):
        await m.start()
        assert await m.job_result(job.id) == "ran"
        await m.stop()
    assert asyncio.get_running_loop().time() < 30.0  # not after its lease ran out
    assert [a.outcome for a in await m.get_job_attempts(job.id)] == ["succeeded"]
    assert "looking for the next due job failed" in caplog.text


# ---------------------------------------------------------------- what holds up


async def test_2_job_concurrency_is_never_exceeded_through_cancels_and_failures(
    stores: Callable[..., JobStore],
) -> None:
    running = peak = 0
    release = asyncio.Event()

    async def work(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            if n % 3 == 0:
                raise ValueError(n)
            await release.wait()
            return n
        finally:
            running -= 1

    m = TaskManager(job_store=stores(), job_concurrency=2)
    m.add_task(Task(task_function=work, name="t"))
    jobs = [await m.enqueue("t", n) for n in range(9)]
    async with asyncio.timeout(20):
        await m.start()
        for job in jobs[:4]:
            await m.cancel_job(job.id)
        release.set()
        for job in jobs:
            await m.wait_for_job(job.id)
        await m.stop()
    assert 1 <= peak <= 2


async def test_a_subscriber_that_raises_on_a_jobs_events_does_not_stop_the_worker(
    stores: Callable[..., JobStore], caplog: pytest.LogCaptureFixture
) -> None:
    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=lambda n: n, name="t"))

    def hostile(event: Any) -> None:
        raise RuntimeError("subscriber")

    m.task_subject.subscribe(hostile)
    async with asyncio.timeout(10):
        await m.start()
        results = [await m.job_result((await m.enqueue("t", n)).id) for n in range(3)]
        await m.stop()
    assert results == [0, 1, 2] and "subscriber raised" in caplog.text


async def test_nothing_is_left_behind_after_a_manager_with_a_store_stops(
    stores: Callable[..., JobStore],
) -> None:
    store_ = stores()
    m = TaskManager(job_store=store_)
    m.add_task(Task(task_function=lambda n: n, name="t"))
    async with asyncio.timeout(10):
        await m.start()
        for n in range(5):
            await m.job_result((await m.enqueue("t", n)).id)
        await m.stop()
        await store_.close()
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []
    assert store_threads() == []
    gc.collect()  # an unclosed sqlite3 connection would warn (an error here) when collected


async def test_concurrent_opens_of_one_store_leave_nothing_behind_once_closed(
    stores: Callable[..., JobStore],
) -> None:
    # A manager's start() and its background writer of one-off runs both open the store.
    store_ = stores()
    async with asyncio.timeout(10):
        await asyncio.gather(store_.open(), store_.open(), store_.open())
        assert await store_.list_jobs() == []
        await store_.close()
    assert store_threads() == []
    gc.collect()  # an unclosed sqlite3 connection would warn (an error here) when collected


@pytest.mark.realtime
async def test_stores_opened_at_once_on_one_fresh_sqlite_file_all_open(tmp_path: Path) -> None:
    # Converting a fresh file to WAL needs it alone, and SQLite does not wait out the busy
    # timeout for that: one of three stores opened at once used to fail about one time in
    # seven, at once, with "database is locked" (40 fresh files: nearly always at least once).
    for round_ in range(40):
        path = tmp_path / f"jobs{round_}.db"
        trio = [SQLiteJobStore(path) for _ in range(3)]
        try:
            async with asyncio.timeout(20):
                await asyncio.gather(*(each.open() for each in trio))
                assert [await each.list_jobs() for each in trio] == [[], [], []]
        finally:
            for each in trio:
                await each.close()
        with contextlib.closing(sqlite3.connect(path)) as probe:
            assert probe.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store_threads() == []


@pytest.mark.realtime
async def test_a_sqlite_file_of_schema_version_1_is_upgraded_with_its_trails_unchanged(
    tmp_path: Path,
) -> None:
    # Version 1 indexed tokens and finish instants (nothing reads them now: a store drops them
    # when it upgrades the file) and cleared a finished job's token, writing its last attempt
    # as a row: such a job's trail is that row alone, not that row and its job's.
    path = tmp_path / "jobs.db"
    async with SQLiteJobStore(path) as first:
        job = await first.enqueue(JobRequest(task_name="t"), now=1000.0)
        [held] = await first.claim(worker_id="w", task_names=["t"], limit=1, now=1001.0)
        done = JobOutcome(job_id=job.id, token=held.token, outcome="succeeded", result=b"1")
        assert await first.finish([done], now=1002.0) == [True]
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.execute("UPDATE taskbuffer_jobs SET token = NULL")
        old.execute(
            "INSERT INTO taskbuffer_job_attempts "
            "VALUES (?, 1, 'w', 1001.0, 1002.0, 'succeeded', NULL)",
            (job.id,),
        )
        old.execute("CREATE UNIQUE INDEX taskbuffer_jobs_token ON taskbuffer_jobs (token)")
        old.execute("CREATE INDEX taskbuffer_jobs_finished ON taskbuffer_jobs (finished_at)")
        old.execute("UPDATE taskbuffer_meta SET value = '1' WHERE key = 'schema_version'")
        old.commit()
    async with SQLiteJobStore(path) as second:
        trail = await second.attempts(job.id)
        assert [(t.attempt, t.worker_id, t.outcome) for t in trail] == [(1, "w", "succeeded")]
    with contextlib.closing(sqlite3.connect(path)) as probe:
        names = {row[0] for row in probe.execute("SELECT name FROM sqlite_master")}
        version = probe.execute("SELECT value FROM taskbuffer_meta").fetchone()
    assert {"taskbuffer_jobs_token", "taskbuffer_jobs_finished"} & names == set()
    # a library that knows only version 1 refuses it from now on
    assert version == (str(SCHEMA_VERSION),)


@pytest.mark.realtime
async def test_closing_a_sqlite_store_ends_its_thread_before_close_returns(
    tmp_path: Path,
) -> None:
    for _ in range(30):
        sqlite_store = SQLiteJobStore(tmp_path / "jobs.db")
        await sqlite_store.open()
        await sqlite_store.close()
        assert store_threads() == []
    m = TaskManager(job_store=f"sqlite:///{tmp_path}/owned.db")
    m.add_task(Task(task_function=lambda: 1, name="t"))
    async with asyncio.timeout(10):
        await m.start()
        await m.job_result((await m.enqueue("t")).id)
        await m.stop()
    assert store_threads() == []


@pytest.mark.realtime
async def test_async_with_a_store_opens_it_and_closes_it_at_the_end(tmp_path: Path) -> None:
    # A store given to a manager is the caller's to close; async with is how an example does.
    store = SQLiteJobStore(tmp_path / "jobs.db")
    m = TaskManager(job_store=store)
    m.add_task(Task(task_function=lambda: 1, name="t"))
    async with asyncio.timeout(10):
        async with store as opened, m:
            assert opened is store
            assert store_threads() != []
            assert await m.job_result((await m.enqueue("t")).id) == 1
    assert store_threads() == []


@pytest.mark.realtime
async def test_a_sqlite_write_waiting_for_the_file_lock_leaves_the_loop_responsive(
    tmp_path: Path,
) -> None:
    sqlite_store = SQLiteJobStore(tmp_path / "jobs.db")
    await sqlite_store.open()
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            gaps.append(time.perf_counter() - before)

    ticking = loop.create_task(ticker())
    loop.call_later(0.3, other.execute, "COMMIT")
    try:
        async with asyncio.timeout(10):
            began = time.perf_counter()
            await sqlite_store.enqueue(JobRequest(task_name="t"), now=T0)
            assert time.perf_counter() - began >= 0.3  # it did wait for the lock
    finally:
        ticking.cancel()
        other.close()
        await sqlite_store.close()
    assert len(gaps) >= 20 and max(gaps) < 0.1


async def test_3_a_lease_ends_exactly_at_its_instant_for_claims_and_renewals(
    store: JobStore,
) -> None:
    job = await store.enqueue(JobRequest(task_name="t"), now=T0)
    [a] = await store.claim(worker_id="A", task_names=["t"], limit=1, now=T0)
    assert (await store.renew([a.token], now=T0 + 29.999)).lost == frozenset()
    lease_end = T0 + 29.999 + 30.0
    assert await store.claim(worker_id="B", task_names=["t"], limit=1, now=lease_end - 1e-3) == []
    [b] = await store.claim(worker_id="B", task_names=["t"], limit=1, now=lease_end)
    assert b.job.id == job.id and b.job.attempts == 2
    done = JobOutcome(job_id=job.id, token=a.token, outcome="succeeded")
    assert await store.finish([done], now=lease_end) == [False]


async def test_purge_never_deletes_queued_or_running_jobs(backend: Backend) -> None:
    purging = backend.make(retention=10.0)
    await purging.open()
    try:
        old = await purging.enqueue(JobRequest(task_name="t"), now=T0)
        [c] = await purging.claim(worker_id="A", task_names=["t"], limit=1, now=T0)
        await purging.finish([JobOutcome(job_id=old.id, token=c.token, outcome="failed")], now=T0)
        await purging.retry(old.id, now=T0 + 1)  # queued again: kept
        running = await purging.enqueue(JobRequest(task_name="r"), now=T0)
        await purging.claim(worker_id="A", task_names=["r"], limit=1, now=T0)
        queued = await purging.enqueue(JobRequest(task_name="q"), now=T0)
        assert await purging.purge(now=T0 + 10_000) == 0
        for job in (old, running, queued):
            assert await purging.get(job.id) is not None
    finally:
        await purging.close()


# ------------------------------------------------- 7: one-off runs are jobs at the call


async def test_7_schedule_task_at_stores_the_job_at_the_call_so_it_survives_the_process(
    stores: Callable[..., JobStore],
) -> None:
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)  # due at once when a worker runs
    first = TaskManager(job_store=stores())
    first.add_task(Task(task_function=lambda x: f"ran {x}", name="t"))
    first.schedule_task_at("t", when, "in")
    async with asyncio.timeout(10):
        [job] = await first.list_jobs()  # written before any job call returns
        assert job.status == "queued" and job.run_at == when and job.input == "in"
        # The first process dies here, never started; another one runs the job.
        second = TaskManager(job_store=stores())
        second.add_task(Task(task_function=lambda x: f"ran {x}", name="t"))
        await second.start()
        assert await second.job_result(job.id) == "ran in"
        await second.stop()


async def test_7_a_one_off_run_is_written_in_the_background_without_any_job_call(
    stores: Callable[..., JobStore],
) -> None:
    store_ = stores()
    m = TaskManager(job_store=store_)
    m.add_task(Task(task_function=lambda: None, name="t"))
    loop = asyncio.get_running_loop()
    written = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(written.set)

    unsubscribe = store_.subscribe(wake)
    m.schedule_task_at("t", datetime.fromtimestamp(T0, UTC))
    async with asyncio.timeout(5):
        await written.wait()  # the store woke (opened or committed), no call of ours awaited
        while True:
            written.clear()
            if await store_.list_jobs():
                break
            await written.wait()
    unsubscribe()
    assert len(await store_.list_jobs()) == 1
    assert [s.schedule for s in m.get_scheduled_tasks()] == ["once"]
    await m.stop()


def test_7_a_one_off_run_scheduled_before_any_loop_is_written_by_start(tmp_path: Path) -> None:
    m = TaskManager(job_store=f"sqlite:///{tmp_path}/jobs.db", job_concurrency=0)
    m.add_task(Task(task_function=lambda: None, name="t"))
    m.schedule_task_at("t", datetime.fromtimestamp(T0, UTC))

    async def start_and_look() -> list[Any]:
        async with asyncio.timeout(10):
            await m.start()
            try:
                return await m.list_jobs()
            finally:
                await m.stop()

    [job] = asyncio.run(start_and_look())
    assert job.status == "queued" and job.run_at == datetime.fromtimestamp(T0, UTC)


async def test_7_descheduling_cancels_the_stored_one_off_runs_still_queued(
    stores: Callable[..., JobStore],
) -> None:
    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=lambda: None, name="t"))
    m.schedule_task_at("t", datetime.fromtimestamp(T0, UTC))
    m.schedule_task_at("t", datetime.fromtimestamp(T0 + 60, UTC))
    async with asyncio.timeout(10):
        assert [j.status for j in await m.list_jobs()] == ["queued", "queued"]
        m.deschedule_task_by_name("t")
        assert [j.status for j in await m.list_jobs()] == ["cancelled", "cancelled"]
        assert m.get_scheduled_tasks() == []
        m.schedule_task_at("t", datetime.fromtimestamp(T0, UTC))
        m.deschedule_task_by_name("t")  # before its write: never written
        await m.stop()
        assert len(await m.list_jobs()) == 2


async def test_7_a_one_off_run_falling_due_on_a_started_manager_runs_once(
    stores: Callable[..., JobStore], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ran: list[str] = []
    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=ran.append, name="t"))
    async with asyncio.timeout(10):
        await m.start()
        m.schedule_task_at("t", datetime.fromtimestamp(0, UTC), "x")
        [job] = await m.list_jobs()
        await m.wait_for_job(job.id)
        await asyncio.sleep(0.2)  # the scheduler's timer fired too: nothing more stored
        await m.stop()
    assert ran == ["x"] and len(await m.list_jobs()) == 1
    assert "could not be stored" not in caplog.text


async def test_8_stop_while_a_claim_is_under_way_releases_what_it_claimed() -> None:
    claiming = asyncio.Event()
    gate = asyncio.Event()

    class SlowClaims(MemoryJobStore):
        async def claim(self, **options: Any) -> Any:
            if not gate.is_set():
                claiming.set()
                await gate.wait()
            return await super().claim(**options)

    ran: list[int] = []
    m = TaskManager(job_store=SlowClaims(), job_concurrency=3)
    m.add_task(Task(task_function=ran.append, name="t"))
    jobs = [await m.enqueue("t", n) for n in range(2)]
    async with asyncio.timeout(10):
        await m.start()
        await claiming.wait()
        stopping = asyncio.get_running_loop().create_task(m.stop())
        await asyncio.sleep(0)
        gate.set()  # the claim commits after stop() began
        await stopping
    assert ran == []
    for job in jobs:
        back = await m.get_job(job.id)
        assert back is not None and back.status == "queued" and back.attempts == 0
        assert [a.outcome for a in await m.get_job_attempts(job.id)] == ["released"]
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


async def test_6_concurrent_enqueues_with_one_dedupe_key_store_one_job(backend: Backend) -> None:
    first = backend.make()
    await first.open()
    second = backend.another(first)
    await second.open()
    try:
        async with asyncio.timeout(10):
            jobs = await asyncio.gather(
                *(
                    made.enqueue(JobRequest(task_name="t", dedupe_key="k", input=n), now=T0)
                    for n, made in enumerate([first, second] * 4)
                )
            )
        assert len({job.id for job in jobs}) == 1
        assert len(await first.list_jobs()) == 1
    finally:
        await first.close()
        await second.close()


async def test_7_many_one_off_runs_scheduled_at_once_share_one_write() -> None:
    class Counting(MemoryJobStore):
        writes = 0

        async def enqueue_many(self, requests: Sequence[JobRequest], *, now: float) -> Any:
            self.writes += 1
            return await super().enqueue_many(requests, now=now)

    counting = Counting()
    m = TaskManager(job_store=counting)
    m.add_task(Task(task_function=lambda n: n, name="t"))
    for n in range(50):
        m.schedule_task_at("t", datetime.fromtimestamp(T0 + n, UTC), n)
    async with asyncio.timeout(5):
        jobs = await m.list_jobs()
    assert sorted(job.input for job in jobs) == list(range(50)) and counting.writes == 1


async def test_7_descheduling_while_the_write_is_under_way_cancels_the_stored_run() -> None:
    writing = asyncio.Event()
    gate = asyncio.Event()

    class SlowWrites(MemoryJobStore):
        async def enqueue_many(self, requests: Sequence[JobRequest], *, now: float) -> Any:
            writing.set()
            await gate.wait()
            return await super().enqueue_many(requests, now=now)

    m = TaskManager(job_store=SlowWrites())
    m.add_task(Task(task_function=lambda: None, name="t"))
    m.schedule_task_at("t", datetime.fromtimestamp(T0, UTC))
    async with asyncio.timeout(5):
        await writing.wait()
        m.deschedule_task_by_name("t")
        gate.set()
        [job] = await m.list_jobs()
        await m.stop()
    assert job.status == "cancelled"


async def test_4_retry_job_refuses_queued_running_and_succeeded_jobs(
    stores: Callable[..., JobStore],
) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    async def work(n: int) -> int:
        if n == 1:
            started.set()
            await gate.wait()
        return n

    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=work, name="t"))
    async with asyncio.timeout(10):
        done = await m.enqueue("t", 0)
        await m.start()
        await m.wait_for_job(done.id)
        running = await m.enqueue("t", 1)
        await started.wait()
        queued = await m.enqueue("t", 2, delay=3600)
        for job, status in ((done, "succeeded"), (running, "running"), (queued, "queued")):
            with pytest.raises(ValueError, match=f"job {job.id!r} is {status}"):
                await m.retry_job(job.id)
        with pytest.raises(KeyError, match="no job with id 'nope'"):
            await m.retry_job("nope")
        gate.set()
        await m.wait_for_job(running.id)
        await m.stop()


async def test_3_max_attempts_bounds_only_lost_attempts_not_retries_or_releases(
    stores: Callable[..., JobStore],
) -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        raise RuntimeError(f"call {len(calls)}")

    m = TaskManager(job_store=stores())
    m.add_task(Task(task_function=flaky, name="t", retries=2, retry_delay=0.01))
    async with asyncio.timeout(10):
        job = await m.enqueue("t", max_attempts=1)
        await m.start()
        with pytest.raises(JobFailedError, match="RuntimeError: call 3") as failed:
            await m.job_result(job.id)
        await m.stop()
    assert calls == [1, 1, 1] and failed.value.job.attempts == 1


def test_8_a_loop_ending_without_stop_gives_the_running_job_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class SlowCommits(SQLiteJobStore):
        async def finish(self, outcomes: Sequence[JobOutcome], *, now: float) -> list[bool]:
            await asyncio.sleep(0.05)  # a busy disk: longer than asyncio.run's last steps
            return await super().finish(outcomes, now=now)

    sqlite_store = SlowCommits(tmp_path / "jobs.db")

    async def forget_to_stop() -> str:
        started = asyncio.Event()

        async def work() -> None:
            started.set()
            await asyncio.Event().wait()

        m = TaskManager(job_store=sqlite_store)
        m.add_task(Task(task_function=work, name="t"))
        async with asyncio.timeout(10):
            await m.start()
            job = await m.enqueue("t")
            await started.wait()
        return job.id  # asyncio.run cancels what is left: the run, the worker

    job_id = asyncio.run(forget_to_stop())
    gc.collect()

    async def look() -> Any:
        try:
            return await sqlite_store.get(job_id), await sqlite_store.attempts(job_id)
        finally:
            await sqlite_store.close()

    job, attempts = asyncio.run(look())
    assert job.status == "queued" and job.attempts == 0
    assert [a.outcome for a in attempts] == ["released"]
    assert "Task was destroyed but it is pending" not in caplog.text


@pytest.mark.realtime
async def test_a_sqlite_claim_whose_statement_fails_raises_and_the_store_goes_on(
    tmp_path: Path,
) -> None:
    # The claimed rows reach the loop before the commit (to be decoded while it waits for the
    # disk); a transaction that fails before it claimed anything must still answer the call.
    sqlite_store = SQLiteJobStore(tmp_path / "jobs.db")
    job = await sqlite_store.enqueue(JobRequest(task_name="t"), now=T0)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(sqlite3.Error):
                await sqlite_store.finish_and_claim(
                    [],
                    worker_id="w",
                    task_names=[object()],
                    limit=1,
                    now=T0,  # type: ignore[list-item]
                )
            [claim] = await sqlite_store.claim(worker_id="w", task_names=["t"], limit=1, now=T0)
            assert claim.job.id == job.id and claim.job.input is None
    finally:
        await sqlite_store.close()


@pytest.mark.realtime
async def test_a_sqlite_claim_cancelled_waiting_for_the_lock_holds_its_jobs_until_the_lease(
    tmp_path: Path,
) -> None:
    sqlite_store = SQLiteJobStore(tmp_path / "jobs.db", lease=0.5)
    job = await sqlite_store.enqueue(JobRequest(task_name="t"), now=T0)
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(10):
            call = loop.create_task(
                sqlite_store.claim(worker_id="w", task_names=["t"], limit=1, now=T0)
            )
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            other.execute("COMMIT")  # the cancelled call's transaction runs now, and commits
            stored = None
            while stored is None or stored.status != "running":
                await asyncio.sleep(0.01)
                stored = await sqlite_store.get(job.id)
            # Nobody works the claim it made: the job is claimable once the lease has ended.
            assert await sqlite_store.claim(worker_id="w", task_names=["t"], limit=1, now=T0) == []
            [again] = await sqlite_store.claim(
                worker_id="w", task_names=["t"], limit=1, now=T0 + 0.5
            )
            assert again.job.id == job.id and again.job.attempts == 2
    finally:
        other.close()
        await sqlite_store.close()


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"null", None),
        (b"12", 12),
        (b" 12 ", 12),
        (b'{"a": [1, 2.5, "x"], "b": null}', {"a": [1, 2.5, "x"], "b": None}),
        ('"caf\u00e9"'.encode(), "caf\u00e9"),
        (b"\n[true]\n", [True]),
    ],
)
def test_the_default_serializer_reads_any_json_document(data: bytes, value: Any) -> None:
    assert JSONSerializer().loads(data) == value


@pytest.mark.parametrize("data", [b"", b" ", b"1 2", b"[1,", b"nul", b"1x", b"{} []"])
def test_the_default_serializer_refuses_what_is_not_one_json_document(data: bytes) -> None:
    with pytest.raises(ValueError):
        JSONSerializer().loads(data)
