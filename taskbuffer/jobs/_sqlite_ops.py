"""The write transactions' bodies of the SQLite job store, on a connection inside one
``BEGIN IMMEDIATE`` (taken by the store): reaping, claiming, ending claims, enqueueing; and
putting a file in WAL mode when the store's connection opens it.

Kept apart from :mod:`taskbuffer.jobs._sqlite` so that a worker's busy cycle can end its
runs and claim their replacements in ONE transaction (:func:`apply_outcomes` then
:func:`take_due`): one commit, one fsync, per batch.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from functools import cache
from typing import Any, cast

from ._sqlite_sql import (
    CLAIM,
    COLUMNS,
    FAIL_EXHAUSTED,
    FINISH_ONE,
    FINISH_SUCCEEDED,
    INSERT,
    INSERT_PLAIN,
    REAP_ATTEMPTS,
    REAP_CANCELLED,
    REAP_EXHAUSTED,
    REAP_REQUEUE,
    end_attempts,
    finish_many,
    release_many,
)
from ._store import attempts_lost_error
from ._values import JobOutcome, JobRequest, error_json, ordered_id

__all__ = (
    "BUSY_TIMEOUT",
    "apply_outcomes",
    "claimed_rows",
    "existing_job",
    "insert_jobs",
    "reap",
    "take_due",
    "token_seq",
    "use_wal",
)


BUSY_TIMEOUT = 10.0
"""Seconds a write waits for another process's write lock before failing."""


