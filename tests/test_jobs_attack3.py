"""Hostile checks of schema version 2 and the PostgreSQL release of a cancelled job: stores
opening a version-1 database at once, claims made before the upgrade, a release whose answer
was lost, renewals of many tokens, purge with skewed clocks (every store answers the same)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _jobs_support import Backend, backend, store
from _pg_support import PostgresBackend
from test_jobs_store import T0, done

from taskbuffer.jobs import SCHEMA_VERSION, JobRequest, JobStore, SQLiteJobStore

__all__ = ("backend", "store")


def _downgrade_sqlite(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.execute("CREATE INDEX taskbuffer_jobs_token ON taskbuffer_jobs (token)")
        old.execute("CREATE INDEX taskbuffer_jobs_finished ON taskbuffer_jobs (finished_at)")
        old.execute("UPDATE taskbuffer_meta SET value = '1' WHERE key = 'schema_version'")
        old.commit()


@pytest.mark.realtime
async def test_sqlite_stores_opening_a_version_1_file_at_once_upgrade_it_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    async with SQLiteJobStore(path) as first:
        job = await first.enqueue(JobRequest(task_name="t"), now=T0)
        [c] = await first.claim(worker_id="old", task_names=["t"], limit=1, now=T0)
    _downgrade_sqlite(path)
    many = [SQLiteJobStore(path, lease=30.0) for _ in range(6)]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(s.open() for s in many))
            # the claim made before the upgrade is renewed and finished by its token
            report = await many[3].renew([c.token, c.token[:24] + "0" * 8], now=T0 + 1)
            assert report.lost == {c.token[:24] + "0" * 8}
            assert await many[4].finish([done(c, "succeeded")], now=T0 + 2) == [True]
            trail = await many[5].attempts(job.id)
    finally:
        for s in many:
            await s.close()
    assert [(a.attempt, a.worker_id, a.outcome) for a in trail] == [(1, "old", "succeeded")]
    with contextlib.closing(sqlite3.connect(path)) as probe:
        version = probe.execute("SELECT value FROM taskbuffer_meta").fetchall()
    assert version == [(str(SCHEMA_VERSION),)]


@pytest_asyncio.fixture
async def pg_pair(
    postgres_job_backend: PostgresBackend,
) -> AsyncIterator[tuple[JobStore, JobStore]]:
    """Two stores on one PostgreSQL database (two processes' worth), closed afterwards."""
    store = postgres_job_backend.make()
    other = postgres_job_backend.another(store)
    try:
        yield store, other
    finally:
        await store.close()
        await other.close()


async def _downgrade_pg(dsn: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "CREATE INDEX taskbuffer_jobs_token ON taskbuffer_jobs (token) "
            "WHERE status = 'running'; CREATE INDEX taskbuffer_jobs_finished "
            "ON taskbuffer_jobs (finished_at) WHERE finished_at IS NOT NULL; "
            "UPDATE taskbuffer_meta SET value = '1' WHERE key = 'schema_version'"
        )
    finally:
        await connection.close()


@pytest.mark.external
@pytest.mark.realtime
async def test_postgres_stores_opening_a_version_1_database_at_once_keep_its_claims(
    postgres_job_backend: PostgresBackend,
) -> None:
    first = postgres_job_backend.make()
    await first.open()
    jobs = [await first.enqueue(JobRequest(task_name="t"), now=T0) for _ in range(40)]
    claims = await first.claim(worker_id="old", task_names=["t"], limit=40, now=T0)
    await first.close()
    await _downgrade_pg(postgres_job_backend.dsns[id(first)])
    many = [postgres_job_backend.another(first) for _ in range(5)]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(s.open() for s in many))
            tokens = [c.token for c in claims] + ["forged"]
            report = await many[1].renew(tokens, now=T0 + 1)
            assert report.lost == {"forged"}
            assert await many[2].cancel(jobs[0].id, now=T0 + 2)
            outcomes = [done(c, "released") for c in claims[:2]]
            assert await many[3].finish(outcomes, now=T0 + 3) == [True, True]
            ended = [await many[4].get(j.id) for j in jobs[:2]]
    finally:
        for s in many:
            await s.close()
    assert [(j.status, j.attempts) for j in ended if j] == [("cancelled", 0), ("queued", 0)]


