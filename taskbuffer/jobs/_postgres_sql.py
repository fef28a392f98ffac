"""The SQL of the PostgreSQL job store: its schema and one statement per operation.

Kept apart from the store's Python so each reads on its own. The hot operations (enqueue,
claim, finish, renew) are each ONE statement sent outside an explicit transaction: PostgreSQL
runs a single statement as its own transaction, so each costs one round trip and one commit,
however many jobs it carries. Data-modifying CTEs let one statement change jobs and their
audit trail together; ``pg_notify`` inside a statement is delivered when it commits.

Instants are epoch seconds (``float8``) passed in by the caller, never the server's clock
(see :class:`~taskbuffer.jobs.JobStore`). The columns are those of the SQLite store, with
``claims`` added: the number of the job's attempts so far, released ones included, which
names the open attempt in ``taskbuffer_job_attempts``.
"""

from __future__ import annotations

__all__ = (
    "ATTEMPTS",
    "CANCEL",
    "CHANNEL",
    "CLAIM",
    "ENQUEUE",
    "EXISTING",
    "FINISH",
    "GET",
    "LATEST_SCHEDULE_KEY",
    "LIST",
    "LOCK_SCHEMA",
    "META",
    "NEXT_DUE",
    "PURGE",
    "REAP",
    "REAP_CANDIDATES",
    "RENEW",
    "RETRY",
    "SCHEMA",
    "SET_VERSION",
    "VERSION",
)

CHANNEL = "taskbuffer_jobs"
"""The LISTEN/NOTIFY channel; the payload is the notifying store's id."""

LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(hashtext('taskbuffer_jobs_schema'))"
META = "CREATE TABLE IF NOT EXISTS taskbuffer_meta (key text PRIMARY KEY, value text NOT NULL)"
VERSION = "SELECT value FROM taskbuffer_meta WHERE key = 'schema_version'"
SET_VERSION = """
INSERT INTO taskbuffer_meta (key, value) VALUES ('schema_version', $1)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS taskbuffer_jobs (
    seq bigserial NOT NULL UNIQUE,
    id text PRIMARY KEY,
    task_name text NOT NULL,
    input bytea,
    status text NOT NULL,
    priority integer NOT NULL,
    run_at float8 NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    claims integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    created_at float8 NOT NULL,
    started_at float8,
    finished_at float8,
    worker_id text,
    result bytea,
    error text,
    dedupe_key text,
    schedule_key text UNIQUE,
    token text,
    lease_expires float8,
    cancel_requested boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_due
    ON taskbuffer_jobs (priority DESC, run_at, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_lease
    ON taskbuffer_jobs (lease_expires) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_token
    ON taskbuffer_jobs (token) WHERE token IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS taskbuffer_jobs_dedupe
    ON taskbuffer_jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_finished
    ON taskbuffer_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_created ON taskbuffer_jobs (created_at, seq);
CREATE TABLE IF NOT EXISTS taskbuffer_job_attempts (
    job_id text NOT NULL,
    attempt integer NOT NULL,
    worker_id text NOT NULL,
    started_at float8 NOT NULL,
    finished_at float8,
    outcome text,
    error text,
    PRIMARY KEY (job_id, attempt)
);
"""

COLUMNS = (
    "id, task_name, input, status, priority, run_at, attempts, max_attempts, created_at, "
    "started_at, finished_at, worker_id, result, error, dedupe_key, schedule_key"
)

# Conflicts (a retried statement's own ids, a stored schedule_key, an active dedupe_key) are
# skipped; the store then looks the existing jobs up with EXISTING.
ENQUEUE = """
WITH r AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::float8[],
                         $6::int[], $7::text[], $8::text[])
        WITH ORDINALITY AS r(id, task_name, input, priority, run_at, max_attempts,
                             dedupe_key, schedule_key, ord)
), ins AS (
    INSERT INTO taskbuffer_jobs (id, task_name, input, status, priority, run_at,
                                 max_attempts, created_at, dedupe_key, schedule_key)
    SELECT id, task_name, input, 'queued', priority, run_at, max_attempts, $9, dedupe_key,
           schedule_key
    FROM r ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id, (SELECT pg_notify($10, $11)) FROM ins
"""

EXISTING = f"""
SELECT {COLUMNS} FROM taskbuffer_jobs
WHERE id = ANY($1::text[]) OR schedule_key = ANY($2::text[])
   OR (dedupe_key = ANY($3::text[]) AND status IN ('queued', 'running'))
"""

REAP_CANDIDATES = """
SELECT id, token, attempts, max_attempts, cancel_requested FROM taskbuffer_jobs
WHERE status = 'running' AND lease_expires <= $1
ORDER BY lease_expires LIMIT 1000
"""

# The new status and error of each expired job are decided by the store ($2-$4); the token
# and the expiry are checked again under the row lock, so two reapers cannot both apply.
REAP = """
WITH r AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
        AS r(id, token, status, error)
), upd AS (
    UPDATE taskbuffer_jobs j
    SET status = r.status, error = coalesce(r.error, j.error),
        finished_at = CASE WHEN r.status = 'queued' THEN j.finished_at ELSE $1::float8 END,
        token = NULL, lease_expires = NULL,
        cancel_requested = r.status = 'queued' AND j.cancel_requested
    FROM r
    WHERE j.id = r.id AND j.token = r.token AND j.status = 'running' AND j.lease_expires <= $1
    RETURNING j.id, j.claims
), ended AS (
    UPDATE taskbuffer_job_attempts a SET outcome = 'lost', finished_at = $1
    FROM upd WHERE a.job_id = upd.id AND a.attempt = upd.claims
)
SELECT count(*) FROM upd
"""

