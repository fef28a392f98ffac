"""The SQL of the SQLite job store: its schema and the statements of each operation.

Kept apart from the store's Python so each reads on its own. Every write runs inside one
``BEGIN IMMEDIATE`` transaction (taken by the store), so a writer waits for the file's write
lock up front (``busy_timeout``) instead of failing half-way on a lock upgrade.
"""

from __future__ import annotations

from functools import cache

__all__ = (
    "ATTEMPTS",
    "CANCEL_QUEUED",
    "CANCEL_RUNNING",
    "CLAIM",
    "COLUMNS",
    "DROP_UNUSED",
    "end_attempts",
    "FAIL_EXHAUSTED",
    "FINISH_ONE",
    "FINISH_SUCCEEDED",
    "INSERT",
    "INSERT_PLAIN",
    "NEXT_DUE",
    "PURGE_ATTEMPTS",
    "PURGE_JOBS",
    "REAP_ATTEMPTS",
    "REAP_CANCELLED",
    "REAP_EXHAUSTED",
    "REAP_REQUEUE",
    "RECORD_LAST_ATTEMPT",
    "RENEW",
    "REQUEUE",
    "SCHEMA",
    "finish_many",
    "release_many",
)


SCHEMA = """
CREATE TABLE IF NOT EXISTS taskbuffer_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS taskbuffer_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    task_name TEXT NOT NULL,
    input BLOB,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    run_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker_id TEXT,
    result BLOB,
    error TEXT,
    dedupe_key TEXT,
    schedule_key TEXT,
    token TEXT,
    lease_expires REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS taskbuffer_jobs_schedule
    ON taskbuffer_jobs (schedule_key) WHERE schedule_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_due
    ON taskbuffer_jobs (priority DESC, run_at, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_lease
    ON taskbuffer_jobs (lease_expires) WHERE status = 'running';
CREATE UNIQUE INDEX IF NOT EXISTS taskbuffer_jobs_dedupe
    ON taskbuffer_jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_created ON taskbuffer_jobs (created_at, seq);
CREATE TABLE IF NOT EXISTS taskbuffer_job_attempts (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT,
    error TEXT,
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
"""

COLUMNS = (
    "id, task_name, input, status, priority, run_at, attempts, max_attempts, created_at, "
    "started_at, finished_at, worker_id, result, error, dedupe_key, schedule_key"
)

# Takes the best due jobs in one statement; each gets the token ``? || seq`` (the caller's
# prefix begins with the clock, see ordered_id, so tokens stay unique and ordered). A token
# names its row: the statements that a token fences find the row by the seq it ends with
# (see token_seq), so no index of tokens is kept up to date on every claim and finish.
CLAIM = f"""
UPDATE taskbuffer_jobs
SET status = 'running', attempts = attempts + 1, worker_id = ?, started_at = ?,
    token = ? || printf('%08x', seq), lease_expires = ?
WHERE seq IN (
    SELECT seq FROM taskbuffer_jobs
    WHERE status = 'queued' AND run_at <= ? AND task_name IN ({{names}})
    ORDER BY priority DESC, run_at, seq
    LIMIT ?
)
RETURNING seq, token, {COLUMNS}
"""

# A job's latest attempt lives in the job's own row for as long as the row keeps the token of
# the claim that began it (running, or ended by its worker: FINISH leaves the token); ATTEMPTS
# reads it from there. An attempt gets a row of its own (numbered after the job's rows so far)
# only when it ends otherwise (lost, released) or a retry begins the next one: the busy path,
# a claim that succeeds, writes no audit row at all.
REAP_ATTEMPTS = """
INSERT INTO taskbuffer_job_attempts
    (job_id, attempt, worker_id, started_at, finished_at, outcome)
SELECT id, (SELECT COUNT(*) + 1 FROM taskbuffer_job_attempts WHERE job_id = taskbuffer_jobs.id),
       worker_id, started_at, :now, 'lost'
FROM taskbuffer_jobs WHERE status = 'running' AND lease_expires <= :now
"""

