"""Runs: one execution of a task, with an identity, its own steps and an outcome.

Every path that executes a task (a direct trigger, a buffer, ``TaskOnce``, a debounce, a
chain or parallel member, the manager, cron, one-off and job runs) makes one :class:`Run` and
hands it to the task's run coroutine (``TaskRunner._run``); a trigger that waits in the
manager's queue is a run in state ``waiting`` from the moment it queues. :class:`RunInfo` is
the frozen snapshot the public API hands out (``TaskEvent.run``, :func:`current_run`,
``TaskManager.get_active_runs``).

A run is *entered* when its code starts executing: it becomes the value of a context variable
in the asyncio context of the run (and so of every asyncio task the run creates), and it
remembers the run it was entered in (its parent), so that ``notify_step`` finds the run of its
own task however deep the awaits that call it are nested, and :func:`current_run` skips the
runs of pre- and after-tasks, which belong to their owner's run.

Cheap on purpose: a run is made for every trigger, so it is a slotted object whose fields are
plain floats and references; the identity is drawn only when somebody reads it, and datetimes
are made only in :class:`RunInfo`.
"""

from __future__ import annotations

import itertools
import os
import random
from contextvars import ContextVar
from dataclasses import FrozenInstanceError, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, SupportsIndex, TypeAlias, TypeVar, cast

from ._clock import to_datetime
from ._steps import RunSteps, TaskStepInfo

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = (
    "CURRENT",
    "LinkedRun",
    "QueuedRun",
    "Run",
    "RunInfo",
    "RunState",
    "current_run",
    "fill",
    "find_run",
    "new_linked_run",
    "new_run",
)


def _id_suffix() -> str:
    """20 hex digits: ``4`` (a version 4 UUID's version nibble, at position 12 of the id),
    then 74 random bits with the variant ``8``-``b`` at position 16."""
    bits = random.getrandbits(74)
    mid, variant, tail = bits >> 62, (bits >> 60) & 0x3, bits & (2**60 - 1)
    return f"4{mid:03x}{8 + variant:x}{tail:015x}"


# A run's identity (see Run.run_id): 12 hex digits that scramble a counter, so that ids look
# random from their first digit (people shorten them), then this process's random suffix.
# Unique within a process for 2**48 runs (multiplying by an odd number is a permutation modulo
# 2**48), across processes as random UUIDs are (74 random bits, drawn again in a forked
# child); a fifth of the cost of formatting 128 random bits.
_suffix = _id_suffix()
_counter = itertools.count(random.getrandbits(48))
_SCRAMBLE = 0x9E3779B97F4B  # odd: 2**48 divided by the golden ratio, rounded to odd
_MASK = 2**48 - 1
_HEAD = 16**12  # hex() of _HEAD + x is "0x1" and x's 12 digits


def _new_suffix() -> None:
    global _suffix
    _suffix = _id_suffix()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_suffix)

