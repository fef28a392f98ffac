"""The SQL of the PostgreSQL job store: its schema and one statement per operation.

Kept apart from the store's Python so each reads on its own. The hot operations (enqueue,
claim, finish, renew) are each ONE statement sent outside an explicit transaction: PostgreSQL
runs a single statement as its own transaction, so each costs one round trip and one commit,
however many jobs it carries. Data-modifying CTEs let one statement change jobs and their
audit trail together; ``pg_notify`` inside a statement is delivered when it commits.

Instants are epoch seconds (``float8``) passed in by the caller, never the server's clock
(see :class:`~taskbuffer.jobs.JobStore`). The columns are those of the SQLite store, with
``claims`` added: the number of the job's attempts so far, released ones included, which
numbers the latest attempt. As in the SQLite store, that attempt lives in the job's own row
while the row holds its claim's token (running, or ended by its worker: a finish leaves the
token) and no row of ``taskbuffer_job_attempts`` has its number: an attempt gets a row of its
own only when it ends otherwise (``released``, reaped ``lost``) or a retry begins the next
one. The busy path, a claim that succeeds, writes no audit row at all.
"""

from __future__ import annotations

import re

__all__ = (
    "ANALYZE",
    "ANALYZED_ROWS",
    "ATTEMPTS",
    "BUSY",
    "CANCEL",
    "CHANNEL",
    "CLAIM",
    "DROP_UNUSED",
    "ENQUEUE",
    "EXISTING",
    "FINISH",
    "FINISH_AGAIN",
    "FINISH_AND_CLAIM",
    "GET",
    "LATEST_SCHEDULE_KEY",
    "LIST",
    "LOCK_SCHEMA",
    "META",
    "NEXT_DUE",
    "PURGE",
    "RENEW",
    "RETRY",
    "SCHEMA",
    "SET_VERSION",
    "VERSION",
)

CHANNEL = "taskbuffer_jobs"
"""The LISTEN/NOTIFY channel; the payload is the notifying store's id."""

# When a store upgrades the database (then SCHEMA makes what is missing): drop version 1's two
# unused indexes, the index of creation instants (running jobs too), version 1's open rows.
DROP_UNUSED = """DROP INDEX IF EXISTS taskbuffer_jobs_token, taskbuffer_jobs_finished,
taskbuffer_jobs_created; DELETE FROM taskbuffer_job_attempts a USING taskbuffer_jobs j
WHERE a.outcome IS NULL AND (j.id, j.claims, j.status) = (a.job_id, a.attempt, 'running')"""

LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(hashtext('taskbuffer_jobs_schema'))"
META = "CREATE TABLE IF NOT EXISTS taskbuffer_meta (key text PRIMARY KEY, value text NOT NULL)"
VERSION = "SELECT value FROM taskbuffer_meta WHERE key = 'schema_version'"
SET_VERSION = """
INSERT INTO taskbuffer_meta (key, value) VALUES ('schema_version', $1)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS taskbuffer_jobs (
    seq bigserial NOT NULL,
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
    schedule_key text,
    token text,
    lease_expires float8,
    cancel_requested boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_due
    ON taskbuffer_jobs (priority DESC, run_at, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_lease
    ON taskbuffer_jobs (lease_expires) WHERE status = 'running';
CREATE UNIQUE INDEX IF NOT EXISTS taskbuffer_jobs_schedule
    ON taskbuffer_jobs (schedule_key) WHERE schedule_key IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS taskbuffer_jobs_dedupe
    ON taskbuffer_jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS taskbuffer_jobs_created
    ON taskbuffer_jobs (created_at, seq) WHERE status <> 'running';
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

# Reaping and claiming in one statement. Every running job whose lease ran out (any task)
# is ``expired``: its open attempt ends ``lost``, and its fate is decided as the ABC says. The
# due jobs are the queued ones and the expired ones fated ``queued`` (so a reaped job is
# claimed in this same call, as if reaped first); ``picked`` takes the best of them, which
# ``claimed`` takes over; the other expired jobs meet their fate in ``reaped``. No row is
# updated twice. The error of a job whose attempts were all lost comes from the store's
# templates ($6 for one attempt, $7 for more; $8 stands for the id, $9 for the count). A
# claim's token is $10 (fresh for each statement) followed by the job's seq, unique to it.
_CLAIM_CTES = f"""
expired AS (
    SELECT id, priority, run_at, seq, task_name, attempts, claims, worker_id, started_at,
           CASE WHEN cancel_requested THEN 'cancelled'
                WHEN attempts >= max_attempts THEN 'failed'
                ELSE 'queued' END AS fate
    FROM taskbuffer_jobs
    WHERE status = 'running' AND lease_expires <= $1 {{not_finished}}
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id, priority, run_at, seq FROM taskbuffer_jobs
    WHERE status = 'queued' AND run_at <= $1 AND task_name = ANY ($2::text[])
    ORDER BY priority DESC, run_at, seq
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id FROM (
        SELECT id, priority, run_at, seq FROM due
        UNION ALL
        SELECT id, priority, run_at, seq FROM expired
        WHERE fate = 'queued' AND run_at <= $1 AND task_name = ANY ($2::text[])
    ) AS candidates
    ORDER BY priority DESC, run_at, seq
    LIMIT $3
), lost AS (
    INSERT INTO taskbuffer_job_attempts AS a
        (job_id, attempt, worker_id, started_at, finished_at, outcome)
    SELECT id, claims, worker_id, started_at, $1, 'lost' FROM expired
    ON CONFLICT (job_id, attempt) DO UPDATE SET outcome = 'lost', finished_at = $1
), reaped AS (
    UPDATE taskbuffer_jobs j
    SET status = e.fate, token = NULL, lease_expires = NULL, cancel_requested = false,
        finished_at = CASE WHEN e.fate = 'queued' THEN j.finished_at ELSE $1::float8 END,
        error = CASE WHEN e.fate <> 'failed' THEN j.error
                     WHEN e.attempts = 1 THEN replace($6::text, $8::text, j.id)
                     ELSE replace(replace($7::text, $8::text, j.id), $9::text, e.attempts::text)
                END
    FROM expired e
    WHERE j.id = ANY (ARRAY (SELECT id FROM expired)) AND j.id = e.id
      AND j.id <> ALL (ARRAY (SELECT id FROM picked))
), claimed AS (
    UPDATE taskbuffer_jobs j
    SET status = 'running', attempts = j.attempts + 1, claims = j.claims + 1,
        worker_id = $4, started_at = $1, lease_expires = $1 + $5,
        token = $10::text || to_hex(j.seq)  -- a fixed-width prefix fresh for each statement
    WHERE j.id = ANY (ARRAY (SELECT id FROM picked))  -- the primary key, in any plan
    RETURNING j.seq, j.claims, j.token, {", ".join(f"j.{c.strip()}" for c in COLUMNS.split(","))}
)
"""

CLAIM = (
    "WITH "
    + _CLAIM_CTES.format(not_finished="")
    + "SELECT * FROM claimed ORDER BY priority DESC, run_at, seq"
)

# Ends claims, fenced by their tokens. A job given back whose cancel was asked while it ran
# ends cancelled (given back, it would run again elsewhere until its first renewal). Only a
# release writes an audit row (the next claim takes the row's token); an older library's row
# of the same attempt is completed instead (ON CONFLICT).
_FINISH = """
WITH o AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])
        AS o(id, token, outcome, result, error)
), upd AS (
    UPDATE taskbuffer_jobs j
    SET status = CASE WHEN o.outcome <> 'released' THEN o.outcome
                      WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END,
        attempts = CASE WHEN o.outcome = 'released' THEN j.attempts - 1 ELSE j.attempts END,
        finished_at = CASE WHEN o.outcome <> 'released' OR j.cancel_requested THEN $6::float8
                           END,
        result = CASE WHEN o.outcome = 'released' THEN j.result ELSE o.result END,
        error = CASE WHEN o.outcome = 'released' THEN j.error ELSE o.error END,
        lease_expires = NULL,
        cancel_requested = false
    FROM o
    WHERE j.id = ANY ($1::text[]) AND j.id = o.id AND j.token = o.token
      AND j.status = 'running'
    RETURNING j.id, j.claims, j.worker_id, j.started_at, o.token, o.outcome, o.error
), ended AS (
    INSERT INTO taskbuffer_job_attempts AS a
        (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, claims, worker_id, started_at, $6, outcome, error FROM upd
    WHERE outcome = 'released'  -- other outcomes stay in the job's row (with its token)
    ON CONFLICT (job_id, attempt)
        DO UPDATE SET outcome = EXCLUDED.outcome, finished_at = $6, error = EXCLUDED.error
)
"""

# The (id, token) of the outcomes applied (the token stays on a finished job, for FINISH_AGAIN).
FINISH = _FINISH + "SELECT id, token, (SELECT pg_notify($7, $8)) FROM upd"

# FINISH then CLAIM in ONE statement (one round trip, one commit; a worker's busy cycle): the
# claim's parameters follow the finish's ($9 on). A job that this statement finishes is not
# reaped by it even if its lease ran out (as when FINISH runs first); a released one is
# claimable from the next claim on. One row per claimed job in claim order (or one with a NULL
# id when none was); the first carries ``done_ids`` and ``done_tokens``, the outcomes applied
# (once: the driver decodes them for every row that carries them).
FINISH_AND_CLAIM = (
    _FINISH
    + ", "
    + re.sub(r"\$(\d+)", lambda m: f"${int(m[1]) + 8}", _CLAIM_CTES).format(
        not_finished="AND NOT EXISTS (SELECT FROM o WHERE o.id = taskbuffer_jobs.id "
        "AND o.token = taskbuffer_jobs.token)"
    )
    + """, done AS (
    SELECT array_agg(id) AS ids, array_agg(token) AS tokens FROM upd
), noted AS (
    SELECT pg_notify($7, $8) FROM upd LIMIT 1
)
SELECT CASE WHEN c.n IS NULL OR c.n = 1 THEN done.ids END AS done_ids,
       CASE WHEN c.n IS NULL OR c.n = 1 THEN done.tokens END AS done_tokens,
       (SELECT count(*) FROM noted) AS noted, c.*
FROM done LEFT JOIN (
    SELECT *, row_number() OVER (ORDER BY priority DESC, run_at, seq) AS n FROM claimed
) AS c ON true
ORDER BY c.n
"""
)

# The busy cycle when no job is given back: FINISH_AND_CLAIM without the audit insert and the
# reaping, whose plan nodes every run initialises. When another job's lease ran out it claims
# nothing and says so (``lapsed``): the store runs CLAIM, which reaps first. It claims the rows
# it locked by ctid. $9 on: task names, limit, worker id, lease, token prefix; $6: the instant.
BUSY = f"""
WITH o AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])
        AS o(id, token, outcome, result, error)
), upd AS (
    UPDATE taskbuffer_jobs j
    SET status = o.outcome, finished_at = $6::float8, result = o.result, error = o.error,
        lease_expires = NULL, cancel_requested = false
    FROM o
    WHERE j.id = ANY ($1::text[]) AND j.id = o.id AND j.token = o.token
      AND j.status = 'running'
    RETURNING j.id, o.token
), lapsed AS (  -- another job's lease ran out: it is reaped first, by CLAIM
    SELECT EXISTS (SELECT FROM taskbuffer_jobs e WHERE e.status = 'running' AND e.lease_expires
        <= $6 AND NOT EXISTS (SELECT FROM o WHERE o.id = e.id AND o.token = e.token)) AS found
), due AS (
    SELECT ctid FROM taskbuffer_jobs
    WHERE status = 'queued' AND run_at <= $6 AND task_name = ANY ($9::text[])
      AND NOT (SELECT found FROM lapsed)
    ORDER BY priority DESC, run_at, seq
    LIMIT $10
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE taskbuffer_jobs j
    SET status = 'running', attempts = j.attempts + 1, claims = j.claims + 1,
        worker_id = $11, started_at = $6, lease_expires = $6 + $12,
        token = $13::text || to_hex(j.seq)
    WHERE j.ctid = ANY (ARRAY (SELECT ctid FROM due))  -- locked: no one moves them
    RETURNING j.seq, j.claims, j.token, {", ".join(f"j.{c.strip()}" for c in COLUMNS.split(","))}
), done AS (
    SELECT array_agg(id) AS ids, array_agg(token) AS tokens FROM upd
), noted AS (
    SELECT pg_notify($7, $8) FROM upd LIMIT 1
)
SELECT CASE WHEN c.n IS NULL OR c.n = 1 THEN done.ids END AS done_ids,
       CASE WHEN c.n IS NULL OR c.n = 1 THEN done.tokens END AS done_tokens,
       (SELECT count(*) FROM noted) AS noted,
       (SELECT found FROM lapsed) AS lapsed,
       c.*