REAP_CANCELLED = """
UPDATE taskbuffer_jobs
SET status = 'cancelled', finished_at = :now, token = NULL, lease_expires = NULL,
    cancel_requested = 0
WHERE status = 'running' AND lease_expires <= :now AND cancel_requested = 1
"""

REAP_EXHAUSTED = """
SELECT id, attempts FROM taskbuffer_jobs
WHERE status = 'running' AND lease_expires <= :now AND attempts >= max_attempts
"""

REAP_REQUEUE = """
UPDATE taskbuffer_jobs SET status = 'queued', token = NULL, lease_expires = NULL
WHERE status = 'running' AND lease_expires <= :now
"""


# A batch of claims ends in ONE statement per kind (SQLite pays a fixed cost per statement
# run, more than for a row): the outcomes are a VALUES list of ``count`` rows, ``?1`` is the
# instant. Each applied row is returned (``seq``); a token fences its row as in FINISH.
@cache
def _values(count: int, width: int) -> str:
    rows = (
        "(" + ", ".join(f"?{2 + row * width + column}" for column in range(width)) + ")"
        for row in range(count)
    )
    return ", ".join(rows)


# Each row of ``o`` names a job by seq, id and token, and must find it running.
_FENCED = """FROM o
WHERE taskbuffer_jobs.seq = o.seq AND taskbuffer_jobs.id = o.id
  AND taskbuffer_jobs.token = o.token AND taskbuffer_jobs.status = 'running'
RETURNING taskbuffer_jobs.seq
"""


@cache
def finish_many(count: int) -> str:
    """End ``count`` claims: each row of parameters is (seq, id, token, outcome, result, error)."""
    return f"""
WITH o(seq, id, token, outcome, result, error) AS (VALUES {_values(count, 6)})
UPDATE taskbuffer_jobs
SET status = o.outcome, finished_at = ?1, result = o.result, error = o.error,
    lease_expires = NULL, cancel_requested = 0
{_FENCED}"""


# One claim ended, fenced as in finish_many: the busy path runs it through executemany (one
# prepared statement stepped per row costs less than joining a VALUES list), under a
# savepoint so that a batch with an outcome fenced out goes back to finish_many, which says
# which ones applied.
FINISH_ONE = """
UPDATE taskbuffer_jobs
SET status = ?, finished_at = ?, result = ?, error = ?, lease_expires = NULL,
    cancel_requested = 0
WHERE seq = ? AND id = ? AND token = ? AND status = 'running'
"""


# FINISH_ONE for a batch in which every job succeeded, with no parameter that is None or
# bytes (the result goes as a bytearray): the sqlite3 module binds other types through its
# adapter lookup, which costs more than the rest of binding a row (two failed attribute
# lookups, each formatting an AttributeError).
FINISH_SUCCEEDED = """
UPDATE taskbuffer_jobs
SET status = 'succeeded', finished_at = ?, result = ?, error = NULL, lease_expires = NULL,
    cancel_requested = 0
WHERE seq = ? AND id = ? AND token = ? AND status = 'running'
"""


@cache
def release_many(count: int) -> str:
    """Give ``count`` claims back to the queue: each row is (seq, id, token); ``?1`` is the
    instant. A job whose cancel was asked while it ran ends ``cancelled`` instead: given
    back, it would run again on another worker until its first renewal."""
    return f"""
WITH o(seq, id, token) AS (VALUES {_values(count, 3)})
UPDATE taskbuffer_jobs
SET status = CASE cancel_requested WHEN 1 THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE cancel_requested WHEN 1 THEN ?1 ELSE finished_at END,
    attempts = attempts - 1, token = NULL, lease_expires = NULL, cancel_requested = 0
{_FENCED}"""


@cache
def end_attempts(count: int) -> str:
    """The audit rows of ``count`` claims that ended and gave up their token: each row of
    parameters is (seq, outcome, error)."""
    return f"""
WITH o(seq, outcome, error) AS (VALUES {_values(count, 3)})
INSERT INTO taskbuffer_job_attempts
    (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
SELECT j.id, (SELECT COUNT(*) + 1 FROM taskbuffer_job_attempts a WHERE a.job_id = j.id),
       j.worker_id, j.started_at, ?1, o.outcome, o.error
FROM o JOIN taskbuffer_jobs j ON j.seq = o.seq
"""


