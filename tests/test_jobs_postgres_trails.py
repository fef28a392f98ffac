"""The PostgreSQL job store against the memory and SQLite stores: the same random walk of
enqueues, claims, finishes (alone or with a claim), releases, cancels, retries, lapsed leases
and purges leaves the same jobs and the same trails in each."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from _pg_support import PostgresBackend

from taskbuffer.jobs import Claim, JobOutcome, JobRequest, JobStore, MemoryJobStore, SQLiteJobStore
from taskbuffer.jobs._values import JobError

pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.external, pytest.mark.realtime]

T0 = 1_800_000_000.0
LEASE = 10.0


class Walker:
    """One store and the claims its workers hold, by job index."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.ids: list[str] = []
        self.held: dict[int, Claim] = {}

    def index(self, claim: Claim) -> int:
        return self.ids.index(claim.job.id)

    async def state(self) -> list[Any]:
        jobs = {j.id: j for j in await self.store.list_jobs(limit=1000)}
        listed = [self.ids.index(j) for j in jobs]
        state: list[Any] = [listed]
        for i, job_id in enumerate(self.ids):
            job = jobs.get(job_id)
            trail = [
                (a.attempt, a.worker_id, a.outcome, a.finished_at, a.error is not None)
                for a in await self.store.attempts(job_id)
            ]
            state.append(
                (i, job and (job.status, job.attempts, job.finished_at), trail if job else None)
            )
        return state


def outcome(claim: Claim, kind: str) -> JobOutcome:
    error = JobError(type="E", message="m", traceback="") if kind == "failed" else None
    return JobOutcome(job_id=claim.job.id, token=claim.token, outcome=kind, error=error)  # type: ignore[arg-type]


async def step(w: Walker, op: tuple[Any, ...], now: float) -> Any:
    kind = op[0]
    if kind == "enqueue":
        jobs = await w.store.enqueue_many(
            [JobRequest(task_name=t, priority=p) for t, p in op[1]], now=now
        )
        w.ids += [j.id for j in jobs]
        return None
    if kind in ("claim", "busy"):
        _, worker, names, limit, finishing = op
        outcomes = [outcome(w.held.pop(i), k) for i, k in finishing if i in w.held]
        if kind == "claim":
            applied = await w.store.finish(outcomes, now=now) if outcomes else []
            claims = await w.store.claim(worker_id=worker, task_names=names, limit=limit, now=now)
        else:
            applied, claims = await w.store.finish_and_claim(
                outcomes, worker_id=worker, task_names=names, limit=limit, now=now
            )
        got = sorted(w.index(c) for c in claims)
        for c in claims:
            w.held[w.index(c)] = c
        return applied, got
    if kind == "cancel":
        return await w.store.cancel(w.ids[op[1]], now=now) if op[1] < len(w.ids) else None
    if kind == "retry":
        try:
            return (await w.store.retry(w.ids[op[1]], now=now)).status
        except (ValueError, KeyError, IndexError) as error:
            return type(error).__name__
    if kind == "renew":
        report = await w.store.renew([c.token for c in w.held.values()], now=now)
        return sorted(i for i, c in w.held.items() if c.token in report.lost)
    assert kind == "purge"
    return await w.store.purge(now=now)


def walk(seed: int) -> list[tuple[tuple[Any, ...], float]]:
    rng = random.Random(seed)
    ops: list[tuple[tuple[Any, ...], float]] = []
    now, count = T0, 0
    for _ in range(40):
        now += rng.choice((0.0, 1.0, 1.0, 3.0, LEASE + 1))
        r = rng.random()
        if r < 0.15 or count == 0:
            batch = [(rng.choice("ab"), rng.choice((0, 0, 1))) for _ in range(rng.randint(1, 4))]
            ops.append((("enqueue", batch), now))
            count += len(batch)
        elif r < 0.6:
            finishing = [
                (i, rng.choice(("succeeded", "failed", "released", "cancelled", "succeeded")))
                for i in rng.sample(range(count), k=min(count, rng.randint(0, 3)))
            ]
            names = rng.choice((["a"], ["b"], ["a", "b"]))
            kind = rng.choice(("claim", "busy", "busy"))
            if kind == "busy":  # (PostgreSQL's busy statement cannot claim what it releases)
                finishing = [(i, k) for i, k in finishing if k != "released"]
            op = (kind, rng.choice(("w1", "w2")), names, rng.randint(0, 3), finishing)
            ops.append((op, now))
        elif r < 0.72:
            ops.append((("cancel", rng.randrange(count)), now))
        elif r < 0.85:
            ops.append((("retry", rng.randrange(count)), now))
        elif r < 0.95:
            ops.append((("renew",), now))
        else:
            ops.append((("purge",), now))
    return ops