FROM done LEFT JOIN (
    SELECT *, row_number() OVER (ORDER BY priority DESC, run_at, seq) AS n FROM claimed
) AS c ON true
ORDER BY c.n
"""

# The same, run again after a lost connection: an outcome counts as applied also when an
# earlier try of it had committed (the job has its status and still its token).
FINISH_AGAIN = (
    _FINISH
    + """
SELECT o.id, o.token, (SELECT pg_notify($7, $8))
FROM o JOIN taskbuffer_jobs j ON j.id = o.id AND j.id = ANY ($1::text[])
WHERE (o.id, o.token) IN (SELECT id, token FROM upd)
   OR (j.token = o.token
       AND (j.status = CASE WHEN o.outcome = 'released' THEN 'queued' ELSE o.outcome END
            OR (o.outcome = 'released' AND j.status = 'cancelled')))
"""
)

RENEW = """
UPDATE taskbuffer_jobs SET lease_expires = $2
WHERE token = ANY($1::text[]) AND status = 'running'
RETURNING token, cancel_requested
"""

# One UPDATE of the row whatever its state: a statement whose snapshot saw the job queued
# (or running) and then met its row locked by a claim (or a release) committing re-reads the
# row and acts on its new state. Two UPDATEs, one per state, each re-checked only its own
# state after the wait, and both found nothing: the cancel said the job had finished while it
# ran on.
CANCEL = """
WITH asked AS (
    UPDATE taskbuffer_jobs
    SET status = CASE status WHEN 'queued' THEN 'cancelled' ELSE status END,
        finished_at = CASE status WHEN 'queued' THEN $2 ELSE finished_at END,
        lease_expires = CASE status WHEN 'queued' THEN NULL ELSE lease_expires END,
        cancel_requested = status = 'running'
    WHERE id = $1 AND status IN ('queued', 'running')
    RETURNING id, status
)
SELECT id, CASE status WHEN 'cancelled' THEN pg_notify($3, $4) END FROM asked
"""

# A retry first gives the ended attempt that the job's row holds a row of its own (the
# row's state read once it is locked: a retry that waited for another finds it queued).
RETRY = f"""
WITH old AS (
    SELECT id, claims, worker_id, started_at, finished_at, status, error, token
    FROM taskbuffer_jobs WHERE id = $1 AND status IN ('failed', 'cancelled')
    FOR UPDATE
), kept AS (
    INSERT INTO taskbuffer_job_attempts
        (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, claims, worker_id, started_at, finished_at, status, error FROM old
    WHERE token IS NOT NULL
    ON CONFLICT (job_id, attempt) DO NOTHING
)
UPDATE taskbuffer_jobs j
SET status = 'queued', run_at = $2, attempts = 0, result = NULL, error = NULL,
    finished_at = NULL, token = NULL, lease_expires = NULL, cancel_requested = false
FROM old
WHERE j.id = $1 AND j.id = old.id
RETURNING {", ".join(f"j.{c.strip()}" for c in COLUMNS.split(","))}, (SELECT pg_notify($3, $4))
"""

ANALYZED_ROWS = "SELECT reltuples FROM pg_class WHERE oid = 'taskbuffer_jobs'::regclass"
ANALYZE = "ANALYZE taskbuffer_jobs"

GET = f"SELECT {COLUMNS} FROM taskbuffer_jobs WHERE id = $1"

# The index of creation instants leaves running jobs out (a claim writes one entry less): they
# come from the lease index, merged with the first $5 (limit + offset, or 0) others.
LIST = f"""
SELECT {COLUMNS} FROM (
    (SELECT {COLUMNS}, seq FROM taskbuffer_jobs
     WHERE status <> 'running' AND ($1::text IS NULL OR status = $1)
       AND ($2::text IS NULL OR task_name = $2)
     ORDER BY created_at DESC, seq DESC LIMIT $5)
    UNION ALL
    (SELECT {COLUMNS}, seq FROM taskbuffer_jobs
     WHERE status = 'running' AND ($1::text IS NULL OR status = $1)
       AND ($2::text IS NULL OR task_name = $2))
) AS listed
ORDER BY created_at DESC, seq DESC
LIMIT $3 OFFSET $4
"""

# The job's rows, then the attempt its own row holds (see the module's docstring).
ATTEMPTS = """
SELECT job_id, attempt, worker_id, started_at, finished_at, outcome, error
FROM taskbuffer_job_attempts WHERE job_id = $1
UNION ALL
SELECT id, claims, worker_id, started_at,
       CASE status WHEN 'running' THEN NULL ELSE finished_at END,
       CASE status WHEN 'running' THEN NULL ELSE status END,
       CASE status WHEN 'running' THEN NULL ELSE error END
FROM taskbuffer_jobs j
WHERE id = $1 AND token IS NOT NULL AND status <> 'queued'
  AND NOT EXISTS (SELECT FROM taskbuffer_job_attempts a
                  WHERE a.job_id = j.id AND a.attempt = j.claims)
ORDER BY attempt
"""

# Two scans of partial indexes (queued jobs, running jobs), never of the finished ones.
NEXT_DUE = """
SELECT least(
    (SELECT min(run_at) FROM taskbuffer_jobs
     WHERE status = 'queued' AND task_name = ANY ($1::text[])),
    (SELECT min(lease_expires) FROM taskbuffer_jobs
     WHERE status = 'running' AND task_name = ANY ($1::text[]))
)
"""

# ``starts_with`` on the plain column, then the C collation for ordinal order.
LATEST_SCHEDULE_KEY = """
SELECT max(schedule_key COLLATE "C") FROM taskbuffer_jobs
WHERE schedule_key IS NOT NULL AND starts_with(schedule_key, $1)
"""

# Finished jobs are found through the index of creation instants (a job is created before it
# finishes; by another host's clock a little after, and it is purged that much later): an
# index of finish instants (or of tokens) would take an entry on every claim or finish.
PURGE = """
WITH old AS (
    DELETE FROM taskbuffer_jobs
    WHERE created_at < $1 AND finished_at IS NOT NULL AND finished_at < $1
      AND status <> 'running'  -- (never running: the index of creation instants applies)
    RETURNING id
), trail AS (
    DELETE FROM taskbuffer_job_attempts WHERE job_id = ANY (ARRAY (SELECT id FROM old))
)
SELECT count(*) FROM old
"""
