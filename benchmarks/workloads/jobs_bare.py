"""The baselines of J1 and J3: the fastest bare SQL the engine allows, with no library around it.

J1's loop claims 10 due jobs per statement and completes them with one statement and one
commit, as the issue asks; J3 inserts one row per commit, then many rows per statement. SQLite
runs as the job store runs it (WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``), blocking calls
straight on the benchmark's thread; PostgreSQL through asyncpg, the store's driver.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

__all__ = ("bare_pg_enqueue", "bare_pg_work", "bare_sqlite_enqueue", "bare_sqlite_work")

BATCH = 10  # jobs claimed per statement
CHUNK = 1000  # rows per statement of a batch insert

SQLITE_TABLE = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY, task_name TEXT NOT NULL, input BLOB, status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, run_at REAL NOT NULL, token TEXT, lease_expires REAL,
    result BLOB
)
"""
PG_TABLE = """
CREATE TABLE jobs (
    id bigserial PRIMARY KEY, task_name text NOT NULL, input bytea, status text NOT NULL,
    priority integer NOT NULL DEFAULT 0, run_at float8 NOT NULL, token text,
    lease_expires float8, result bytea
)
"""
DUE_INDEX = "CREATE INDEX jobs_due ON jobs (priority DESC, run_at, id) WHERE status = 'queued'"


def _sqlite(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(SQLITE_TABLE)
    connection.execute(DUE_INDEX)
    return connection


def bare_sqlite_work(path: str, n: int, fn: Callable[[Any], Any]) -> tuple[float, int]:
    """Seconds to claim and complete ``n`` queued jobs, and how many were completed."""
    connection = _sqlite(path)
    connection.execute("BEGIN")
    connection.executemany(
        "INSERT INTO jobs (task_name, input, status, run_at) VALUES ('noop', ?, 'queued', 0)",
        [(str(i).encode(),) for i in range(n)],
    )
    connection.execute("COMMIT")
    done = 0
    started = time.perf_counter()
    while True:
        now = time.time()
        connection.execute("BEGIN IMMEDIATE")
        rows = connection.execute(
            "UPDATE jobs SET status = 'running', token = 't', lease_expires = ? WHERE id IN ("
            "SELECT id FROM jobs WHERE status = 'queued' AND run_at <= ?"
            " ORDER BY priority DESC, run_at, id LIMIT ?) RETURNING id, input",
            (now + 30, now, BATCH),
        ).fetchall()
        connection.execute("COMMIT")
        if not rows:
            break
        results = [(repr(fn(data)).encode(), job_id) for job_id, data in rows]
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "UPDATE jobs SET status = 'succeeded', result = ? WHERE id = ? AND token = 't'",
            results,
        )
        connection.execute("COMMIT")
        done += len(rows)
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed, done


def bare_sqlite_enqueue(path: str, single: int, batch: int) -> tuple[float, float, int]:
    """Seconds for ``single`` one-row commits, for ``batch`` rows in chunks; rows stored."""
    connection = _sqlite(path)
    insert = "INSERT INTO jobs (task_name, input, status, run_at) VALUES ('noop', ?, 'queued', ?)"
    started = time.perf_counter()
    for i in range(single):
        connection.execute(insert, (str(i).encode(), time.time()))
    one_by_one = time.perf_counter() - started
    rows = [(str(i).encode(), 0.0) for i in range(batch)]
    started = time.perf_counter()
    for first in range(0, batch, CHUNK):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(insert, rows[first : first + CHUNK])
        connection.execute("COMMIT")
    batched = time.perf_counter() - started
    count = connection.execute("SELECT count(*) FROM jobs").fetchone()[0]
    connection.close()
    return one_by_one, batched, count


async def _pg(dsn: str) -> Any:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    await connection.execute("DROP TABLE IF EXISTS jobs")
    await connection.execute(PG_TABLE)
    await connection.execute(DUE_INDEX)
    return connection


PG_CLAIM = """
UPDATE jobs SET status = 'running', token = 't', lease_expires = $1 + 30
WHERE id IN (
    SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $1
    ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
) RETURNING id, input
"""
PG_COMPLETE = """
UPDATE jobs SET status = 'succeeded', result = r.result
FROM unnest($1::bigint[], $2::bytea[]) AS r(id, result)
WHERE jobs.id = r.id AND jobs.token = 't'
"""
PG_INSERT_MANY = """
INSERT INTO jobs (task_name, input, status, run_at)
SELECT 'noop', input, 'queued', 0 FROM unnest($1::bytea[]) AS r(input)
"""


async def bare_pg_work(dsn: str, n: int, fn: Callable[[Any], Any]) -> tuple[float, int]:
    """As :func:`bare_sqlite_work`, on PostgreSQL (each statement commits by itself)."""
    connection = await _pg(dsn)
    await connection.execute(PG_INSERT_MANY, [str(i).encode() for i in range(n)])
    done = 0
    started = time.perf_counter()
    while rows := await connection.fetch(PG_CLAIM, time.time(), BATCH):
        results = [repr(fn(row["input"])).encode() for row in rows]
        await connection.execute(PG_COMPLETE, [row["id"] for row in rows], results)
        done += len(rows)
    elapsed = time.perf_counter() - started
    await connection.close()
    return elapsed, done


async def bare_pg_enqueue(dsn: str, single: int, batch: int) -> tuple[float, float, int]:
    """As :func:`bare_sqlite_enqueue`, on PostgreSQL (a batch chunk is one statement)."""
    connection = await _pg(dsn)
    insert = "INSERT INTO jobs (task_name, input, status, run_at) VALUES ('noop', $1, 'queued', $2)"
    started = time.perf_counter()
    for i in range(single):
        await connection.execute(insert, str(i).encode(), time.time())
    one_by_one = time.perf_counter() - started
    rows = [str(i).encode() for i in range(batch)]
    started = time.perf_counter()
    for first in range(0, batch, CHUNK):
        await connection.execute(PG_INSERT_MANY, rows[first : first + CHUNK])
    batched = time.perf_counter() - started
    count = await connection.fetchval("SELECT count(*) FROM jobs")
    await connection.close()
    return one_by_one, batched, int(count)