@pytest.mark.parametrize("seed", range(40))
async def test_a_random_walk_leaves_the_same_jobs_and_trails_in_every_store(
    seed: int, postgres_job_backend: PostgresBackend, tmp_path: Path
) -> None:
    options = {"lease": LEASE, "retention": 5.0}
    walkers = [
        Walker(MemoryJobStore(**options)),
        Walker(SQLiteJobStore(tmp_path / "jobs.db", **options)),
        Walker(postgres_job_backend.make(**options)),
    ]
    for w in walkers:
        await w.store.open()
    try:
        for n, (op, now) in enumerate(walk(seed)):
            results = [await step(w, op, now) for w in walkers]
            states = [await w.state() for w in walkers]
            context = f"step {n}: {op} at +{now - T0:g}"
            assert results[2] == results[0], context
            assert states[2] == states[0], context
            assert states[1] == states[0], context
    finally:
        for w in walkers:
            await w.store.close()


@pytest.mark.parametrize("lose", ["none", "before_claim", "busy_answer"])
async def test_a_busy_cycle_meeting_a_lapsed_lease_finishes_reaps_and_claims_once(
    lose: str, postgres_job_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    a = postgres_job_backend.make(lease=LEASE)
    b = postgres_job_backend.another(a, lease=LEASE)
    await a.open()
    await b.open()
    try:
        x, y = await a.enqueue_many([JobRequest(task_name="t"), JobRequest(task_name="t")], now=T0)
        [cx] = await a.claim(worker_id="A", task_names=["t"], limit=1, now=T0)
        [cy] = await b.claim(worker_id="B", task_names=["t"], limit=1, now=T0 + 5)
        z = await a.enqueue(JobRequest(task_name="t"), now=T0 + 6)
        fetch = asyncpg.pool.PoolConnectionProxy.fetch
        seen: list[str] = []

        async def flaky(self: Any, query: str, *args: Any) -> Any:
            seen.append("claim" if query.startswith("WITH \nexpired") else query[:20])
            if lose == "before_claim" and seen[-1] == "claim" and len(seen) == 2:
                raise asyncpg.ConnectionDoesNotExistError("connection was closed")
            rows = await fetch(self, query, *args)
            if lose == "busy_answer" and len(seen) == 1:
                raise asyncpg.ConnectionDoesNotExistError("connection was closed")
            return rows

        monkeypatch.setattr(asyncpg.pool.PoolConnectionProxy, "fetch", flaky)
        done = b.succeeded_outcome(cy, "r")
        applied, claims = await b.finish_and_claim(
            [done], worker_id="B", task_names=["t"], limit=3, now=T0 + 11
        )
        monkeypatch.undo()
        assert "claim" in seen, seen  # the busy statement found the lapsed lease
        assert applied == [True]
        assert sorted(c.job.id for c in claims) == sorted([x.id, z.id])
        assert len({c.token for c in claims} | {cx.token, cy.token}) == 4
        assert await a.finish([a.succeeded_outcome(cx, "late")], now=T0 + 12) == [False]
        trail = [(t.attempt, t.worker_id, t.outcome) for t in await b.attempts(x.id)]
        assert trail == [(1, "A", "lost"), (2, "B", None)]
        trail = [(t.attempt, t.worker_id, t.outcome) for t in await b.attempts(y.id)]
        assert trail == [(1, "B", "succeeded")]
        ends = [b.succeeded_outcome(c, None) for c in claims]
        assert await b.finish(ends, now=T0 + 13) == [True, True]
        trail = [(t.attempt, t.worker_id, t.outcome) for t in await b.attempts(x.id)]
        assert trail == [(1, "A", "lost"), (2, "B", "succeeded")]
    finally:
        await a.close()
        await b.close()


async def test_every_page_of_list_jobs_matches_the_memory_store_with_running_jobs_mixed_in(
    postgres_job_backend: PostgresBackend,
) -> None:
    rng = random.Random(5)
    walkers = [Walker(MemoryJobStore(lease=LEASE)), Walker(postgres_job_backend.make(lease=LEASE))]
    for w in walkers:
        await w.store.open()
    try:
        now = T0
        for _ in range(8):
            now += rng.choice((0.0, 1.0))
            batch = [(rng.choice("ab"), 0) for _ in range(rng.randint(1, 4))]
            finishing = [(i, rng.choice(("succeeded", "failed"))) for i in range(0, 30, 3)]
            op = ("claim", "w", rng.choice((["a"], ["b"], ["a", "b"])), 2, finishing)
            for w in walkers:
                await step(w, ("enqueue", batch), now)
                await step(w, op, now)
        await step(walkers[0], ("cancel", 1), now)
        await step(walkers[1], ("cancel", 1), now)
        for status in (None, "queued", "running", "succeeded", "failed", "cancelled"):
            for task in (None, "a", "b"):
                for limit in (1, 2, 3, 5, 100):
                    for offset in (0, 1, 2, 3, 4, 7, 11, 40):
                        pages = [
                            [
                                (w.ids.index(j.id), j.status)
                                for j in await w.store.list_jobs(
                                    status=status,  # type: ignore[arg-type]
                                    task_name=task,
                                    limit=limit,
                                    offset=offset,
                                )
                            ]
                            for w in walkers
                        ]
                        assert pages[1] == pages[0], (status, task, limit, offset)
        running = [j for j in await walkers[1].store.list_jobs() if j.status == "running"]
        assert running  # the merge was exercised
    finally:
        for w in walkers:
            await w.store.close()


async def test_a_version_1_database_whose_claims_opened_audit_rows_ends_them_once_upgraded(
    postgres_job_backend: PostgresBackend,
) -> None:
    """Version 1 first wrote a job's audit row when a claim began (outcome empty) and completed
    it when the attempt ended. A job claimed then and ended after the upgrade, by a finish or
    by a retry of its failure, shows how its attempt ended, not an attempt still running."""
    import asyncpg

    store = postgres_job_backend.make()
    await store.open()
    done, failed, running = await store.enqueue_many(
        [JobRequest(task_name="t") for _ in range(3)], now=T0
    )
    claims = await store.claim(worker_id="old", task_names=["t"], limit=3, now=T0 + 1)
    await store.close()
    dsn = postgres_job_backend.dsns[id(store)]
    connection = await asyncpg.connect(dsn)
    try:  # what version 1 left: an open row for each attempt under way, its indexes
        await connection.execute(
            "INSERT INTO taskbuffer_job_attempts (job_id, attempt, worker_id, started_at) "
            "SELECT id, claims, worker_id, started_at FROM taskbuffer_jobs "
            "WHERE status = 'running'; "
            "CREATE INDEX taskbuffer_jobs_token ON taskbuffer_jobs (token) "
            "WHERE status = 'running'; CREATE INDEX taskbuffer_jobs_finished "
            "ON taskbuffer_jobs (finished_at) WHERE finished_at IS NOT NULL; "
            "DROP INDEX taskbuffer_jobs_created; "
            "CREATE INDEX taskbuffer_jobs_created ON taskbuffer_jobs (created_at, seq); "
            "UPDATE taskbuffer_meta SET value = '1' WHERE key = 'schema_version'"
        )
    finally:
        await connection.close()
    again = postgres_job_backend.another(store)
    await again.open()
    try:
        trail = [(a.attempt, a.worker_id, a.outcome) for a in await again.attempts(running.id)]
        assert trail == [(1, "old", None)]
        outcomes = [
            JobOutcome(job_id=c.job.id, token=c.token, outcome=kind)  # type: ignore[arg-type]
            for c, kind in zip(claims, ("succeeded", "failed", "succeeded"), strict=True)
        ]
        assert await again.finish(outcomes[:2], now=T0 + 2) == [True, True]
        await again.retry(failed.id, now=T0 + 3)
        [claim] = await again.claim(worker_id="new", task_names=["t"], limit=1, now=T0 + 4)
        assert claim.job.id == failed.id
        trails = {
            job.id: [
                (a.attempt, a.worker_id, a.outcome, a.finished_at and a.finished_at.timestamp())
                for a in await again.attempts(job.id)
            ]
            for job in (done, failed, running)
        }
        assert trails == {
            done.id: [(1, "old", "succeeded", T0 + 2)],
            failed.id: [(1, "old", "failed", T0 + 2), (2, "new", None, None)],
            running.id: [(1, "old", None, None)],
        }
        assert await again.finish(outcomes[2:], now=T0 + 5) == [True]
        trail = [(a.attempt, a.outcome) for a in await again.attempts(running.id)]
        assert trail == [(1, "succeeded")]
    finally:
        await again.close()


async def test_workers_racing_busy_cycles_past_a_dead_workers_leases_run_each_job_once(
    postgres_job_backend: PostgresBackend,
) -> None:
    import asyncio

    first = postgres_job_backend.make(lease=LEASE)
    stores = [first, *(postgres_job_backend.another(first, lease=LEASE) for _ in range(3))]
    for s in stores:
        await s.open()
    try:
        jobs = await first.enqueue_many([JobRequest(task_name="t") for _ in range(120)], now=T0)
        dead = await stores[3].claim(worker_id="dead", task_names=["t"], limit=9, now=T0)
        tokens = [c.token for c in dead]

        async def work(store: JobStore, name: str) -> list[str]:
            done: list[str] = []
            claims = await store.claim(worker_id=name, task_names=["t"], limit=4, now=T0 + 11)
            while claims:
                tokens.extend(c.token for c in claims)
                outcomes = [store.succeeded_outcome(c, None) for c in claims]
                applied, claims = await store.finish_and_claim(
                    outcomes, worker_id=name, task_names=["t"], limit=4, now=T0 + 11
                )
                assert applied == [True] * len(outcomes)
                done += [o.job_id for o in outcomes]
            return done

        async with asyncio.timeout(60):
            done = await asyncio.gather(*(work(s, f"w{i}") for i, s in enumerate(stores[:3])))
        ran = sorted(job_id for ids in done for job_id in ids)
        assert ran == sorted(j.id for j in jobs)
        assert len(set(tokens)) == len(tokens) == 129
        for claim in dead:
            trail = [
                (a.attempt, a.worker_id, a.outcome) for a in await first.attempts(claim.job.id)
            ]
            assert [t[1:] for t in trail][0] == ("dead", "lost")
            assert trail[1][0] == 2 and trail[1][2] == "succeeded" and len(trail) == 2
    finally:
        for s in stores:
            await s.close()