CLAIM = f"""
WITH picked AS (
    SELECT id FROM taskbuffer_jobs
    WHERE status = 'queued' AND run_at <= $1 AND task_name = ANY($2::text[])
    ORDER BY priority DESC, run_at, seq
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE taskbuffer_jobs j
    SET status = 'running', attempts = j.attempts + 1, claims = j.claims + 1,
        worker_id = $4, started_at = $1, lease_expires = $1 + $5,
        token = replace(gen_random_uuid()::text, '-', '')
    FROM picked WHERE j.id = picked.id
    RETURNING j.seq, j.claims, j.token, {", ".join(f"j.{c.strip()}" for c in COLUMNS.split(","))}
), opened AS (
    INSERT INTO taskbuffer_job_attempts (job_id, attempt, worker_id, started_at)
    SELECT id, claims, worker_id, started_at FROM claimed
)
SELECT * FROM claimed ORDER BY priority DESC, run_at, seq
"""

# One row per outcome, in order: applied now, or applied already by an earlier try of this
# same statement whose answer the connection lost (the token stays on a finished job).
FINISH = """
WITH o AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])
        WITH ORDINALITY AS o(id, token, outcome, result, error, ord)
), upd AS (
    UPDATE taskbuffer_jobs j
    SET status = CASE WHEN o.outcome = 'released' THEN 'queued' ELSE o.outcome END,
        attempts = CASE WHEN o.outcome = 'released' THEN j.attempts - 1 ELSE j.attempts END,
        finished_at = CASE WHEN o.outcome = 'released' THEN NULL ELSE $6::float8 END,
        result = CASE WHEN o.outcome = 'released' THEN j.result ELSE o.result END,
        error = CASE WHEN o.outcome = 'released' THEN j.error ELSE o.error END,
        lease_expires = NULL,
        cancel_requested = o.outcome = 'released' AND j.cancel_requested
    FROM o WHERE j.id = o.id AND j.token = o.token AND j.status = 'running'
    RETURNING j.id, j.claims, o.outcome, o.error
), ended AS (
    UPDATE taskbuffer_job_attempts a
    SET outcome = upd.outcome, finished_at = $6, error = upd.error
    FROM upd WHERE a.job_id = upd.id AND a.attempt = upd.claims
)
SELECT EXISTS (SELECT 1 FROM upd WHERE upd.id = o.id)
       OR (j.token = o.token
           AND j.status = CASE WHEN o.outcome = 'released' THEN 'queued' ELSE o.outcome END),
       (SELECT pg_notify($7, $8))
FROM o LEFT JOIN taskbuffer_jobs j ON j.id = o.id
ORDER BY o.ord
"""

RENEW = """
UPDATE taskbuffer_jobs SET lease_expires = $2
WHERE token = ANY($1::text[]) AND status = 'running'
RETURNING token, cancel_requested
"""

CANCEL = """
WITH queued AS (
    UPDATE taskbuffer_jobs
    SET status = 'cancelled', finished_at = $2, lease_expires = NULL, cancel_requested = false
    WHERE id = $1 AND status = 'queued'
    RETURNING id
), running AS (
    UPDATE taskbuffer_jobs SET cancel_requested = true
    WHERE id = $1 AND status = 'running'
    RETURNING id
)
SELECT id, (SELECT pg_notify($3, $4)) FROM queued UNION ALL SELECT id, NULL FROM running
"""

RETRY = f"""
UPDATE taskbuffer_jobs
SET status = 'queued', run_at = $2, attempts = 0, result = NULL, error = NULL,
    finished_at = NULL, token = NULL, lease_expires = NULL, cancel_requested = false
WHERE id = $1 AND status IN ('failed', 'cancelled')
RETURNING {COLUMNS}, (SELECT pg_notify($3, $4))
"""

GET = f"SELECT {COLUMNS} FROM taskbuffer_jobs WHERE id = $1"

LIST = f"""
SELECT {COLUMNS} FROM taskbuffer_jobs
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR task_name = $2)
ORDER BY created_at DESC, seq DESC
LIMIT $3 OFFSET $4
"""

ATTEMPTS = """
SELECT job_id, attempt, worker_id, started_at, finished_at, outcome, error
FROM taskbuffer_job_attempts WHERE job_id = $1 ORDER BY attempt
"""

NEXT_DUE = """
SELECT min(CASE status WHEN 'queued' THEN run_at ELSE lease_expires END)
FROM taskbuffer_jobs
WHERE status IN ('queued', 'running') AND task_name = ANY($1::text[])
"""

# ``starts_with`` on the plain column, then the C collation for ordinal order.
LATEST_SCHEDULE_KEY = """
SELECT max(schedule_key COLLATE "C") FROM taskbuffer_jobs
WHERE schedule_key IS NOT NULL AND starts_with(schedule_key, $1)
"""

PURGE = """
WITH old AS (
    DELETE FROM taskbuffer_jobs WHERE finished_at IS NOT NULL AND finished_at < $1
    RETURNING id
), trail AS (
    DELETE FROM taskbuffer_job_attempts a USING old WHERE a.job_id = old.id
)
SELECT count(*) FROM old
"""
