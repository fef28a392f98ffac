"""``PostgresJobStore``: durable jobs shared by processes on many hosts (``taskbuffer[postgres]``).

Built on asyncpg (the faster of asyncpg and psycopg 3 on this store's statements; the README
gives the figures). Each hot operation is one statement and one commit for a whole batch
(see :mod:`taskbuffer.jobs._postgres_sql`): workers claim with ``FOR UPDATE SKIP LOCKED``, so a
claim never waits on another worker's; finishes and renewals carry many jobs at once; every
write about a claim presents its lease token.

Wake-ups: a commit that enqueues, finishes, cancels or retries jobs sends a ``NOTIFY`` on the
``taskbuffer_jobs`` channel; every store LISTENs on one connection of its own and passes other
stores' notifications to its subscribers, so an idle worker picks a job up a millisecond or
two after it is committed. Polling (:attr:`poll_interval`) is only the fallback: it shortens
while the listening connection is down.

Reconnection: a statement that fails because the server went away (stopped, restarted,
crashed, network cut) is retried on a fresh connection with backoff until ``reconnect_timeout``
passes, and the first failure and the recovery are logged. Retrying is safe: job ids are
chosen here (a repeated enqueue finds its own rows) and a finish that already committed reports
itself applied. A worker therefore keeps its in-flight runs while the server is away and
reports them when it is back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

try:
    import asyncpg
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "taskbuffer.jobs.postgres needs asyncpg; install it with: "
        "pip install 'taskbuffer[postgres]'"
    ) from error

from .._validation import check_seconds, safe_repr
from . import _postgres_sql as sql
from ._postgres_link import Connection, PostgresLink, asyncpg_dsn, shown_dsn
from ._postgres_ops import applied_outcomes, finish_and_claim_rows, refresh_statistics, token_prefix
from ._store import SCHEMA_VERSION, JobStore, attempts_lost_error, check_schema_version
from ._unreadable import end_unreadable, readable_claims
from ._values import (
    Claim,
    Job,
    JobAttempt,
    JobOutcome,
    JobRequest,
    JobStatus,
    RenewReport,
    attempt_from_row,
    error_json,
    job_from_row,
    ordered_id,
    queued_job,
)

__all__ = ("PostgresJobStore",)

POLL_LISTENING = 5.0
INT64_MAX = 2**63 - 1  # the greatest LIMIT
POLL_NOT_LISTENING = 0.5
ENQUEUE_ROUNDS = 3
ANALYZE_BATCH = 500  # an enqueue_many this large may refresh the table's statistics
_ID, _COUNT = "@@job-id@@", 97531
# The error of a job whose every attempt was lost, as JSON with a stand-in for its id and
# attempt count; the claim statement puts the real ones in.
_LOST_TEMPLATES = (
    error_json(attempts_lost_error(_ID, 1)),
    error_json(attempts_lost_error(_ID, _COUNT)),
    _ID,
    str(_COUNT),
)  # a request whose conflicting job finishes meanwhile is inserted again
_ID_AND_TOKEN = itemgetter("id", "token")  # of a claimed row


class PostgresJobStore(JobStore):
    """Jobs in PostgreSQL (see :class:`~taskbuffer.jobs.JobStore` for the shared options).

    :param dsn_or_pool: a ``postgresql://`` URL (the store makes and closes its own pool) or an
        ``asyncpg.Pool`` (used as it is and left open; the store holds one of its connections
        for LISTEN).
    :param reconnect_timeout: seconds an operation keeps retrying while the server is away
        (``None``: until it is back). Only once the store has opened: a first :meth:`open`
        that cannot connect fails at once.
    """

    poll_interval = POLL_NOT_LISTENING

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool[asyncpg.Record],
        *,
        reconnect_timeout: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        dsn: str | None = None
        pool: asyncpg.Pool[asyncpg.Record] | None = None
        if isinstance(dsn_or_pool, str):
            dsn = asyncpg_dsn(dsn_or_pool)
        elif isinstance(dsn_or_pool, asyncpg.Pool):
            pool = dsn_or_pool
        else:
            raise TypeError(
                f"dsn_or_pool must be a postgresql:// URL or an asyncpg.Pool, not "
                f"{safe_repr(dsn_or_pool)}"
            )
        self._dsn = dsn
        self._reconnect_timeout = check_seconds(
            "reconnect_timeout", reconnect_timeout, none=True, infinite=True
        )
        self._id = uuid.uuid4().hex  # the payload of our NOTIFYs, to skip our own
        self._link = PostgresLink(
            dsn=dsn,
            pool=pool,
            channel=sql.CHANNEL,
            reconnect_timeout=check_seconds(
                "reconnect_timeout", reconnect_timeout, none=True, infinite=True
            ),
            prepare=self._create_schema,
            on_notify=self._on_notification,
            on_listening=self._on_listening,
            name=self._where,
        )

    # -- connection -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the schema when missing (or check its version) and LISTEN.

        :raises JobSchemaError: the database's schema is newer than this library.
        """
        await self._link.open()

    async def close(self) -> None:
        """Stop listening and close the store's own pool (a given pool stays open)."""
        await self._link.close()

    async def _create_schema(self, connection: Connection) -> None:
        await connection.execute(sql.LOCK_SCHEMA)  # concurrent first opens take turns
        await connection.execute(sql.META)
        found = await connection.fetchval(sql.VERSION)
        if found is not None:
            check_schema_version(int(found), where=self._where())
        # Version 1 had two indexes more; 1 and 2 indexed the creation instants of running jobs
        # too; 2 wrote an audit row for every attempt, which 3 reads the same (a row numbered
        # as the job's latest attempt hides the one the job holds). 1's first layout opened an
        # attempt's row as its claim began: a running job's open row is deleted (its own row
        # holds that attempt), or it would hide how the attempt ends.
        if found is None or int(found) < SCHEMA_VERSION:
            if found is not None:
                await connection.execute(sql.DROP_UNUSED)
            await connection.execute(sql.SCHEMA)
            await connection.execute(sql.SET_VERSION, str(SCHEMA_VERSION))

    def _where(self) -> str:
        return shown_dsn(self._dsn)

    def _on_notification(self, payload: str) -> None:
        if payload != self._id:  # our own commits notified our subscribers already
            self.notify()

    def _on_listening(self, listening: bool) -> None:
        self.poll_interval = POLL_LISTENING if listening else POLL_NOT_LISTENING
        if listening:
            self.notify()  # whatever was committed while we were not listening

    # -- writes ---------------------------------------------------------------------------

    async def enqueue_many(self, requests: Sequence[JobRequest], *, now: float) -> list[Job]:
        """Store jobs in one statement (see :meth:`JobStore.enqueue_many`)."""
        # Encoded (so a bad input raises) and named before anything is written: a try
        # repeated after a lost connection finds the rows of a first try that committed.
        encoded = [self.encode(request.input) for request in requests]
        ids = [ordered_id() for _ in requests]
        if not requests:
            return []

        async def insert(connection: Connection) -> list[Job]:
            jobs: list[Job | None] = [None] * len(requests)
            for _ in range(ENQUEUE_ROUNDS):
                missing = [i for i, job in enumerate(jobs) if job is None]
                if not missing:
                    break
                await self._insert(connection, requests, ids, encoded, missing, jobs, now)
            if None in jobs:  # pragma: no cover - needs a job to finish between two statements
                raise RuntimeError("enqueue kept meeting jobs that finished meanwhile")
            return [job for job in jobs if job is not None]

        jobs = await self._link.run(insert)
        if len(requests) >= ANALYZE_BATCH:
            await self._link.run(refresh_statistics(len(requests)))
        return jobs

    async def _insert(
        self,
        connection: Connection,
        requests: Sequence[JobRequest],
        ids: list[str],
        encoded: list[bytes],
        indices: list[int],
        jobs: list[Job | None],
        now: float,
    ) -> None:
        """Insert the requests at ``indices`` (their jobs go to ``jobs[i]``); one that met a
        stored job (its own id, a dedupe or schedule key) gets that job; one whose job
        finished meanwhile stays ``None``."""
        chosen = [requests[i] for i in indices]
        columns = (
            [ids[i] for i in indices],
            [r.task_name for r in chosen],
            [encoded[i] for i in indices],
            [r.priority for r in chosen],
            [now if r.run_at is None else r.run_at for r in chosen],
            [r.max_attempts for r in chosen],
            [r.dedupe_key for r in chosen],
            [r.schedule_key for r in chosen],
        )
        rows = await connection.fetch(sql.ENQUEUE, *columns, now, sql.CHANNEL, self._id)
        if rows:
            self.notify()
        inserted = {row["id"] for row in rows}
        created = datetime.fromtimestamp(now, UTC)
        skipped = []
        for i in indices:
            if ids[i] in inserted:
                jobs[i] = queued_job(requests[i], ids[i], self.decode(encoded[i]), created)
            else:
                skipped.append((requests[i], ids[i], i))
        if skipped:
            await self._fill_existing(connection, skipped, jobs)

    async def _fill_existing(
        self,
        connection: Connection,
        skipped: list[tuple[JobRequest, str, int]],
        jobs: list[Job | None],
    ) -> None:
        """Put the stored job that each skipped request met in its place in ``jobs``."""
        rows = await connection.fetch(
            sql.EXISTING,
            [job_id for _, job_id, _ in skipped],
            [r.schedule_key for r, _, _ in skipped if r.schedule_key is not None],
            [r.dedupe_key for r, _, _ in skipped if r.dedupe_key is not None],
        )
        by_id = {row["id"]: row for row in rows}
        by_schedule = {row["schedule_key"]: row for row in rows if row["schedule_key"]}
        by_dedupe = {
            row["dedupe_key"]: row
            for row in rows
            if row["dedupe_key"] and row["status"] in ("queued", "running")
        }
        for request, job_id, i in skipped:
            row = (
                by_id.get(job_id)
                or by_schedule.get(request.schedule_key)
                or by_dedupe.get(request.dedupe_key)
            )
            if row is not None:  # else the job it met finished in between: inserted next round
                jobs[i] = self._job(row)

    async def claim(
        self, *, worker_id: str, task_names: Sequence[str], limit: int, now: float
    ) -> list[Claim]:
        """Reap expired leases and claim due jobs, in one statement (see
        :meth:`JobStore.claim`)."""
        args = self._claim_args(worker_id, task_names, limit, now)
        rows = await self._link.run(lambda c: c.fetch(sql.CLAIM, *args, token_prefix()))
        claims, unreadable = readable_claims(rows, self._claimed, _ID_AND_TOKEN)
        await end_unreadable(self, unreadable, now=now)
        return claims

    def _claimed(self, row: asyncpg.Record) -> Claim:
        return Claim(job=self._job(row), token=row["token"])

    def _claim_args(
        self, worker_id: str, task_names: Sequence[str], limit: int, now: float
    ) -> tuple[Any, ...]:
        names, lease = list(task_names), self.lease
        return (now, names, max(limit, 0), worker_id, lease, *_LOST_TEMPLATES)

    def _finish_args(self, outcomes: Sequence[JobOutcome], now: float) -> tuple[Any, ...]:
        return (
            [o.job_id for o in outcomes],
            [o.token for o in outcomes],
            [o.outcome for o in outcomes],
            [o.result for o in outcomes],
            [error_json(o.error) for o in outcomes],
            now,
            sql.CHANNEL,
            self._id,
        )

    async def finish(self, outcomes: Sequence[JobOutcome], *, now: float) -> list[bool]:
        """End claims in one statement (see :meth:`JobStore.finish`)."""
        if not outcomes:
            return []
        applied, _ = await self._finish_and_claim(outcomes, None, now)
        return applied

    async def finish_and_claim(
        self,
        outcomes: Sequence[JobOutcome],
        *,
        worker_id: str,
        task_names: Sequence[str],
        limit: int,
        now: float,
    ) -> tuple[list[bool], list[Claim]]:
        """End claims and claim replacements in ONE transaction (one commit): see
        :meth:`JobStore.finish_and_claim`."""
        claim = self._claim_args(worker_id, task_names, limit, now)
        return await self._finish_and_claim(outcomes, claim, now)

    async def _finish_and_claim(
        self, outcomes: Sequence[JobOutcome], claim: tuple[Any, ...] | None, now: float
    ) -> tuple[list[bool], list[Claim]]:
        finish = self._finish_args(outcomes, now)
        tries = 0

        async def both(connection: Connection) -> tuple[set[tuple[str, str]], list[Any]]:
            nonlocal tries
            tries += 1  # a second try may find its first one committed
            statement = sql.FINISH if tries == 1 else sql.FINISH_AGAIN
            if claim is None:
                return applied_outcomes(await connection.fetch(statement, *finish)), []
            if tries == 1 and outcomes:  # the busy cycle: one statement
                return await finish_and_claim_rows(connection, outcomes, finish, claim)
            async with connection.transaction():
                done = await connection.fetch(statement, *finish) if outcomes else []
                claimed = await connection.fetch(sql.CLAIM, *claim, token_prefix())
                return applied_outcomes(done), claimed

        applied, rows = await self._link.run(both)
        if outcomes:
            self.notify()
        claims, unreadable = readable_claims(rows, self._claimed, _ID_AND_TOKEN)
        await end_unreadable(self, unreadable, now=now)
        return [(o.job_id, o.token) in applied for o in outcomes], claims

    async def renew(self, tokens: Sequence[str], *, now: float) -> RenewReport:
        """Extend leases in one statement (see :meth:`JobStore.renew`)."""
        if not tokens:
            return RenewReport()
        rows = await self._link.run(lambda c: c.fetch(sql.RENEW, list(tokens), now + self.lease))
        held = {row["token"] for row in rows}
        return RenewReport(
            lost=frozenset(token for token in tokens if token not in held),
            cancel_requested=frozenset(row["token"] for row in rows if row["cancel_requested"]),
        )

    async def cancel(self, job_id: str, *, now: float) -> bool:
        """Cancel a job (see :meth:`JobStore.cancel`)."""
        rows = await self._link.run(
            lambda c: c.fetch(sql.CANCEL, job_id, now, sql.CHANNEL, self._id)
        )
        if rows:
            self.notify()
        return bool(rows)

    async def retry(self, job_id: str, *, now: float) -> Job:
        """Re-queue a failed or cancelled job (see :meth:`JobStore.retry`)."""

        async def retry(connection: Connection) -> asyncpg.Record | None:
            try:
                return await connection.fetchrow(sql.RETRY, job_id, now, sql.CHANNEL, self._id)
            except asyncpg.UniqueViolationError:
                raise ValueError(
                    f"job {job_id!r} cannot be retried while another job with its dedupe_key "
                    "is queued or running"
                ) from None

        row = await self._link.run(retry)
        if row is None:
            job = await self.get(job_id)
            if job is None:
                raise KeyError(f"no job with id {job_id!r}")
            raise ValueError(
                f"only a failed or cancelled job can be retried; job {job_id!r} is {job.status}"
            )
        self.notify()
        return self._job(row)

    async def purge(self, *, now: float) -> int:
        """Delete jobs finished more than ``retention`` seconds ago, with their attempts."""
        if self.retention is None:
            return 0
        cutoff = now - self.retention
        count = await self._link.run(lambda c: c.fetchval(sql.PURGE, cutoff))
        return int(count)

    # -- reads ----------------------------------------------------------------------------

    def _job(self, row: asyncpg.Record) -> Job:
        return job_from_row(row, input=self.decode(row["input"]), result=self.decode(row["result"]))

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or ``None``."""
        row = await self._link.run(lambda c: c.fetchrow(sql.GET, job_id))
        return None if row is None else self._job(row)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        task_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first (see :meth:`JobStore.list_jobs`)."""
        others = 0 if status == "running" else min(limit + offset, INT64_MAX)
        rows = await self._link.run(
            lambda c: c.fetch(sql.LIST, status, task_name, limit, offset, others)
        )
        return [self._job(row) for row in rows]

    async def attempts(self, job_id: str) -> list[JobAttempt]:
        """The audit trail of a job, oldest attempt first."""
        rows = await self._link.run(lambda c: c.fetch(sql.ATTEMPTS, job_id))
        return [attempt_from_row(row) for row in rows]

    async def next_due_at(self, task_names: Sequence[str]) -> float | None:
        """When a claim could next find work (see :meth:`JobStore.next_due_at`)."""
        value = await self._link.run(lambda c: c.fetchval(sql.NEXT_DUE, list(task_names)))
        return None if value is None else float(value)

    async def latest_schedule_key(self, prefix: str) -> str | None:
        """The greatest stored ``schedule_key`` starting with ``prefix``."""
        value = await self._link.run(lambda c: c.fetchval(sql.LATEST_SCHEDULE_KEY, prefix))
        return None if value is None else str(value)

    def __repr__(self) -> str:
        state = "open" if self._link.is_open else "closed"
        return f"<PostgresJobStore {self._where()} lease={self.lease:g} {state}>"
