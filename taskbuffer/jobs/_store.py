"""The :class:`JobStore` ABC: what every durable job store does, and its contract.

The interface is batch-oriented: a worker claims up to its free capacity in one call, ends many
claims in one :meth:`~JobStore.finish` and renews many leases in one :meth:`~JobStore.renew`,
so a store on a disk that does a few hundred fsyncs a second can commit once for many jobs.
Every instant is passed in by the caller as epoch seconds (``now``): a store never reads a
clock, so a virtual-time test drives it exactly and every worker sharing a store uses its
own host's wall clock.

Leases and fencing: a claim returns a fresh random *token*; the job is held until
``now + lease``. Every write a worker makes about a claim (``finish``, ``renew``) presents the
token and changes nothing when the token is no longer the job's current one (the lease ran out
and another claim was made, or the job was cancelled and reaped). So a worker that hung past
its lease can never overwrite the work of the worker that took the job over.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from typing import Any, Self

from .._validation import check_seconds, safe_repr
from ._errors import JobSchemaError
from ._values import (
    Claim,
    Job,
    JobAttempt,
    JobError,
    JobOutcome,
    JobRequest,
    JobSerializer,
    JobStatus,
    JSONSerializer,
    RenewReport,
)

__all__ = (
    "CULPRIT_DEPTH",
    "SCHEMA_VERSION",
    "JobStore",
    "attempts_lost_error",
    "check_schema_version",
    "dedupe_conflict",
)

SCHEMA_VERSION = 3
"""The version of the job schema this library writes; a store with a newer one refuses to open.

