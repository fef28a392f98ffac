"""asyncpg against psycopg 3 on the job store's hot statements: ``python -m benchmarks.pg_drivers``.

The measurement behind the choice of driver for ``PostgresJobStore`` (README, "Why asyncpg").
It starts its own durable PostgreSQL server (fsync on, as a production one) and, for each
driver, alternating A B A B, times:

- enqueue: ``n`` single-row INSERTs, each its own transaction (one commit per job);
- claim/complete: the worker's loop, claiming 10 due jobs per statement with
  ``FOR UPDATE SKIP LOCKED`` and completing them with one UPDATE and one commit;
- notify: the delay from a committed ``NOTIFY`` on one connection to its arrival on a listening
  connection, median and p99 over ``pings`` round trips.

psycopg runs with prepared statements (``prepare_threshold=0``), its fastest setting here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from .pg import postgres_dsn

SCHEMA = """
DROP TABLE IF EXISTS bench_jobs;
CREATE TABLE bench_jobs (
    id bigserial PRIMARY KEY,
    task_name text NOT NULL,
    input text NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    priority int NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    lease_token text,
    lease_until timestamptz,
    result text
);
CREATE INDEX bench_jobs_due ON bench_jobs (priority DESC, run_at, id) WHERE status = 'queued';
"""
INSERT = "INSERT INTO bench_jobs (task_name, input) VALUES ($1, $2) RETURNING id"
CLAIM = """
UPDATE bench_jobs SET status = 'running', lease_token = $1,
       lease_until = now() + interval '30 seconds'
WHERE id IN (
    SELECT id FROM bench_jobs WHERE status = 'queued' AND run_at <= now()
    ORDER BY priority DESC, run_at, id LIMIT 10 FOR UPDATE SKIP LOCKED
) RETURNING id, input
"""
COMPLETE = """
UPDATE bench_jobs SET status = 'succeeded', result = r.result, lease_token = NULL
FROM unnest($1::bigint[], $2::text[]) AS r(id, result)
WHERE bench_jobs.id = r.id AND bench_jobs.lease_token = $3
"""


def _psycopg_sql(text: str) -> str:
    return text.replace("$1", "%s").replace("$2", "%s").replace("$3", "%s")


async def asyncpg_run(dsn: str, n: int, pings: int) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    listener = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        started = time.perf_counter()
        for i in range(n):
            await conn.fetchval(INSERT, "job", str(i))
        enqueue = n / (time.perf_counter() - started)

        done = 0
        started = time.perf_counter()
        while True:
            async with conn.transaction():
                rows = await conn.fetch(CLAIM, "token")
            if not rows:
                break
            ids = [r["id"] for r in rows]
            async with conn.transaction():
                await conn.execute(COMPLETE, ids, [r["input"] for r in rows], "token")
            done += len(ids)
        claim = done / (time.perf_counter() - started)

        arrived: asyncio.Queue[float] = asyncio.Queue()
        await listener.add_listener("bench", lambda *_: arrived.put_nowait(time.perf_counter()))
        delays = []
        for _ in range(pings):
            sent = time.perf_counter()
            await conn.execute("NOTIFY bench")
            delays.append((await arrived.get()) - sent)
    finally:
        await conn.close()
        await listener.close()
    return _figures(enqueue, claim, delays)


async def psycopg_run(dsn: str, n: int, pings: int) -> dict[str, float]:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(dsn, prepare_threshold=0)
    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    insert, claim_sql, complete = map(_psycopg_sql, (INSERT, CLAIM, COMPLETE))
    try:
        await conn.execute(SCHEMA, prepare=False)
        await conn.commit()
        started = time.perf_counter()
        for i in range(n):
            await (await conn.execute(insert, ("job", str(i)))).fetchone()
            await conn.commit()
        enqueue = n / (time.perf_counter() - started)

        done = 0
        started = time.perf_counter()
        while True:
            rows = await (await conn.execute(claim_sql, ("token",))).fetchall()
            await conn.commit()
            if not rows:
                break
            ids = [r[0] for r in rows]
            await conn.execute(complete, (ids, [r[1] for r in rows], "token"))
            await conn.commit()
            done += len(ids)
        claim = done / (time.perf_counter() - started)

        await listener.execute("LISTEN bench")
        delays = []
        notifies = listener.notifies()
        for _ in range(pings):
            sent = time.perf_counter()
            await conn.execute("NOTIFY bench")
            await conn.commit()
            await anext(notifies)
            delays.append(time.perf_counter() - sent)
    finally:
        await conn.close()
        await listener.close()
    return _figures(enqueue, claim, delays)


def _figures(enqueue: float, claim: float, delays: list[float]) -> dict[str, float]:
    delays_ms = sorted(d * 1000 for d in delays)
    return {
        "enqueue_per_s": enqueue,
        "claim_complete_per_s": claim,
        "notify_median_ms": statistics.median(delays_ms),
        "notify_p99_ms": delays_ms[int(len(delays_ms) * 0.99) - 1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pg_drivers", description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per pass (default 5000)")
    parser.add_argument("--reps", type=int, default=3, help="passes per driver (default 3)")
    parser.add_argument("--pings", type=int, default=200, help="NOTIFY round trips per pass")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"asyncpg": [], "psycopg": []}
    runners: dict[str, Any] = {"asyncpg": asyncpg_run, "psycopg": psycopg_run}
    with postgres_dsn() as dsn:
        for _ in range(args.reps):
            for name, run in runners.items():
                results[name].append(asyncio.run(run(dsn, args.jobs, args.pings)))
    print(f"{args.jobs} jobs, {args.pings} pings, {args.reps} passes each, medians:")
    keys = results["asyncpg"][0].keys()
    print(f"{'':22}" + "".join(f"{k:>22}" for k in keys))
    for name, passes in results.items():
        cells = "".join(f"{statistics.median(p[k] for p in passes):>22.2f}" for k in keys)
        print(f"{name:22}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
