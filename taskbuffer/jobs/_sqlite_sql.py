"""The SQL of the SQLite job store: its schema and the statements of each operation.

Kept apart from the store's Python so each reads on its own. Every write runs inside one
``BEGIN IMMEDIATE`` transaction (taken by the store), so a writer waits for the file's write
lock up front (``busy_timeout``) instead of failing half-way on a lock upgrade.
"""

from __future__ import annotations

__all__ = (
    "ATTEMPTS",
    "CANCEL_QUEUED",
    "CANCEL_RUNNING",
    "CLAIM",
    "COLUMNS",
    "END_ATTEMPT",
    "FAIL_EXHAUSTED",
    "FINISH",
    "INSERT",
    "LIVE_TOKENS",
    "NEXT_DUE",
    "PURGE_ATTEMPTS",
    "PURGE_JOBS",
    "REAP_ATTEMPTS",
    "REAP_CANCELLED",
    "REAP_EXHAUSTED",
    "REAP_REQUEUE",
    "RELEASE",
    "RENEW",
    "REQUEUE",
    "SCHEMA",
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
CREATE UNIQUE INDEX IF NOT EXISTS taskbuffer_jobs_token
    ON taskbuffer_jobs (token) WHERE token IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS taskbuffer_jobs_dedupe
    ON taskbuffer_jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_finished
    ON taskbuffer_jobs (finished_at) WHERE finished_at IS NOT NULL;
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
# prefix begins with the clock, see ordered_id, so tokens stay unique and ordered).
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

# An attempt's row is written once, when it ends (its number: the job's rows so far + 1);
# the attempt under way is read from the job's row (ATTEMPTS).
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

# How many of the tokens (a JSON array) still hold their running job: all of them, and a
# batch of outcomes is applied with one statement per kind.
LIVE_TOKENS = """
SELECT COUNT(*) FROM taskbuffer_jobs
WHERE token IN (SELECT value FROM json_each(?)) AND status = 'running'
"""

END_ATTEMPT = """
INSERT INTO taskbuffer_job_attempts
    (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
SELECT id, (SELECT COUNT(*) + 1 FROM taskbuffer_job_attempts WHERE job_id = taskbuffer_jobs.id),
       worker_id, started_at, ?, ?, ?
FROM taskbuffer_jobs WHERE id = ?
"""

ATTEMPTS = """
SELECT job_id, attempt, worker_id, started_at, finished_at, outcome, error
FROM taskbuffer_job_attempts WHERE job_id = :id
UNION ALL
SELECT id, (SELECT COUNT(*) + 1 FROM taskbuffer_job_attempts WHERE job_id = :id),
       worker_id, started_at, NULL, NULL, NULL
FROM taskbuffer_jobs WHERE id = :id AND status = 'running'
ORDER BY attempt
"""

FINISH = """
UPDATE taskbuffer_jobs
SET status = ?, finished_at = ?, result = ?, error = ?, token = NULL, lease_expires = NULL,
    cancel_requested = 0
WHERE id = ? AND token = ? AND status = 'running'
"""

RELEASE = """
UPDATE taskbuffer_jobs
SET status = 'queued', attempts = attempts - 1, token = NULL, lease_expires = NULL
WHERE id = ? AND token = ? AND status = 'running'
"""

RENEW = """
UPDATE taskbuffer_jobs SET lease_expires = ?
WHERE token = ? AND status = 'running'
RETURNING cancel_requested
"""

INSERT = """
INSERT INTO taskbuffer_jobs (id, task_name, input, status, priority, run_at, max_attempts,
    created_at, dedupe_key, schedule_key)
VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)
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
UPDATE taskbuffer_jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'
"""

CANCEL_RUNNING = """
UPDATE taskbuffer_jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'
"""

REQUEUE = """
UPDATE taskbuffer_jobs
SET status = 'queued', run_at = ?, attempts = 0, result = NULL, error = NULL, finished_at = NULL
WHERE id = ?
"""

PURGE_ATTEMPTS = """
DELETE FROM taskbuffer_job_attempts WHERE job_id IN (
    SELECT id FROM taskbuffer_jobs WHERE finished_at IS NOT NULL AND finished_at < ?
)
"""

PURGE_JOBS = "DELETE FROM taskbuffer_jobs WHERE finished_at IS NOT NULL AND finished_at < ?"