RunState: TypeAlias = Literal["waiting", "running", "completed", "failed", "cancelled", "skipped"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, kw_only=True, slots=True)
class RunInfo:
    """A snapshot of one run. Datetimes are timezone-aware; ``progress`` is 0-100.

    ``input`` is the run's input object itself (not a copy). ``attempt`` is 1-based and grows
    with retries. ``blocked_by`` is the ``(group name, key)`` a waiting run waits for.
    ``job_id`` is set when the run executes a durable job.
    """

    run_id: str
    task_name: str
    input: Any
    state: RunState
    attempt: int
    priority: int
    job_id: str | None
    blocked_by: tuple[str, str] | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[TaskStepInfo]
    progress: int

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready values (datetimes as ISO 8601 strings; ``input`` as is)."""
        return {
            "run_id": self.run_id,
            "task_name": self.task_name,
            "input": self.input,
            "state": self.state,
            "attempt": self.attempt,
            "priority": self.priority,
            "job_id": self.job_id,
            "blocked_by": None if self.blocked_by is None else list(self.blocked_by),
            "queued_at": _iso(self.queued_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "steps": [step.to_dict() for step in self.steps],
            "progress": self.progress,
        }


_DATETIMES = ("queued_at", "started_at", "finished_at")
_DATETIME_SLOTS = tuple(RunInfo.__dict__[name] for name in _DATETIMES)


def _frozen(self: RunInfo, value: Any = None) -> None:
    raise FrozenInstanceError("cannot assign to or delete a field of a RunInfo")


_RUN_ID_SLOT = RunInfo.__dict__["run_id"]


def _materialise(info: PendingRunInfo) -> None:
    """Convert the instants to datetimes and draw the identity; ``info`` becomes a plain
    :class:`RunInfo`."""
    _read_run_id(info)
    for slot in _DATETIME_SLOTS:
        wall = slot.__get__(info)
        slot.__set__(info, None if wall is None else to_datetime(wall))
    object.__setattr__(info, "__class__", RunInfo)


def _datetime_field(index: int) -> property:
    slot = _DATETIME_SLOTS[index]

    def read(self: PendingRunInfo) -> datetime | None:
        _materialise(self)
        value: datetime | None = slot.__get__(self)
        return value

    return property(read, _frozen, _frozen)


def _read_run_id(info: PendingRunInfo) -> str:
    run_id = _RUN_ID_SLOT.__get__(info)
    if type(run_id) is not str:  # the Run, until read (see PendingRunInfo)
        run_id = run_id.run_id
        _RUN_ID_SLOT.__set__(info, run_id)
    return cast(str, run_id)


class PendingRunInfo(RunInfo):
    """A :class:`RunInfo` whose ``queued_at``, ``started_at`` and ``finished_at`` slots still
    hold epoch seconds, made by :meth:`Run.info_as` (as ``PendingEvent`` for events).

    A datetime costs as much as the rest of a snapshot, and a subscriber that reads a run's
    progress or input never needs one: the first read of any of the three (or a comparison,
    ``repr``, copy or pickle) converts all three, and the instance becomes a plain
    ``RunInfo``. Likewise its ``run_id`` slot holds the run until read, as the run draws its
    identity on first read. It is filled in as a ``_FillingRunInfo``.
    """

    __slots__ = ()

    run_id = property(_read_run_id, _frozen, _frozen)

    queued_at = _datetime_field(0)
    started_at = _datetime_field(1)
    finished_at = _datetime_field(2)

    def __eq__(self, other: object) -> bool:
        _materialise(self)
        if isinstance(other, PendingRunInfo):
            _materialise(other)
        return RunInfo.__eq__(self, other)

    __hash__ = RunInfo.__hash__

    def __repr__(self) -> str:
        _materialise(self)
        return RunInfo.__repr__(self)

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        _materialise(self)
        return self.__reduce_ex__(protocol)


class _FillingRunInfo(RunInfo):
    """A ``PendingRunInfo`` being filled in by :meth:`Run.info_as`; it never escapes (as
    ``_Filling`` in ``_metadata``: plain slot stores instead of the frozen dataclass's
    ``__init__``, the instants included; the layouts are the same, so it then becomes a
    ``PendingRunInfo``)."""

    __slots__ = ()
    __init__ = object.__init__
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


class Blocker(Protocol):
    """What a waiting run is parked on (the admission's key), named on demand."""

    def names(self) -> tuple[str, str]: ...


class Run:
    """One execution of a task (internal; :class:`RunInfo` is its public snapshot).

    ``started`` and ``finished`` are epoch seconds on the loop's clock (``None`` until they
    happen); ``steps`` is where the run is in its task's declared steps (``None`` for a task
    without steps, or before the run starts); ``parent`` is the run it was entered in (see
    :data:`CURRENT`); ``drawn_id`` is the identity once drawn (see :attr:`run_id`).

    A run that starts at once (a direct trigger's, a chain or parallel member's) is this class,
    made in place by ``TaskRunner._perform``, the one coroutine every run executes through
    (every direct trigger's hot path: :func:`fill`'s stores less those that starting makes),
    or by ``_runner.start_run`` for a manager's run that cannot wait.
    What only some runs have is a class attribute here, and a slot of the subclass whose
    runs have it: :class:`QueuedRun` (a manager's run, which may wait, and a job's) and
    :class:`LinkedRun` (a pre- or after-task's run), made by :func:`new_run` and
    :func:`new_linked_run`.
    """

    __slots__ = (
        "attempt",
        "drawn_id",
        "finished",
        "input",
        "parent",
        "started",
        "state",
        "steps",
        "task",
    )

    task: Any
    input: Any
    state: RunState
    attempt: int
    started: float | None
    finished: float | None
    steps: RunSteps | None
    parent: Run | None
    drawn_id: str | None

    # What a run that never waits in a manager's queue has (QueuedRun makes them slots).
    priority: int = 0
    job_id: str | None = None
    blocked_by: Blocker | None = None  # the key a waiting run is parked on
    queued: float | None = None  # epoch seconds, when it began to wait
    linked = False  # the run of a pre- or after-task (LinkedRun)

    @property
    def run_id(self) -> str:
        """The run's identity: 32 hex digits laid out as a version 4 UUID's (see
        ``_suffix``), made on first read, then stable."""
        run_id = self.drawn_id
        if run_id is None:
            run_id = self.drawn_id = hex(_HEAD + (next(_counter) * _SCRAMBLE & _MASK))[3:] + _suffix
        return run_id

    def __repr__(self) -> str:
        name = getattr(self.task, "name", None) or "unnamed"
        return f"<Run {name!r} state={self.state} attempt={self.attempt}>"

    def info(self) -> RunInfo:
        """A snapshot of the run as it is now."""
        steps = self.steps
        return self.info_as(
            self.state,
            self.attempt,
            self.blocked_by,
            self.finished,
            None if steps is None else steps.copy(),
        )

    def info_as(
        self,
        state: RunState,
        attempt: int,
        blocked_by: Blocker | None,
        finished: float | None,
        steps: RunSteps | None,
    ) -> RunInfo:
        """A snapshot of the run with the fields that change taken as captured earlier."""
        info = _FillingRunInfo()
        info.run_id = self.drawn_id or self  # the Run itself until read (see PendingRunInfo)
        info.task_name = self.task.name or "unnamed"
        info.input = self.input
        info.state = state
        info.attempt = attempt
        info.priority = self.priority
        info.job_id = self.job_id
        # Only a waiting run is blocked; a started one keeps no trace of the key it waited for.
        info.blocked_by = None if blocked_by is None or state != "waiting" else blocked_by.names()
        # Epoch seconds in the datetime slots, until read (see PendingRunInfo).
        info.queued_at = self.queued
        info.started_at = self.started
        info.finished_at = finished
        if steps is None:
            info.steps = []
            info.progress = 0
        else:
            info.steps = steps.infos()
            info.progress = steps.progress()
        info.__class__ = PendingRunInfo
        return cast(RunInfo, info)


class QueuedRun(Run):
    """A manager's run (it may wait in the manager's queue) or a durable job's."""

    __slots__ = ("blocked_by", "job_id", "priority", "queued")

    priority: int
    job_id: str | None
    blocked_by: Blocker | None
    queued: float | None


class LinkedRun(Run):
    """The run of a pre- or after-task: ``current_run()`` in it is its owner's run."""

    __slots__ = ()
    linked = True


RunT = TypeVar("RunT", bound=Run)


def fill(run: RunT, task: Any, input: Any) -> RunT:
    """Make ``run`` (a new one) a run of ``task`` with ``input``, not started yet."""
    run.task = task
    run.input = input
    run.state = "waiting"
    run.attempt = 1
    run.started = run.finished = run.steps = run.parent = run.drawn_id = None
    return run


def new_run(task: Any, input: Any, priority: int = 0, job_id: str | None = None) -> QueuedRun:
    """A manager's run of ``task`` with ``input``, not started yet (state ``waiting``)."""
    run = fill(QueuedRun(), task, input)
    run.priority = priority
    run.job_id = job_id
    run.blocked_by = run.queued = None
    return run


def new_linked_run(task: Any, input: Any) -> LinkedRun:
    """A pre- or after-task's run of ``task`` with ``input``, not started yet."""
    return fill(LinkedRun(), task, input)


# The run whose code executes now: TaskRunner._perform sets it as a run starts (its parent
# is the value it replaces, walking past ended runs). An outermost run (no running parent)
# resets it as it ends, so that an asyncio task whose context outlives its run (gathered
# triggers, held until the gather ends) does not keep the run and the context's copy alive.
# A nested run does not (a set and a reset cost twice one set, on every run): a finished run
# left in a context counts as absent, and readers walk past it to the run it was entered in.
CURRENT: ContextVar[Run | None] = ContextVar("taskbuffer_current_run", default=None)


def _running(run: Run | None) -> Run | None:
    """``run`` if it is running, else the innermost running run it was entered in.

    Every step outwards skips ended runs, not only the first: an asyncio task that a run
    started may outlive it, and a run entered there while that run was running keeps it as
    its parent after it has ended.
    """
    while run is not None and run.state != "running":
        run = run.parent
    return run


def current_run() -> RunInfo | None:
    """The run whose code is executing now, or ``None`` outside a run.

    Inside a pre- or after-task it is the owner's run; inside a chain's or parallel's member
    it is the member's own run. Works in any code the run awaits and in asyncio tasks the run
    creates (they copy its context).
    """
    run = _running(CURRENT.get())
    while run is not None and run.linked:
        run = _running(run.parent)
    return None if run is None else run.info()


def find_run(task: Hashable) -> Run | None:
    """The innermost running run of ``task`` in the current context, or ``None``."""
    run = _running(CURRENT.get())
    while run is not None and run.task is not task:
        run = _running(run.parent)
    return run
