"""The value objects of durable jobs, and the serializer that stores inputs and results.

``Job``, ``JobAttempt`` and ``JobError`` are what users read. ``JobRequest``, ``Claim``,
``JobOutcome`` and ``RenewReport`` are the vocabulary between a worker and a
:class:`~taskbuffer.jobs.JobStore`: every store speaks them, so one worker drives any store.
Instants inside the store API are epoch seconds (``float``); the user-facing objects carry
timezone-aware datetimes.
"""

from __future__ import annotations

import json
import os
import time
import traceback as traceback_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeAlias, cast, runtime_checkable

from .._validation import error_message

__all__ = (
    "AttemptOutcome",
    "Claim",
    "JSONSerializer",
    "Job",
    "JobAttempt",
    "JobError",
    "JobOutcome",
    "JobRequest",
    "JobSerializer",
    "JobStatus",
    "RenewReport",
    "Row",
    "ordered_id",
    "queued_job",
)

JobStatus: TypeAlias = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""Where a job is: waiting (``queued``), claimed by a worker (``running``), or finished."""

AttemptOutcome: TypeAlias = Literal["succeeded", "failed", "cancelled", "lost", "released"]
"""How one attempt ended: ``lost`` when its lease ran out, ``released`` when its worker gave
the job back unfinished (``stop()``); a released attempt does not count."""

FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _when(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobError:
    """Why a job failed: the error's type name, its message and the formatted traceback."""

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_exception(cls, error: BaseException) -> JobError:
        """The record of ``error`` (its traceback formatted when it has one)."""
        formatted = None
        if error.__traceback__ is not None:
            formatted = "".join(traceback_module.format_exception(error))
        return cls(type=type(error).__qualname__, message=error_message(error), traceback=formatted)

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-ready values."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobError:
        """The inverse of :meth:`to_dict` (stores keep errors as JSON)."""
        return cls(type=data["type"], message=data["message"], traceback=data.get("traceback"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A snapshot of one durable job, as the store held it when read.

    ``attempts`` counts the claims so far (a ``released`` attempt is not counted); ``run_at``
    is the instant the job becomes due (its enqueue instant when no delay was asked).
    ``worker_id`` is the worker that holds or last held it; ``result`` is set once it has
    ``succeeded``, ``error`` once it has ``failed`` (or was cancelled with a reason).
    """

    id: str
    task_name: str
    input: Any
    status: JobStatus
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    result: Any
    error: JobError | None
    dedupe_key: str | None
    schedule_key: str | None = None

    @property
    def finished(self) -> bool:
        """True once the job is ``succeeded``, ``failed`` or ``cancelled``."""
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values (datetimes as ISO 8601; input and result as they are)."""
        return {
            "id": self.id,
            "task_name": self.task_name,
            "input": self.input,
            "status": self.status,
            "priority": self.priority,
            "run_at": _iso(self.run_at),
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "worker_id": self.worker_id,
            "result": self.result,
            "error": None if self.error is None else self.error.to_dict(),
            "dedupe_key": self.dedupe_key,
            "schedule_key": self.schedule_key,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class JobAttempt:
    """One claim of a job: who ran it, when, and how it ended (``outcome`` is ``None`` while
    the attempt holds its lease)."""

    job_id: str
    attempt: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcome | None
    error: JobError | None

    def to_dict(self) -> dict[str, Any]:
        """The attempt as JSON-ready values."""
        return {
            "job_id": self.job_id,
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "outcome": self.outcome,
            "error": None if self.error is None else self.error.to_dict(),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRequest:
    """What to store for one new job (already validated; instants in epoch seconds).

    ``dedupe_key``: while a job with that key is queued or running, the store returns it
    instead of storing this one. ``schedule_key``: a job with that key is stored at most once,
    ever (cron ticks are named by task and scheduled instant).
    """

    task_name: str
    input: Any = None
    priority: int = 0
    run_at: float | None = None
    dedupe_key: str | None = None
    schedule_key: str | None = None
    max_attempts: int = 3


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    """A job a worker holds: the job (status ``running``) and the lease token that every
    write of that worker about it must present."""

    job: Job
    token: str


@dataclass(frozen=True, kw_only=True, slots=True)
class JobOutcome:
    """How a worker ends one claim. ``result`` is the serialized result (see
    :meth:`JobStore.succeeded_outcome`); ``released`` gives the job back to the queue."""

    job_id: str
    token: str
    outcome: Literal["succeeded", "failed", "cancelled", "released"]
    result: bytes | None = None
    error: JobError | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RenewReport:
    """The answer to a lease renewal: the tokens whose lease is gone (the worker must stop
    and forget the job) and those whose job has been asked to cancel."""

    lost: frozenset[str] = frozenset()
    cancel_requested: frozenset[str] = frozenset()


@runtime_checkable
class JobSerializer(Protocol):
    """How a store turns inputs and results into stored data and back.

    ``dumps`` returns ``bytes`` or ``str`` (a ``str`` is stored UTF-8 encoded); ``loads``
    receives the stored ``bytes``.
    """

    def dumps(self, obj: Any, /) -> bytes | str: ...

    def loads(self, data: bytes, /) -> Any: ...


# Built once: json.dumps with options builds an encoder per call (a job's result is encoded
# on the worker's hot path).
_JSON_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_JSON_DECODE = json.JSONDecoder().decode
# The decoder's scanner alone: decode() matches a whitespace pattern before and after it,
# which costs more than scanning a small value (a job's input, decoded for every claim).
_JSON_SCAN: Callable[[str, int], tuple[Any, int]] = getattr(json.JSONDecoder(), "scan_once")  # noqa: B009


class JSONSerializer:
    """The default serializer: JSON (tuples come back as lists; NaN and infinities are refused)."""

    __slots__ = ()

    def dumps(self, obj: Any, /) -> str:
        """``obj`` as compact JSON."""
        if obj is None:  # most jobs' result: the encoder costs microseconds to say "null"
            return "null"
        return _JSON_ENCODE(obj)

    def loads(self, data: bytes, /) -> Any:
        """The value JSON ``data`` holds (UTF-8, as :meth:`dumps` stores it)."""
        text = str(data, "utf-8")
        try:
            value, end = _JSON_SCAN(text, 0)
        except Exception:  # leading whitespace, or not JSON: decode() says what it is
            return _JSON_DECODE(text)
        return value if end == len(text) else _JSON_DECODE(text)

    def __repr__(self) -> str:
        return "JSONSerializer()"


class Row(Protocol):
    """A database row readable by column name (a mapping, ``sqlite3.Row``, asyncpg's Record)."""

    def __getitem__(self, key: str, /) -> Any: ...


def job_from_row(row: Row, *, input: Any, result: Any) -> Job:
    """Build a :class:`Job` from a store's row (instants as epoch seconds, ``error`` as JSON).

    The column names are the field names of :class:`Job`; stores share this so every engine
    builds jobs the same way.
    """
    return job_from_list([
        row["id"], row["task_name"], input, row["status"], row["priority"], row["run_at"],
        row["attempts"], row["max_attempts"], row["created_at"], row["started_at"],
        row["finished_at"], row["worker_id"], result, row["error"], row["dedupe_key"],
        row["schedule_key"],
    ])  # fmt: skip


_JOB_FIELDS = tuple(field.name for field in fields(Job))
_RUN_AT, _CREATED_AT, _ERROR = map(_JOB_FIELDS.index, ("run_at", "created_at", "error"))
_MAYBE_AT = (_JOB_FIELDS.index("started_at"), _JOB_FIELDS.index("finished_at"))


def _slot_filler(cls: type, names: tuple[str, ...]) -> Callable[[list[Any]], Any]:
    """A function making a ``cls`` from the values of its slots ``names`` in a list, each set
    through the slot's own setter: what a frozen dataclass's __init__ reaches through
    object.__setattr__, a look-up by name per field (a claim builds a job per row)."""
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = ["def fill(values):", "    made = new(cls)"]
    for at, name in enumerate(names):
        scope[f"set_{at}"] = getattr(cls, name).__set__
        lines.append(f"    set_{at}(made, values[{at}])")
    lines.append("    return made")
    exec("\n".join(lines), scope)  # straight-line code: no loop over the setters
    return cast("Callable[[list[Any]], Any]", scope["fill"])


_fill_job = _slot_filler(Job, _JOB_FIELDS)
_fill_claim = _slot_filler(Claim, ("job", "token"))

_INSTANTS: dict[float, datetime] = {}
"""Datetimes made lately, by epoch seconds: the jobs of one claim share their start, and those
enqueued together their creation (datetimes are immutable; the dict is cleared when full)."""


def _instant(epoch: float) -> datetime:
    when = _INSTANTS.get(epoch)
    if when is None:
        if len(_INSTANTS) >= 64:
            _INSTANTS.clear()
        when = _INSTANTS[epoch] = datetime.fromtimestamp(epoch, UTC)
    return when


def job_from_list(values: list[Any]) -> Job:
    """:func:`job_from_row` from a list of the columns in the order of :class:`Job`'s fields,
    with ``input`` and ``result`` decoded and instants and ``error`` as stored (the list is
    changed in place)."""
    if len(values) != len(_JOB_FIELDS):
        raise TypeError(f"a job has {len(_JOB_FIELDS)} columns, not {len(values)}")
    values[_RUN_AT] = _instant(values[_RUN_AT])
    values[_CREATED_AT] = _instant(values[_CREATED_AT])
    for at in _MAYBE_AT:
        if values[at] is not None:
            values[at] = _instant(values[at])
    error = values[_ERROR]
    if error is not None:
        values[_ERROR] = JobError.from_dict(json.loads(error))
    return cast(Job, _fill_job(values))


def new_claim(job: Job, token: str) -> Claim:
    """``Claim(job=job, token=token)``, made as :func:`job_from_list` makes jobs."""
    return cast(Claim, _fill_claim([job, token]))


def attempt_from_row(row: Row) -> JobAttempt:
    """Build a :class:`JobAttempt` from a store's row (as :func:`job_from_row`)."""
    error = row["error"]
    return JobAttempt(
        job_id=row["job_id"],
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        started_at=datetime.fromtimestamp(row["started_at"], UTC),
        finished_at=_when(row["finished_at"]),
        outcome=row["outcome"],
        error=None if error is None else JobError.from_dict(json.loads(error)),
    )


def error_json(error: JobError | None) -> str | None:
    """``error`` as the JSON text stores keep (``None`` stays ``None``)."""
    return None if error is None else json.dumps(error.to_dict())


def ordered_id() -> str:
    """A fresh job id or lease token: 32 hex digits, the wall clock in nanoseconds then 64
    random bits. Ids made later sort after earlier ones, so the indexes they key (job ids,
    tokens, the audit trail) grow at one end: a commit writes a few pages, not one per row."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


def queued_job(request: JobRequest, job_id: str, input: Any, created: datetime) -> Job:
    """The job that a store has just stored for ``request`` at ``created`` (not read back:
    its columns are the request's; ``created`` is shared by the batch, and so is ``run_at``
    when it is the enqueue instant)."""
    run_at = request.run_at
    return Job(
        id=job_id,
        task_name=request.task_name,
        input=input,
        status="queued",
        priority=request.priority,
        run_at=created if run_at is None else datetime.fromtimestamp(run_at, UTC),
        attempts=0,
        max_attempts=request.max_attempts,
        created_at=created,
        started_at=None,
        finished_at=None,
        worker_id=None,
        result=None,
        error=None,
        dedupe_key=request.dedupe_key,
        schedule_key=request.schedule_key,
    )
