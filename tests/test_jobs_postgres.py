"""What only the PostgreSQL job store does: SKIP LOCKED claims across connections, LISTEN/NOTIFY
wake-ups, surviving a server restart, its own pool or a given one.

The semantics every store shares are in ``test_jobs_store.py`` (its ``postgres`` parameter).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from _pg_server import PostgresServer
from _pg_support import PostgresBackend

from taskbuffer.jobs import SCHEMA_VERSION, JobOutcome, JobRequest, JobSchemaError, JobStore
from taskbuffer.jobs._store import attempts_lost_error

asyncpg = pytest.importorskip("asyncpg")

from taskbuffer.jobs.postgres import PostgresJobStore  # noqa: E402

# A real server over real sockets: real time, not the suite's virtual time.
pytestmark = [pytest.mark.external, pytest.mark.realtime]

T0 = 1_800_000_000.0


@pytest_asyncio.fixture
async def stores(
    postgres_job_backend: PostgresBackend,
) -> AsyncIterator[Callable[..., PostgresJobStore]]:
    """Make opened-on-use stores on one fresh schema; all closed after the test."""
    dsn = postgres_job_backend.new_dsn()
    made: list[PostgresJobStore] = []

    def make(**options: Any) -> PostgresJobStore:
        store = PostgresJobStore(dsn, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def woken(store: JobStore) -> asyncio.Event:
    """An event set whenever ``store`` tells its subscribers that something changed."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wake() -> None:
        loop.call_soon_threadsafe(event.set)

    store.subscribe(wake)
    return event


async def test_workers_on_many_connections_never_claim_the_same_job(
    stores: Callable[..., PostgresJobStore],
) -> None:
    first = stores()
    await first.enqueue_many([JobRequest(task_name="work", input=i) for i in range(300)], now=T0)
    workers = [first, *(stores() for _ in range(3))]

    async def drain(store: PostgresJobStore, name: str) -> list[str]:
        taken: list[str] = []
        while claims := await store.claim(worker_id=name, task_names=["work"], limit=7, now=T0):
            taken += [c.job.id for c in claims]
            outcomes = [store.succeeded_outcome(c, None) for c in claims]
            assert await store.finish(outcomes, now=T0) == [True] * len(claims)
        return taken

    async with asyncio.timeout(30):
        taken = await asyncio.gather(*(drain(s, f"w{i}") for i, s in enumerate(workers)))
    everything = [job_id for ids in taken for job_id in ids]
    assert len(everything) == len(set(everything)) == 300
    assert await first.list_jobs(status="queued") == []


async def test_an_enqueue_through_another_store_wakes_a_subscriber_by_notify(
    stores: Callable[..., PostgresJobStore],
) -> None:
    worker, client = stores(), stores()
    event = woken(worker)
    async with asyncio.timeout(10):
        await worker.open()
        await event.wait()  # the store tells its subscribers once it LISTENs
        assert worker.poll_interval == 5.0
        event.clear()
        started = time.perf_counter()
        await client.enqueue(JobRequest(task_name="work"), now=T0)
        await event.wait()
    # a notification, not the poll: polling would take poll_interval (5 s)
    assert time.perf_counter() - started < 1.0


async def test_a_store_is_not_woken_twice_by_its_own_commits(
    stores: Callable[..., PostgresJobStore],
) -> None:
    store, other = stores(), stores()
    calls: list[float] = []
    event = asyncio.Event()

    def wake() -> None:
        calls.append(time.perf_counter())
        event.set()

    store.subscribe(wake)
    async with asyncio.timeout(10):
        await store.open()
        await event.wait()  # listening
        calls.clear()
        await store.enqueue(JobRequest(task_name="work"), now=T0)
        assert len(calls) == 1
        event.clear()
        await other.enqueue(JobRequest(task_name="work"), now=T0)
        await event.wait()
    # Notifications arrive in commit order: had our own NOTIFY woken us, it would have
    # come before the other store's.
    assert len(calls) == 2