@pytest.mark.external
@pytest.mark.realtime
async def test_postgres_a_release_of_a_cancelled_job_whose_answer_was_lost_reports_it_applied(
    pg_pair: tuple[JobStore, JobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    store, other = pg_pair
    job = await store.enqueue(JobRequest(task_name="t"), now=T0)
    [c] = await store.claim(worker_id="w", task_names=["t"], limit=1, now=T0)
    assert await other.cancel(job.id, now=T0 + 1)  # another manager asks
    fetch = asyncpg.pool.PoolConnectionProxy.fetch
    lost: list[str] = []

    async def commit_then_lose(self: Any, query: str, *args: Any) -> Any:
        rows = await fetch(self, query, *args)
        if "WITH o AS" in query and not lost:
            lost.append(query)
            raise asyncpg.ConnectionDoesNotExistError("connection was closed")
        return rows

    monkeypatch.setattr(asyncpg.pool.PoolConnectionProxy, "fetch", commit_then_lose)
    assert await store.finish([done(c, "released")], now=T0 + 2) == [True]
    assert lost
    monkeypatch.undo()
    ended = await other.get(job.id)
    assert ended is not None and ended.status == "cancelled" and ended.attempts == 0
    assert ended.finished_at is not None and ended.finished_at.timestamp() == T0 + 2
    trail = await other.attempts(job.id)
    assert [(a.outcome, a.finished_at) for a in trail] == [("released", trail[0].finished_at)]
    assert len(trail) == 1
    assert await other.claim(worker_id="x", task_names=["t"], limit=1, now=T0 + 3) == []


async def test_purge_with_a_creation_instant_after_the_finish_waits_at_most_the_skew(
    backend: Backend,
) -> None:
    # Another host's clock ran ahead when it enqueued; this one finished the job "earlier".
    # The SQL stores find old jobs through their creation instants: such a job is purged once
    # both instants are past the cutoff (the skew later than the memory store, never sooner).
    store: JobStore = backend.make(retention=100.0)
    await store.open()
    try:
        job = await store.enqueue(JobRequest(task_name="t"), now=T0 + 50)
        [c] = await store.claim(worker_id="w", task_names=["t"], limit=1, now=T0 + 50)
        assert await store.finish([done(c, "succeeded")], now=T0 + 10) == [True]
        assert await store.purge(now=T0 + 110) == 0  # finished exactly at the cutoff
        assert await store.purge(now=T0 + 151) == 1
        assert await store.get(job.id) is None and await store.attempts(job.id) == []
    finally:
        await store.close()


@pytest.mark.external
@pytest.mark.realtime
async def test_postgres_a_cancel_racing_a_release_always_ends_the_job_cancelled(
    pg_pair: tuple[JobStore, JobStore],
) -> None:
    store, other = pg_pair
    async with asyncio.timeout(60):
        for k in range(20):
            job = await store.enqueue(JobRequest(task_name="t"), now=T0 + k)
            [c] = await store.claim(worker_id="w", task_names=["t"], limit=1, now=T0 + k)
            asked, released = await asyncio.gather(
                other.cancel(job.id, now=T0 + k),
                store.finish([done(c, "released")], now=T0 + k),
            )
            ended = await store.get(job.id)
            assert (asked, released) == (True, [True])
            assert ended is not None and (ended.status, ended.attempts) == ("cancelled", 0)
        assert await store.claim(worker_id="x", task_names=["t"], limit=5, now=T0 + 99) == []


@pytest.mark.parametrize("first", ["cancel", "stop"])
async def test_a_cancel_from_one_manager_racing_anothers_stop_ends_the_job_cancelled(
    backend: Backend, first: str
) -> None:
    # Manager A runs the job and stops at once (its run cancelled, the job given back) while
    # manager B, sharing the store and working the same task, cancels it: the job ends
    # cancelled, B never starts it, and its result says so.
    from taskbuffer import Task, TaskManager
    from taskbuffer.jobs import JobCancelledError

    store = backend.make(lease=0.6)
    other = backend.another(store, lease=0.6)
    runs: list[str] = []
    started = asyncio.Event()

    def worker(name: str) -> TaskManager:
        async def work() -> None:
            runs.append(name)
            started.set()
            await asyncio.Event().wait()

        m = TaskManager(job_store=store if name == "A" else other)
        m.add_task(Task(task_function=work, name="t"))
        return m

    a, b = worker("A"), worker("B")
    try:
        async with asyncio.timeout(10):
            job = await a.enqueue("t")
            await a.start()
            await started.wait()
            await b.start()
            cancel, stop = b.cancel_job(job.id), a.stop(timeout=0)
            both = (cancel, stop) if first == "cancel" else (stop, cancel)
            results = await asyncio.gather(*both)
            asked = results[0 if first == "cancel" else 1]
            assert asked is True
            with pytest.raises(JobCancelledError):
                await b.job_result(job.id)
            await asyncio.sleep(0.7)  # past a lease: B would have claimed a job given back
            ended = await b.get_job(job.id)
            assert ended is not None and ended.status == "cancelled"
            trail = [t.outcome for t in await b.get_job_attempts(job.id)]
            # given back by A's stop (not counted) with the cancel asked; or ended by A's worker
            # on seeing the cancel; or given back before it was asked, claimed by B and ended
            # there: never run after the cancel, never queued again
            assert (ended.attempts, trail) in (
                (0, ["released"]),
                (1, ["cancelled"]),
                (1, ["released", "cancelled"]),
            )
            assert runs[0] == "A" and len(runs) <= len(trail)
    finally:
        await a.stop()
        await b.stop()
        await store.close()
        await other.close()


@pytest.mark.external
@pytest.mark.realtime
async def test_postgres_a_cancel_racing_a_claim_or_a_release_is_never_refused(
    pg_pair: tuple[JobStore, JobStore],
) -> None:
    # cancel_job says False only for a job already finished. A cancel that met the job's row
    # locked by a claim (or a release) committing under it must still cancel the job; it
    # found nothing, the job ran, and the caller was told the job had finished.
    store, other = pg_pair
    async with asyncio.timeout(60):
        for k in range(3):
            jobs = await store.enqueue_many(
                [JobRequest(task_name="t") for _ in range(2000)], now=T0 + k
            )
            claiming = asyncio.ensure_future(
                store.claim(worker_id="w", task_names=["t"], limit=2000, now=T0 + k)
            )
            asked: dict[str, bool] = {}
            for job in reversed(jobs):  # while the claim runs, one after another
                asked[job.id] = await other.cancel(job.id, now=T0 + k)
                if claiming.done() and len(asked) > 20:
                    break
            claimed = {c.job.id: c for c in await claiming}
            assert list(asked.values()) == [True] * len(asked)
            for i in asked:
                job = await store.get(i)
                assert job is not None and job.status in ("cancelled", "running")
                if job.status == "running":
                    renewed = await store.renew([claimed[i].token], now=T0 + k)
                    assert renewed.cancel_requested == {claimed[i].token}
            await store.finish([done(c, "released") for c in claimed.values()], now=T0 + k)