2: the SQLite store keeps a job's latest attempt in the job's row (a library that knows only
1 would read such a file's trails wrong); both engines drop two indexes that cost an entry on
every claim or finish (tokens, finish instants).
3: the PostgreSQL store keeps a job's latest attempt in the job's row as SQLite does (a library
that knows only 2 would read its trails wrong), and its index of creation instants leaves
running jobs out. A store upgrades a database of version 1 or 2 when it opens it."""


def check_schema_version(found: int, *, where: str) -> None:
    """Raise :class:`~taskbuffer.jobs.JobSchemaError` when ``found`` is newer than ours."""
    if found > SCHEMA_VERSION:
        raise JobSchemaError(
            f"the job store at {where} has schema version {found}, newer than the version "
            f"{SCHEMA_VERSION} this taskbuffer knows; upgrade taskbuffer to use it"
        )


CULPRIT_DEPTH = 32
"""How deep :meth:`JobStore.encode` looks into an input to find the value it cannot encode."""


def _children(value: Any, path: str) -> list[tuple[str, Any, Any]]:
    """The parts of a container as ``(path, what to try encoding, the part)``: a dict's
    values, then its keys (tried as ``{key: None}``: a serializer may refuse a key type
    that it accepts as a value), a list's or tuple's items."""
    if isinstance(value, dict):
        items = [(f"{path}[{safe_repr(key)}]", item, item) for key, item in value.items()]
        keys = [(f"{path} key {safe_repr(key)}", {key: None}, key) for key in value]
        return items + keys
    if isinstance(value, list | tuple):
        return [(f"{path}[{index}]", item, item) for index, item in enumerate(value)]
    return []


def dedupe_conflict(job_id: str, live_id: str, live_status: str, key: str | None) -> str:
    """Why ``retry`` refuses a job while another with its ``dedupe_key`` is live (semantic 6:
    one live job per key)."""
    return (
        f"job {job_id!r} cannot be retried while job {live_id!r} with the same dedupe_key "
        f"{key!r} is {live_status}"
    )


def attempts_lost_error(job_id: str, attempts: int) -> JobError:
    """The error of a job whose every attempt lost its lease (semantic 3)."""
    return JobError(
        type="JobAttemptsLostError",
        message=(
            f"job {job_id!r} was claimed {attempts} time{'s' if attempts != 1 else ''} "
            "without finishing: every attempt lost its lease (the worker died or hung)"
        ),
    )


class JobStore(abc.ABC):
    """Where durable jobs live; the ABC every engine implements and one test suite checks.

    Stores are built without an event loop and may be used from one loop after another. All
    methods are coroutines except :meth:`subscribe` and the helpers. Callers await
    :meth:`open` before any other call (a manager does it on its first job call or on
    ``start()``) and :meth:`close` when done (a manager closes only the stores it built from a
    URL, when it stops); an engine may also open itself lazily.

    :param lease: seconds a claim holds a job without renewal (> 0).
    :param retention: seconds a finished job is kept before :meth:`purge` removes it; ``None``
        keeps every job.
    :param serializer: turns inputs and results into stored data (default JSON).
    """

    poll_interval: float = 5.0
    """Seconds a worker waits at most between two claims when nothing wakes it. Stores that see
    every change (memory) make it large; stores that only see their own process's changes
    poll (or listen) for the others."""

    def __init__(
        self,
        *,
        lease: float = 30.0,
        retention: float | None = 7 * 86400,
        serializer: JobSerializer | None = None,
    ) -> None:
        checked_lease = check_seconds("lease", lease, positive=True)
        assert checked_lease is not None
        self._lease = checked_lease
        self._retention = check_seconds("retention", retention, infinite=True, none=True)
        if serializer is None:
            serializer = JSONSerializer()
        elif not (
            callable(getattr(serializer, "dumps", None))
            and callable(getattr(serializer, "loads", None))
        ):
            raise TypeError(
                "serializer must have dumps(obj) -> bytes | str and loads(data) -> obj "
                f"methods, not {safe_repr(serializer)}"
            )
        self._serializer = serializer
        # Most jobs return None: with the default serializer its bytes are known.
        self._null: bytes | None = b"null" if type(serializer) is JSONSerializer else None
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()

    @property
    def lease(self) -> float:
        """Seconds a claim holds a job without renewal; workers renew every ``lease / 3``."""
        return self._lease

    @property
    def retention(self) -> float | None:
        """Seconds a finished job is kept (``None``: forever)."""
        return self._retention

    @property
    def serializer(self) -> JobSerializer:
        """The serializer of inputs and results."""
        return self._serializer

    # -- serialization helpers (shared by every engine) -----------------------------------

    def encode(self, value: Any, *, what: str = "input") -> bytes:
        """``value`` through the serializer, as bytes.

        :raises TypeError: the serializer cannot encode it; the message names the type of the
            innermost value it refused and where it sits (``input['a'][2]``).
        """
        try:
            data = self._serializer.dumps(value)
        except Exception as error:
            path, culprit = self._culprit(value, what)
            raise TypeError(
                f"job {what} cannot be serialized: {type(culprit).__qualname__} value at "
                f"{path} ({type(error).__name__}: {error})"
            ) from error
        if isinstance(data, str):
            return data.encode()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(
                f"serializer.dumps must return bytes or str, not {type(data).__qualname__}"
            )
        return bytes(data)

    def _culprit(self, value: Any, path: str) -> tuple[str, Any]:
        """The deepest part of ``value`` that the serializer refuses, and its path.

        A loop, not a recursion, that never enters a container it is already inside: a
        cyclic or deeply nested input is reported like any other, never as a
        ``RecursionError`` (the descent stops at :data:`CULPRIT_DEPTH` levels).
        """
        inside: set[int] = set()
        for _ in range(CULPRIT_DEPTH):
            inside.add(id(value))
            for child_path, probe, child in _children(value, path):
                if id(child) in inside:
                    continue  # a cycle: the container holding it is the culprit
                try:
                    self._serializer.dumps(probe)
                except Exception:
                    value, path = child, child_path
                    break
            else:
                break
        return path, value

    def decode(self, data: bytes | None) -> Any:
        """The value stored as ``data`` (``None`` for no data)."""
        if data is None:
            return None
        return self._serializer.loads(bytes(data))

    def succeeded_outcome(self, claim: Claim, result: Any) -> JobOutcome:
        """The outcome of a claim whose run returned ``result``: ``succeeded`` with the encoded
        result, or ``failed`` with the error when the serializer cannot encode it (semantic 1)."""
        if result is None and self._null is not None:
            return JobOutcome(
                job_id=claim.job.id, token=claim.token, outcome="succeeded", result=self._null
            )
        try:
            data = self.encode(result, what="result")
        except TypeError as error:
            return JobOutcome(
                job_id=claim.job.id,
                token=claim.token,
                outcome="failed",
                error=JobError.from_exception(error),
            )
        return JobOutcome(job_id=claim.job.id, token=claim.token, outcome="succeeded", result=data)

    # -- wake-ups ------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever work may have become available or a job changed.

        Called after every commit through this store object that enqueues, finishes, releases,
        cancels or retries jobs, and (for stores that can tell) when another process commits.
        The callback may be called from any thread and must only schedule work
        (``loop.call_soon_threadsafe``). Returns a function that unsubscribes it.
        """
        with self._listeners_lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    @property
    def has_subscribers(self) -> bool:
        """True while some callback is subscribed (stores poll for others only then)."""
        return bool(self._listeners)

    def notify(self) -> None:
        """Call every subscribed callback (engines call it after a commit that matters)."""
        with self._listeners_lock:
            listeners = list(self._listeners)
        for callback in listeners:
            callback()

    # -- the engine's part ----------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create the schema if it is missing and record :data:`SCHEMA_VERSION`.

        Idempotent: a second call on an open store does nothing.

        :raises JobSchemaError: the stored schema is newer than this library (semantic 10).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads. Idempotent; the store may be opened again."""

    async def __aenter__(self) -> Self:
        """``async with store:`` opens it and closes it at the end (a store you pass to a
        manager is yours to close; the manager closes only stores it built from a URL)."""
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def enqueue_many(self, requests: Sequence[JobRequest], *, now: float) -> list[Job]:
        """Store jobs in one transaction and return them, in the order of ``requests``.

        Each input is encoded with :meth:`encode` before anything is written, so an input the
        serializer refuses raises ``TypeError`` and stores nothing (semantic 1). ``run_at``
        ``None`` means ``now``. A request whose ``dedupe_key`` matches a ``queued`` or
        ``running`` job returns that job instead (semantic 6); one whose ``schedule_key`` is
        already stored (whatever its status) returns the stored job (semantic 7). The commit
        is durable when this returns; subscribers are notified.
        """

    async def enqueue(self, request: JobRequest, *, now: float) -> Job:
        """Store one job (see :meth:`enqueue_many`)."""
        return (await self.enqueue_many([request], now=now))[0]

    @abc.abstractmethod
    async def claim(
        self, *, worker_id: str, task_names: Sequence[str], limit: int, now: float
    ) -> list[Claim]:
        """Claim up to ``limit`` due jobs of ``task_names`` for ``worker_id``, in one transaction.

        First, every ``running`` job whose lease ran out (``lease_expires <= now``, any task)
        is reaped: its open attempt ends ``lost``; the job then becomes ``cancelled`` if a
        cancel was requested, ``failed`` with :func:`attempts_lost_error` if it has been
        claimed ``max_attempts`` times, else ``queued`` again (keeping its ``run_at``).
        Then the due jobs (``queued``, ``run_at <= now``) are taken by ``priority`` descending,
        ``run_at`` ascending, then enqueue order; each becomes ``running`` with
        ``attempts + 1``, ``worker_id``, ``started_at = now``, a fresh token and a lease until
        ``now + lease``, and a new open attempt is recorded. Claiming never waits on another
        worker's claim. Returns nothing when ``limit`` is 0.
        """

    @abc.abstractmethod
    async def finish(self, outcomes: Sequence[JobOutcome], *, now: float) -> list[bool]:
        """End claims in one transaction; one bool per outcome, True when it was applied.

        An outcome applies only while its token is the job's current lease token and the job
        is ``running`` (fencing: False otherwise, and nothing changes). ``succeeded``,
        ``failed`` and ``cancelled`` finish the job (``finished_at = now``, result or error
        stored) and end the attempt with that outcome. ``released`` puts the job back to
        ``queued`` at once, ends the attempt ``released`` and gives the attempt back
        (``attempts - 1``; semantic 8). Subscribers are notified.
        """

    async def finish_and_claim(
        self,
        outcomes: Sequence[JobOutcome],
        *,
        worker_id: str,
        task_names: Sequence[str],
        limit: int,
        now: float,
    ) -> tuple[list[bool], list[Claim]]:
        """:meth:`finish` the ``outcomes``, then :meth:`claim` up to ``limit`` jobs: the applied
        flags and the claims. How a busy worker ends runs and replaces them; engines do both in
        one transaction (one commit instead of two), this default in two."""
        applied = await self.finish(outcomes, now=now)
        claims = await self.claim(worker_id=worker_id, task_names=task_names, limit=limit, now=now)
        return applied, claims

    @abc.abstractmethod
    async def renew(self, tokens: Sequence[str], *, now: float) -> RenewReport:
        """Extend the leases of ``tokens`` to ``now + lease`` in one transaction.

        A token that is no longer a running job's current token is reported ``lost`` (and
        nothing is extended for it); a job whose cancel was requested is reported in
        ``cancel_requested`` (its lease is still extended: the worker cancels the run and
        then finishes it ``cancelled``).
        """

    @abc.abstractmethod
    async def cancel(self, job_id: str, *, now: float) -> bool:
        """Cancel a job: a ``queued`` one becomes ``cancelled`` at once; a ``running`` one is
        marked so that the next renewal of its lease reports it (semantic 5). False when the
        job has finished already or does not exist."""

    @abc.abstractmethod
    async def retry(self, job_id: str, *, now: float) -> Job:
        """Put a ``failed`` or ``cancelled`` job back to ``queued``, due ``now``, with its
        attempts, result and error cleared; returns it.

        :raises KeyError: no such job.
        :raises ValueError: the job is not ``failed`` or ``cancelled``, or another job with its
            ``dedupe_key`` is ``queued`` or ``running`` (semantic 6 holds for retries too).
        """

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or ``None``."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        task_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first (``created_at`` then enqueue order, descending), filtered."""

    @abc.abstractmethod
    async def attempts(self, job_id: str) -> list[JobAttempt]:
        """The audit trail of a job, oldest attempt first (empty for an unknown job)."""

    @abc.abstractmethod
    async def next_due_at(self, task_names: Sequence[str]) -> float | None:
        """The earliest instant at which :meth:`claim` could find work for ``task_names``: the
        smallest ``run_at`` of their queued jobs or lease expiry of their running jobs."""

    @abc.abstractmethod
    async def latest_schedule_key(self, prefix: str) -> str | None:
        """The greatest stored ``schedule_key`` starting with ``prefix`` (ordinal string
        order), or ``None``; how a starting manager finds the last cron tick stored."""

    @abc.abstractmethod
    async def purge(self, *, now: float) -> int:
        """Delete the jobs finished before ``now - retention`` with their attempts; how many.
        Nothing when ``retention`` is ``None``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} lease={self._lease:g}>"
