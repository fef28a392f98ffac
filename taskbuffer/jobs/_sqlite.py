"""``SQLiteJobStore``: the embedded default store, on the standard library's ``sqlite3``.

One file, shared by every process on the host that opens it. The database runs in WAL mode
(readers never block the writer) with ``synchronous=FULL`` (a returned ``enqueue`` survives a
power cut) and a ``busy_timeout``, and every write is one short ``BEGIN IMMEDIATE``
transaction. The blocking calls run on one dedicated thread per store, off the event loop.

Wake-ups: a commit through this store object notifies its subscribers at once; commits of
other processes are noticed by the store's thread, which checks ``PRAGMA data_version`` every
``watch_interval`` seconds while it is idle and someone is subscribed.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from operator import itemgetter
from typing import Any, TypeVar, cast

from ._sqlite_ops import (
    BUSY_TIMEOUT,
    apply_outcomes,
    claimed_rows,
    existing_job,
    insert_jobs,
    take_due,
    token_seq,
    use_wal,
)
from ._sqlite_sql import (
    ATTEMPTS,
    CANCEL_QUEUED,
    CANCEL_RUNNING,
    COLUMNS,
    DROP_UNUSED,
    NEXT_DUE,
    PURGE_ATTEMPTS,
    PURGE_JOBS,
    RECORD_LAST_ATTEMPT,
    RENEW,
    REQUEUE,
    SCHEMA,
)
from ._store import (
    SCHEMA_VERSION,
    JobStore,
    check_schema_version,
    dedupe_conflict,
)
from ._thread import ConnectionThread, settle_from_thread
from ._unreadable import end_unreadable, readable_claims
from ._values import (
    Claim,
    Job,
    JobAttempt,
    JobOutcome,
    JobRequest,
    JobStatus,
    RenewReport,
    Row,
    attempt_from_row,
    job_from_list,
    job_from_row,
    new_claim,
    queued_job,
)

__all__ = ("SQLiteJobStore",)

R = TypeVar("R")


def _no_rows_unless_taken(taken_soon: asyncio.Future[Any], _: object) -> None:
    """A busy cycle's call has ended: if it failed before claiming, nobody else answers the
    wait for its claimed rows (settled in call order, they came first if they came)."""
    if not taken_soon.done():
        taken_soon.set_result(None)


_INPUT, _RESULT = 2, 12  # in COLUMNS (Job's fields)
_ID_AND_TOKEN = itemgetter(2, 1)  # of a row that take_due returned


class SQLiteJobStore(JobStore):
    """Jobs in a SQLite file (see :class:`~taskbuffer.jobs.JobStore` for the options).

    :param path: the database file (created with its schema when missing).
    :param watch_interval: seconds between two checks for other processes' commits while idle.
    """

    poll_interval = 1.0

    def __init__(
        self, path: str | os.PathLike[str], *, watch_interval: float = 0.02, **options: Any
    ):
        super().__init__(**options)
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__qualname__}")
        self._path = os.fspath(path)
        self._watch_interval = watch_interval
        self._thread: ConnectionThread[sqlite3.Connection] | None = None
        self._data_version: int | None = None

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=True
        )
        try:
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            use_wal(connection)
            connection.execute("PRAGMA synchronous=FULL")
            self._write(connection, self._create_schema)
            self._data_version = connection.execute("PRAGMA data_version").fetchone()[0]
        except BaseException:
            connection.close()
            raise
        return connection

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS taskbuffer_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        row = connection.execute(
            "SELECT value FROM taskbuffer_meta WHERE key = 'schema_version'"
        ).fetchone()
        if row is not None:
            found = int(row[0])
            check_schema_version(found, where=repr(self._path))
            if found < SCHEMA_VERSION:  # 1: its trails read the same; two indexes to drop
                for statement in DROP_UNUSED:
                    connection.execute(statement)
                connection.execute(
                    "UPDATE taskbuffer_meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
            return
        for statement in SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        connection.execute(
            "INSERT INTO taskbuffer_meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )

    def _watch(self, connection: sqlite3.Connection) -> None:
        version = connection.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self.notify()

    @staticmethod
    def _write(connection: sqlite3.Connection, function: Callable[[sqlite3.Connection], R]) -> R:
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = function(connection)
            connection.execute("COMMIT")
        except BaseException:
            # A statement (or COMMIT) that fails on the disk (full, I/O error) may have
            # rolled the transaction back already: a ROLLBACK then raises instead of it.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return result

    async def _run(self, function: Callable[[sqlite3.Connection], R], *, write: bool) -> R:
        thread = await self._open_thread()
        if write:
            return await thread.call(lambda connection: self._write(connection, function))
        return await thread.call(function)

    async def _open_thread(self) -> ConnectionThread[sqlite3.Connection]:
        if self._thread is None or not self._thread.alive:
            await self.open()
        assert self._thread is not None
        return self._thread

    async def open(self) -> None:
        """Open the file (creating it and its schema when missing) on the store's thread.

        :raises JobSchemaError: the file's schema is newer than this library.
        """
        if self._thread is not None and self._thread.alive:
            return
        thread = ConnectionThread(
            name=f"taskbuffer-sqlite:{self._path}",
            connect=self._connect,
            disconnect=lambda connection: connection.close(),
            watch=self._watch,
            watching=lambda: self.has_subscribers,
            watch_interval=self._watch_interval,
        )
        try:
            await thread.call(lambda connection: None)
        except BaseException:
            await thread.stop()
            raise
        if self._thread is not None and self._thread.alive:  # a concurrent open() won
            await thread.stop()
            return
        self._thread = thread

    async def close(self) -> None:
        """Close the connection and end the store's thread."""
        thread, self._thread = self._thread, None
        if thread is not None and thread.alive:
            await thread.stop()

    # -- reads ----------------------------------------------------------------------------

    def _claimed(self, row: tuple[Any, ...]) -> Claim:
        """The claim of a row that take_due returned: seq, token, then Job's fields."""
        columns = list(row[2:])
        columns[_INPUT] = self.decode(columns[_INPUT])
        columns[_RESULT] = self.decode(columns[_RESULT])
        return new_claim(job_from_list(columns), row[1])

    def _job(self, row: Row) -> Job:
        return job_from_row(row, input=self.decode(row["input"]), result=self.decode(row["result"]))

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or ``None``."""
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {COLUMNS} FROM taskbuffer_jobs WHERE id = ?", (job_id,)
            ).fetchone(),
            write=False,
        )
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
        query = (
            f"SELECT {COLUMNS} FROM taskbuffer_jobs "
            "WHERE (:status IS NULL OR status = :status) "
            "AND (:task IS NULL OR task_name = :task) "
            "ORDER BY created_at DESC, seq DESC LIMIT :limit OFFSET :offset"
        )
        params = {"status": status, "task": task_name, "limit": limit, "offset": offset}
        rows = await self._run(lambda c: c.execute(query, params).fetchall(), write=False)
        return [self._job(row) for row in rows]

    async def attempts(self, job_id: str) -> list[JobAttempt]:
        """The audit trail of a job, oldest first."""
        rows = await self._run(
            lambda c: c.execute(ATTEMPTS, {"id": job_id}).fetchall(),
            write=False,
        )
        return [attempt_from_row(row) for row in rows]

    async def next_due_at(self, task_names: Sequence[str]) -> float | None:
        """When a claim could next find work (see :meth:`JobStore.next_due_at`)."""
        if not task_names:
            return None
        query = NEXT_DUE.format(names=", ".join("?" * len(task_names)))
        row = await self._run(lambda c: c.execute(query, tuple(task_names)).fetchone(), write=False)
        return None if row[0] is None else float(row[0])

    async def latest_schedule_key(self, prefix: str) -> str | None:
        """The greatest stored ``schedule_key`` starting with ``prefix``."""
        row = await self._run(
            lambda c: c.execute(
                "SELECT MAX(schedule_key) FROM taskbuffer_jobs "
                "WHERE substr(schedule_key, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchone(),
            write=False,
        )
        return None if row is None else row[0]

    # -- writes ---------------------------------------------------------------------------

    async def enqueue_many(self, requests: Sequence[JobRequest], *, now: float) -> list[Job]:
        """Store jobs in one transaction (see :meth:`JobStore.enqueue_many`)."""
        encoded = [self.encode(request.input) for request in requests]
        found = await self._run(lambda c: insert_jobs(c, requests, encoded, now), write=True)
        self.notify()
        created = datetime.fromtimestamp(now, UTC)
        return [
            queued_job(request, row, self.decode(data), created)
            if isinstance(row, str)  # a new job: its columns are the request's
            else self._job(row)
            for request, data, row in zip(requests, encoded, found, strict=True)
        ]

    async def claim(
        self, *, worker_id: str, task_names: Sequence[str], limit: int, now: float
    ) -> list[Claim]:
        """Claim due jobs in one transaction (see :meth:`JobStore.claim`)."""
        _, claims = await self.finish_and_claim(
            (), worker_id=worker_id, task_names=task_names, limit=limit, now=now
        )
        return claims

    async def finish(self, outcomes: Sequence[JobOutcome], *, now: float) -> list[bool]:
        """End claims in one transaction (see :meth:`JobStore.finish`)."""
        applied = await self._run(lambda c: apply_outcomes(c, outcomes, now), write=True)
        self.notify()
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
        lease_expires = now + self.lease
        thread = await self._open_thread()
        loop = asyncio.get_running_loop()
        # The claimed rows reach the loop before COMMIT, which waits for the disk (a fsync)
        # with the GIL released: the loop makes them into jobs meanwhile. They are handed
        # to the worker only once the commit has succeeded.
        taken_soon: asyncio.Future[list[tuple[Any, ...]] | None] = loop.create_future()

        def both(c: sqlite3.Connection) -> list[bool]:
            applied = apply_outcomes(c, outcomes, now)
            taken = take_due(
                c,
                worker_id=worker_id,
                task_names=task_names,
                limit=limit,
                now=now,
                lease_expires=lease_expires,
            )
            settle_from_thread(loop, taken_soon, taken, None)
            return applied

        committed = thread.submit(lambda connection: self._write(connection, both))
        committed.add_done_callback(partial(_no_rows_unless_taken, taken_soon))
        try:
            taken = await taken_soon
            rows = claimed_rows(taken or [])
            claims, unreadable = readable_claims(rows, self._claimed, _ID_AND_TOKEN)
            applied = await committed
        except BaseException:
            committed.cancel()  # (its outcome, should it fail, is nobody's to retrieve)
            raise
        if outcomes:
            self.notify()
        await end_unreadable(self, unreadable, now=now)
        return applied, claims

    async def renew(self, tokens: Sequence[str], *, now: float) -> RenewReport:
        """Extend leases in one transaction (see :meth:`JobStore.renew`)."""
        lease_expires = now + self.lease

        def extend(c: sqlite3.Connection) -> RenewReport:
            lost, cancel = set(), set()
            for token in tokens:
                row = c.execute(RENEW, (lease_expires, token_seq(token), token)).fetchone()
                if row is None:
                    lost.add(token)
                elif row[0]:
                    cancel.add(token)
            return RenewReport(lost=frozenset(lost), cancel_requested=frozenset(cancel))

        return await self._run(extend, write=True)

    async def cancel(self, job_id: str, *, now: float) -> bool:
        """Cancel a job (see :meth:`JobStore.cancel`)."""

        def mark(c: sqlite3.Connection) -> bool:
            queued = c.execute(CANCEL_QUEUED, (now, job_id)).rowcount
            running = c.execute(CANCEL_RUNNING, (job_id,)).rowcount
            return bool(queued or running)

        cancelled = await self._run(mark, write=True)
        if cancelled:
            self.notify()
        return cancelled

    async def retry(self, job_id: str, *, now: float) -> Job:
        """Re-queue a failed or cancelled job (see :meth:`JobStore.retry`)."""

        def requeue(c: sqlite3.Connection) -> sqlite3.Row:
            row = c.execute(
                "SELECT status, dedupe_key FROM taskbuffer_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id!r}")
            if row[0] not in ("failed", "cancelled"):
                raise ValueError(
                    f"only a failed or cancelled job can be retried; job {job_id!r} is {row[0]}"
                )
            live = existing_job(c, JobRequest(task_name="", dedupe_key=row[1]))
            if live is not None:
                raise ValueError(dedupe_conflict(job_id, live["id"], live["status"], row[1]))
            c.execute(RECORD_LAST_ATTEMPT, {"id": job_id})
            c.execute(REQUEUE, {"now": now, "id": job_id})
            return cast(
                "sqlite3.Row",
                c.execute(
                    f"SELECT {COLUMNS} FROM taskbuffer_jobs WHERE id = ?", (job_id,)
                ).fetchone(),
            )

        row = await self._run(requeue, write=True)
        self.notify()
        return self._job(row)

    async def purge(self, *, now: float) -> int:
        """Delete jobs finished more than ``retention`` seconds ago, with their attempts."""
        retention = self.retention
        if retention is None:
            return 0

        def delete(c: sqlite3.Connection) -> int:
            cutoff = now - retention
            c.execute(PURGE_ATTEMPTS, {"cutoff": cutoff})
            return c.execute(PURGE_JOBS, {"cutoff": cutoff}).rowcount

        return await self._run(delete, write=True)

    def __repr__(self) -> str:
        return f"<SQLiteJobStore path={self._path!r} lease={self.lease:g}>"