def use_wal(connection: sqlite3.Connection) -> None:
    """Put the file in WAL mode (a property of the file: a no-op once it is).

    Converting a fresh file needs it alone, and SQLite does not wait out ``busy_timeout`` for
    that lock: a store opened while another connection converts (or writes) the fresh file
    was refused at once ("database is locked"). It tries again, backing off, for as long as a
    write would wait.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.001
    while True:
        try:
            (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            mode = None
        if mode in ("wal", "memory"):  # (an in-memory database keeps its own journal)
            return
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError(
                f"could not put the database in WAL mode within {BUSY_TIMEOUT:g} s "
                f"(journal mode {mode!r}): another connection holds it"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def existing_job(c: sqlite3.Connection, request: JobRequest) -> sqlite3.Row | None:
    """The stored job that ``request`` meets: by ``schedule_key`` (any status), else by
    ``dedupe_key`` (queued or running only); ``None`` when there is none."""
    if request.schedule_key is not None:
        row = c.execute(
            f"SELECT {COLUMNS} FROM taskbuffer_jobs WHERE schedule_key = ?",
            (request.schedule_key,),
        ).fetchone()
        if row is not None:
            return cast("sqlite3.Row", row)
    if request.dedupe_key is not None:
        return cast(
            "sqlite3.Row | None",
            c.execute(
                f"SELECT {COLUMNS} FROM taskbuffer_jobs WHERE dedupe_key = ? "
                "AND status IN ('queued', 'running')",
                (request.dedupe_key,),
            ).fetchone(),
        )
    return None


def insert_jobs(
    c: sqlite3.Connection, requests: Sequence[JobRequest], encoded: Sequence[bytes], now: float
) -> list[sqlite3.Row | str]:
    """Insert the requests; per request the stored job it met (a row) or the new job's id.

    Requests without keys (nothing to meet) go in one ``executemany``; the new jobs are not
    read back: the store builds them from the request (their columns are known)."""
    found: list[sqlite3.Row | str] = []
    fresh = []
    for request, data in zip(requests, encoded, strict=True):
        row = None
        if request.schedule_key is not None or request.dedupe_key is not None:
            row = existing_job(c, request)
        if row is not None:
            found.append(row)
            continue
        job_id = ordered_id()
        run_at = now if request.run_at is None else request.run_at
        if request.schedule_key is None and request.dedupe_key is None:
            fresh.append((job_id, request.task_name, bytearray(data), request.priority, run_at,
                          request.max_attempts, now))  # fmt: skip
        else:  # inserted at once, in order: a later request of this batch may meet it
            c.executemany(INSERT_PLAIN, fresh)
            fresh.clear()
            c.execute(INSERT, (job_id, request.task_name, data, request.priority, run_at,
                               request.max_attempts, now, request.dedupe_key,
                               request.schedule_key))  # fmt: skip
        found.append(job_id)
    c.executemany(INSERT_PLAIN, fresh)
    return found


def reap(c: sqlite3.Connection, now: float) -> None:
    """End every expired lease (any task) as :meth:`JobStore.claim` says."""
    expired = c.execute(
        "SELECT 1 FROM taskbuffer_jobs WHERE status = 'running' AND lease_expires <= ? LIMIT 1",
        (now,),
    ).fetchone()
    if expired is None:
        return
    params = {"now": now}
    c.execute(REAP_ATTEMPTS, params)
    c.execute(REAP_CANCELLED, params)
    exhausted = c.execute(REAP_EXHAUSTED, params).fetchall()
    c.executemany(
        FAIL_EXHAUSTED,
        [(now, error_json(attempts_lost_error(job_id, n)), job_id) for job_id, n in exhausted],
    )
    c.execute(REAP_REQUEUE, params)


def take_due(
    c: sqlite3.Connection,
    *,
    worker_id: str,
    task_names: Sequence[str],
    limit: int,
    now: float,
    lease_expires: float,
) -> list[tuple[Any, ...]]:
    """Reap, then take up to ``limit`` due jobs in one statement: their rows as taken
    (``running``, with ``token``), as plain tuples: ``seq``, ``token``, then ``COLUMNS``
    (the order of :class:`~taskbuffer.jobs.Job`'s fields). :func:`claimed_rows` orders them."""
    reap(c, now)
    if limit <= 0 or not task_names:
        return []
    prefix = ordered_id()[:24]  # the clock and 32 random bits; the job's seq follows
    params = (worker_id, now, prefix, lease_expires, now, *task_names, limit)
    cursor = c.cursor()
    cursor.row_factory = None  # plain tuples: sqlite3.Row looks names up slowly
    return cursor.execute(_claim(len(task_names)), params).fetchall()


_SEQ, _PRIORITY, _RUN_AT = 0, 6, 7  # in a row that take_due returns


def claimed_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows :func:`take_due` took, best first (RETURNING gives no order). Not on the
    store's thread: the loop orders them while the claim's commit runs."""
    rows.sort(key=lambda row: (-row[_PRIORITY], row[_RUN_AT], row[_SEQ]))
    return rows


@cache
def _claim(names: int) -> str:
    return CLAIM.format(names=", ".join("?" * names))


OUTCOMES_PER_STATEMENT = 100
"""Outcomes ended by one statement at most (each is 6 parameters; a statement of each size is
prepared once and kept in the connection's statement cache)."""


SEQ_MAX = 2**63 - 1
"""The greatest ``seq`` (a rowid): SQLite keeps no larger integer, and refuses to bind one."""


def token_seq(token: str) -> int:
    """The row a lease token names: a claim makes it from a 24-character prefix and the
    job's ``seq`` in hex (see ``CLAIM``); -1, which names no row, for anything else (a
    forged token may name a number past what SQLite can bind: that names no row either)."""
    try:
        seq = int(token[24:], 16) if len(token) > 24 else -1
    except ValueError:
        return -1
    return seq if seq <= SEQ_MAX else -1


def _finish_rows(
    outcomes: Sequence[JobOutcome], seqs: list[int], now: float
) -> tuple[str, list[tuple[Any, ...]]] | None:
    """The statement and rows that end each claim of a batch that gives none back (a batch of
    successes binds no None and no bytes: see FINISH_SUCCEEDED); ``None`` if one is given back."""
    if all(o.outcome == "succeeded" and o.result is not None for o in outcomes):
        return FINISH_SUCCEEDED, [
            (now, bytearray(o.result), seq, o.job_id, o.token)  # type: ignore[arg-type]
            for o, seq in zip(outcomes, seqs, strict=True)
        ]
    if any(o.outcome == "released" for o in outcomes):
        return None
    return FINISH_ONE, [
        (o.outcome, now, o.result, error_json(o.error), seq, o.job_id, o.token)
        for o, seq in zip(outcomes, seqs, strict=True)
    ]


def _all_ended_at_once(
    c: sqlite3.Connection, outcomes: Sequence[JobOutcome], seqs: list[int], now: float
) -> bool:
    """The busy path: end every claim of a batch that gives none back, each row by its own
    step of one statement; True when each applied, else nothing is changed (a savepoint)."""
    found = _finish_rows(outcomes, seqs, now)
    if found is None:
        return False
    statement, rows = found
    c.execute("SAVEPOINT finish")
    applied = c.executemany(statement, rows).rowcount == len(rows)
    if not applied:
        c.execute("ROLLBACK TO finish")
    c.execute("RELEASE finish")
    return applied


def apply_outcomes(c: sqlite3.Connection, outcomes: Sequence[JobOutcome], now: float) -> list[bool]:
    """End claims (fenced by their tokens); one bool per outcome, True when applied.

    One statement per kind for the whole batch (see ``finish_many``), and one for the audit
    rows of the claims given back (a finished job's row keeps its last attempt)."""
    if len(outcomes) > OUTCOMES_PER_STATEMENT:  # within SQLite's limit of parameters
        step = OUTCOMES_PER_STATEMENT
        chunks = (outcomes[i : i + step] for i in range(0, len(outcomes), step))
        return [ok for chunk in chunks for ok in apply_outcomes(c, chunk, now)]
    seqs = [token_seq(o.token) for o in outcomes]
    if len(set(seqs)) < len(seqs):  # a job twice (a confused caller): one at a time
        return [apply_outcomes(c, [o], now)[0] for o in outcomes]
    if len(outcomes) > 1 and _all_ended_at_once(c, outcomes, seqs, now):
        return [True] * len(outcomes)
    ended: list[Any] = [now]
    released: list[Any] = [now]
    released_seqs = set()
    for o, seq in zip(outcomes, seqs, strict=True):
        if o.outcome == "released":
            released += (seq, o.job_id, o.token)
            released_seqs.add(seq)
        else:
            ended += (seq, o.job_id, o.token, o.outcome, o.result, error_json(o.error))
    applied: set[int] = set()
    if len(ended) > 1:
        applied.update(row[0] for row in c.execute(finish_many(len(ended) // 6), ended))
    if len(released) > 1:
        applied.update(row[0] for row in c.execute(release_many(len(released) // 3), released))
    given_back = [seq for seq in applied if seq in released_seqs]
    if given_back:  # an ended attempt the job's row no longer holds (see ATTEMPTS)
        rows: list[Any] = [now]
        for seq in given_back:
            rows += (seq, "released", None)
        c.execute(end_attempts(len(given_back)), rows)
    return [seq in applied for seq in seqs]