ATTEMPTS = """
SELECT job_id, attempt, worker_id, started_at, finished_at, outcome, error
FROM taskbuffer_job_attempts WHERE job_id = :id
UNION ALL
SELECT id, (SELECT COUNT(*) + 1 FROM taskbuffer_job_attempts WHERE job_id = :id),
       worker_id, started_at,
       CASE status WHEN 'running' THEN NULL ELSE finished_at END,
       CASE status WHEN 'running' THEN NULL ELSE status END,
       CASE status WHEN 'running' THEN NULL ELSE error END
FROM taskbuffer_jobs WHERE id = :id AND token IS NOT NULL
ORDER BY attempt
"""

RENEW = """
UPDATE taskbuffer_jobs SET lease_expires = ?
WHERE seq = ? AND token = ? AND status = 'running'
RETURNING cancel_requested
"""

INSERT = """
INSERT INTO taskbuffer_jobs (id, task_name, input, status, priority, run_at, max_attempts,
    created_at, dedupe_key, schedule_key)
VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)
"""

# INSERT for a job without keys, with no parameter that is None or bytes (the input goes as a
# bytearray): see FINISH_SUCCEEDED.
INSERT_PLAIN = """
INSERT INTO taskbuffer_jobs (id, task_name, input, status, priority, run_at, max_attempts,
    created_at)
VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)
"""

NEXT_DUE = """
SELECT MIN(CASE status WHEN 'queued' THEN run_at ELSE lease_expires END)
FROM taskbuffer_jobs
WHERE status IN ('queued', 'running') AND task_name IN ({names})
"""

FAIL_EXHAUSTED = """
UPDATE taskbuffer_jobs
SET status = 'failed', finished_at = ?, error = ?, token = NULL, lease_expires = NULL,
    cancel_requested = 0
WHERE id = ?
"""

CANCEL_QUEUED = """
UPDATE taskbuffer_jobs SET status = 'cancelled', finished_at = ?, cancel_requested = 0
WHERE id = ? AND status = 'queued'
"""

CANCEL_RUNNING = """
UPDATE taskbuffer_jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'
"""

# A retry first gives the ended attempt that the job's row holds a row of its own.
RECORD_LAST_ATTEMPT = """
INSERT INTO taskbuffer_job_attempts
    (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
SELECT id, (SELECT COUNT(*) + 1 FROM taskbuffer_job_attempts WHERE job_id = :id),
       worker_id, started_at, finished_at, status, error
FROM taskbuffer_jobs WHERE id = :id AND token IS NOT NULL AND status != 'running'
"""

REQUEUE = """
UPDATE taskbuffer_jobs
SET status = 'queued', run_at = :now, attempts = 0, result = NULL, error = NULL,
    finished_at = NULL, token = NULL
WHERE id = :id
"""

# Found through the index of creation instants (a job is created before it finishes; by
# another process's clock it may appear a little after, and is purged that much later): an
# index of finish instants would be written by every job's finish for one purge an hour.
PURGE_ATTEMPTS = """
DELETE FROM taskbuffer_job_attempts WHERE job_id IN (
    SELECT id FROM taskbuffer_jobs
    WHERE created_at < :cutoff AND finished_at IS NOT NULL AND finished_at < :cutoff
)
"""

PURGE_JOBS = """
DELETE FROM taskbuffer_jobs
WHERE created_at < :cutoff AND finished_at IS NOT NULL AND finished_at < :cutoff
"""

# Indexes of schema version 1 that nothing reads any more (each cost a page write per batch
# of claims or finishes): dropped when a store upgrades such a file.
DROP_UNUSED = (
    "DROP INDEX IF EXISTS taskbuffer_jobs_token",
    "DROP INDEX IF EXISTS taskbuffer_jobs_finished",
)