async def test_a_store_keeps_working_across_a_server_restart_and_says_so(
    stores: Callable[..., PostgresJobStore],
    postgres_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, client = stores(), stores()
    job = await store.enqueue(JobRequest(task_name="work", input=1), now=T0)
    [claim] = await store.claim(worker_id="w", task_names=["work"], limit=1, now=T0)
    event = woken(store)
    caplog.set_level(logging.WARNING, logger="taskbuffer")

    async def restart_soon() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(postgres_server.restart, "immediate")

    async with asyncio.timeout(30):
        await asyncio.to_thread(postgres_server.stop, "fast")
        restarting = asyncio.create_task(restart_soon())
        # issued while the server is down: retried until it is back
        report = await store.renew([claim.token], now=T0 + 1)
        await restarting
        assert report.lost == frozenset()
        assert await store.finish([store.succeeded_outcome(claim, 2)], now=T0 + 2) == [True]
        done = await client.get(job.id)
        assert done is not None and done.status == "succeeded" and done.result == 2
        # and the listener is back: another process's enqueue wakes the store again (by
        # NOTIFY, or by the wake-up the store gives when it listens again)
        event.clear()
        await client.enqueue(JobRequest(task_name="work"), now=T0)
        await event.wait()
    messages = [r.getMessage() for r in caplog.records]
    assert any("connection lost" in m for m in messages), messages
    assert any("reconnected after" in m for m in messages), messages


async def test_an_operation_gives_up_after_reconnect_timeout(
    stores: Callable[..., PostgresJobStore], postgres_server: PostgresServer
) -> None:
    store = stores(reconnect_timeout=0.5)
    await store.open()
    await asyncio.to_thread(postgres_server.stop)
    try:
        async with asyncio.timeout(10):
            started = time.perf_counter()
            with pytest.raises(OSError):
                await store.get("x")
            assert 0.5 <= time.perf_counter() - started < 5
    finally:
        await asyncio.to_thread(postgres_server.start)


async def test_a_first_open_that_cannot_connect_fails_at_once(
    postgres_server: PostgresServer,
) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/no_such_database"
    store = PostgresJobStore(dead)
    async with asyncio.timeout(10):
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await store.open()
    assert "closed" in repr(store)


async def test_a_finish_whose_answer_was_lost_after_its_commit_reports_it_applied(
    stores: Callable[..., PostgresJobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores()
    await store.enqueue(JobRequest(task_name="work"), now=T0)
    [claim] = await store.claim(worker_id="w", task_names=["work"], limit=1, now=T0)
    fetch = asyncpg.pool.PoolConnectionProxy.fetch
    lost: list[str] = []

    async def commit_then_lose_the_answer(self: Any, query: str, *args: Any) -> Any:
        rows = await fetch(self, query, *args)
        if "WITH o AS" in query and not lost:  # the finish statement
            lost.append(query)
            raise asyncpg.ConnectionDoesNotExistError("connection was closed")
        return rows

    monkeypatch.setattr(asyncpg.pool.PoolConnectionProxy, "fetch", commit_then_lose_the_answer)
    outcome = store.succeeded_outcome(claim, "r")
    assert await store.finish([outcome], now=T0 + 1) == [True]
    assert lost  # the first try did commit, and its answer was lost
    monkeypatch.undo()
    # a plain repeat is fenced out like any stale outcome
    assert await store.finish([outcome], now=T0 + 2) == [False]
    job = await store.get(claim.job.id)
    assert job is not None and job.status == "succeeded" and job.finished_at is not None
    assert job.finished_at.timestamp() == T0 + 1
    [attempt] = await store.attempts(claim.job.id)
    assert attempt.outcome == "succeeded"


async def test_an_enqueue_whose_answer_was_lost_after_its_commit_stores_the_job_once(
    stores: Callable[..., PostgresJobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores()
    await store.open()
    fetch = asyncpg.pool.PoolConnectionProxy.fetch
    lost: list[str] = []

    async def commit_then_lose_the_answer(self: Any, query: str, *args: Any) -> Any:
        rows = await fetch(self, query, *args)
        if "INSERT INTO taskbuffer_jobs" in query and not lost:
            lost.append(query)
            raise ConnectionResetError("connection reset by peer")
        return rows

    monkeypatch.setattr(asyncpg.pool.PoolConnectionProxy, "fetch", commit_then_lose_the_answer)
    [a, b] = await store.enqueue_many(
        [JobRequest(task_name="work", input=1), JobRequest(task_name="work", input=2)], now=T0
    )
    assert lost
    monkeypatch.undo()
    assert sorted(j.id for j in await store.list_jobs()) == sorted([a.id, b.id])
    assert (a.input, b.input, a.status) == (1, 2, "queued")


async def test_one_claim_reaps_every_expired_lease_and_takes_the_best_due_jobs(
    stores: Callable[..., PostgresJobStore],
) -> None:
    # Claiming reaps in the same statement: the expired jobs' fates, as the ABC orders them.
    store = stores(lease=10.0)
    once = await store.enqueue(JobRequest(task_name="work", priority=9, max_attempts=1), now=T0)
    again = await store.enqueue(JobRequest(task_name="work", priority=5), now=T0)
    other = await store.enqueue(JobRequest(task_name="other", priority=7), now=T0)
    asked = await store.enqueue(JobRequest(task_name="work", priority=8), now=T0)
    taken = await store.claim(worker_id="A", task_names=["work", "other"], limit=4, now=T0)
    assert len(taken) == 4
    assert await store.cancel(asked.id, now=T0 + 1)
    fresh = await store.enqueue(JobRequest(task_name="work", priority=1), now=T0 + 2)
    # at T0 + 10 every lease has run out; only "work" is asked for, one job at most
    [best] = await store.claim(worker_id="B", task_names=["work"], limit=1, now=T0 + 10)
    assert best.job.id == again.id and best.job.attempts == 2 and best.job.worker_id == "B"
    states = {j.id: j for j in await store.list_jobs()}
    assert states[once.id].status == "failed" and states[once.id].error is not None
    assert states[once.id].error == attempts_lost_error(once.id, 1)
    cancelled = states[asked.id]
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert cancelled.finished_at.timestamp() == T0 + 10
    assert states[other.id].status == "queued" and states[other.id].attempts == 1
    assert states[fresh.id].status == "queued"
    for job in (once, asked, other):
        assert [a.outcome for a in await store.attempts(job.id)] == ["lost"]
    trail = await store.attempts(again.id)
    assert [(a.attempt, a.worker_id, a.outcome) for a in trail] == [
        (1, "A", "lost"),
        (2, "B", None),
    ]
    # nothing runs twice: A's outcome is fenced out
    assert await store.finish([store.succeeded_outcome(taken[1], None)], now=T0 + 11) == [False]


async def test_a_job_whose_attempts_were_all_lost_records_the_libraries_error(
    stores: Callable[..., PostgresJobStore],
) -> None:
    store = stores(lease=1.0)
    job = await store.enqueue(JobRequest(task_name="work", max_attempts=3), now=T0)
    for k in range(4):
        await store.claim(worker_id=f"w{k}", task_names=["work"], limit=1, now=T0 + k)
    failed = await store.get(job.id)
    assert failed is not None and failed.status == "failed" and failed.attempts == 3
    assert failed.error == attempts_lost_error(job.id, 3)


async def test_stores_opening_a_new_database_at_once_create_one_schema(
    stores: Callable[..., PostgresJobStore],
) -> None:
    many = [stores() for _ in range(5)]
    async with asyncio.timeout(30):
        await asyncio.gather(*(s.open() for s in many))
        await many[0].enqueue(JobRequest(task_name="work"), now=T0)
        assert len(await many[-1].list_jobs()) == 1


async def test_a_newer_schema_is_refused_with_a_message_naming_both_versions(
    postgres_job_backend: PostgresBackend,
) -> None:
    store = postgres_job_backend.make()
    await store.open()
    await store.close()
    await postgres_job_backend.force_schema_version(store, 99)
    again = postgres_job_backend.another(store)
    newer = f"schema version 99, newer than the version {SCHEMA_VERSION}"
    with pytest.raises(JobSchemaError, match=newer):
        await again.open()


async def test_a_database_of_schema_version_1_is_upgraded_when_a_store_opens_it(
    postgres_job_backend: PostgresBackend,
) -> None:
    store = postgres_job_backend.make()
    await store.open()
    job = await store.enqueue(JobRequest(task_name="t"), now=1000.0)
    await store.close()
    dsn = postgres_job_backend.dsns[id(store)]
    connection = await asyncpg.connect(dsn)
    indexes = "SELECT indexname FROM pg_indexes WHERE tablename = 'taskbuffer_jobs'"
    try:  # the layout of version 1: two indexes more
        await connection.execute(
            "CREATE INDEX taskbuffer_jobs_token ON taskbuffer_jobs (token) "
            "WHERE status = 'running'; CREATE INDEX taskbuffer_jobs_finished "
            "ON taskbuffer_jobs (finished_at) WHERE finished_at IS NOT NULL; "
            "UPDATE taskbuffer_meta SET value = '1' WHERE key = 'schema_version'"
        )
        again = postgres_job_backend.another(store)
        await again.open()
        assert await again.get(job.id) == job
        await again.close()
        names = {row[0] for row in await connection.fetch(indexes)}
        assert {"taskbuffer_jobs_token", "taskbuffer_jobs_finished"} & names == set()
        version = "SELECT value FROM taskbuffer_meta WHERE key = 'schema_version'"
        assert await connection.fetchval(version) == str(SCHEMA_VERSION)
    finally:
        await connection.close()


def _trail(attempts: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (a.attempt, a.worker_id, a.outcome, a.finished_at and a.finished_at.timestamp())
        for a in attempts
    ]


async def _audit_rows(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM taskbuffer_job_attempts"))
    finally:
        await connection.close()


async def test_a_job_that_succeeds_writes_no_audit_row_and_keeps_its_trail(
    postgres_job_backend: PostgresBackend,
) -> None:
    store = postgres_job_backend.make()
    job = await store.enqueue(JobRequest(task_name="t"), now=T0)
    [claim] = await store.claim(worker_id="w", task_names=["t"], limit=1, now=T0 + 1)
    outcome = JobOutcome(job_id=job.id, token=claim.token, outcome="succeeded")
    assert await store.finish([outcome], now=T0 + 2) == [True]
    assert _trail(await store.attempts(job.id)) == [(1, "w", "succeeded", T0 + 2)]
    assert await _audit_rows(postgres_job_backend.dsns[id(store)]) == 0
    await store.close()


async def test_a_database_of_schema_version_2_is_upgraded_with_its_trails_unchanged(
    postgres_job_backend: PostgresBackend,
) -> None:
    """Version 2 wrote a row for every attempt that ended: its rows and its running jobs read
    the same once upgraded, and a claim it made ends and retries as any other."""
    store = postgres_job_backend.make()
    done, failed, running = [
        await store.enqueue(JobRequest(task_name="t"), now=T0) for _ in range(3)
    ]
    claims = await store.claim(worker_id="old", task_names=["t"], limit=3, now=T0 + 1)
    outcomes = [
        JobOutcome(job_id=c.job.id, token=c.token, outcome=outcome)
        for c, outcome in zip(claims[:2], ("succeeded", "failed"), strict=True)
    ]
    assert await store.finish(outcomes, now=T0 + 2) == [True, True]
    await store.close()
    dsn = postgres_job_backend.dsns[id(store)]
    connection = await asyncpg.connect(dsn)
    try:  # what version 2 left: a row for each attempt that ended, running jobs indexed
        await connection.execute(
            "INSERT INTO taskbuffer_job_attempts SELECT id, claims, worker_id, started_at, "
            "finished_at, status, error FROM taskbuffer_jobs WHERE status <> 'running'; "
            "DROP INDEX taskbuffer_jobs_created; "
            "CREATE INDEX taskbuffer_jobs_created ON taskbuffer_jobs (created_at, seq); "
            "UPDATE taskbuffer_meta SET value = '2' WHERE key = 'schema_version'"
        )
        again = postgres_job_backend.another(store)
        await again.open()
        version = "SELECT value FROM taskbuffer_meta WHERE key = 'schema_version'"
        assert await connection.fetchval(version) == str(SCHEMA_VERSION)
        created = "SELECT indexdef FROM pg_indexes WHERE indexname = 'taskbuffer_jobs_created'"
        assert (await connection.fetchval(created)).endswith("WHERE (status <> 'running'::text)")
    finally:
        await connection.close()
    assert [j.id for j in await again.list_jobs()] == [running.id, failed.id, done.id]
    assert [j.id for j in await again.list_jobs(status="running")] == [running.id]
    assert _trail(await again.attempts(done.id)) == [(1, "old", "succeeded", T0 + 2)]
    assert _trail(await again.attempts(failed.id)) == [(1, "old", "failed", T0 + 2)]
    assert _trail(await again.attempts(running.id)) == [(1, "old", None, None)]
    last = JobOutcome(job_id=running.id, token=claims[2].token, outcome="succeeded")
    assert await again.finish([last], now=T0 + 3) == [True]
    assert _trail(await again.attempts(running.id)) == [(1, "old", "succeeded", T0 + 3)]
    await again.retry(failed.id, now=T0 + 4)
    [claim] = await again.claim(worker_id="new", task_names=["t"], limit=1, now=T0 + 4)
    assert _trail(await again.attempts(failed.id)) == [
        (1, "old", "failed", T0 + 2),
        (2, "new", None, None),
    ]
    await again.close()


async def test_a_given_pool_is_used_and_left_open(postgres_job_backend: PostgresBackend) -> None:
    dsn = postgres_job_backend.new_dsn()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    store, again = PostgresJobStore(pool), PostgresJobStore(pool)
    try:
        job = await store.enqueue(JobRequest(task_name="work", input=[1]), now=T0)
        assert repr(store) == "<PostgresJobStore (a given asyncpg pool) lease=30 open>"
        await store.close()
        assert await pool.fetchval("SELECT count(*) FROM taskbuffer_jobs") == 1
        assert (await again.get(job.id)) == job
    finally:
        await store.close()
        await again.close()
        async with asyncio.timeout(10):
            await pool.close()


def test_bad_arguments_raise_at_the_call() -> None:
    with pytest.raises(TypeError, match="dsn_or_pool must be a postgresql:// URL or an asyncpg"):
        PostgresJobStore(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reconnect_timeout must be"):
        PostgresJobStore("postgresql://h/db", reconnect_timeout=-1)
    with pytest.raises(ValueError, match="lease must be"):
        PostgresJobStore("postgresql://h/db", lease=0)


def test_the_url_in_messages_never_shows_a_password() -> None:
    store = PostgresJobStore("postgresql+asyncpg://bob:secret@db.example:5433/jobs")
    assert "secret" not in repr(store)
    assert (
        repr(store) == "<PostgresJobStore 'postgresql://bob@db.example:5433/jobs' lease=30 closed>"
    )
