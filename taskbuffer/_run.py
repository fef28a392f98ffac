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

import random
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, cast

from ._clock import to_datetime
from ._steps import RunSteps, TaskStepInfo

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ("Run", "RunInfo", "RunState", "current_run", "enter", "find_run", "new_run")

_getrandbits = random.getrandbits
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))  # the version nibble and the variant's two bits
_UUID4_SET = (0x4 << 76) | (0x2 << 62)

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


class _FillingRunInfo(RunInfo):
    """A ``RunInfo`` being filled in by :meth:`Run.info`; it never escapes (as ``_Filling``
    in ``_metadata``: plain slot stores instead of the frozen dataclass's ``__init__``)."""

    __slots__ = ()
    __init__ = object.__init__
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


class Blocker(Protocol):
    """What a waiting run is parked on (the admission's key), named on demand."""

    def names(self) -> tuple[str, str]: ...


class Run:
    """One execution of a task (internal; :class:`RunInfo` is its public snapshot).

    ``queued``, ``started`` and ``finished`` are epoch seconds on the loop's clock (``None``
    until they happen); ``steps`` is where the run is in its task's declared steps (``None``
    for a task without steps, or before the run starts); ``parent`` is the run it was
    entered in (see :func:`enter`); ``linked`` marks the run of a pre- or after-task.
    """

    __slots__ = (
        "_run_id",
        "attempt",
        "blocked_by",
        "finished",
        "input",
        "job_id",
        "linked",
        "parent",
        "priority",
        "queued",
        "started",
        "started_at",
        "state",
        "steps",
        "task",
    )

    # Made by new_run() only: a Python __init__ would cost a third of a run's bookkeeping.
    task: Any
    input: Any
    state: RunState
    attempt: int
    priority: int
    job_id: str | None
    blocked_by: Blocker | None  # the key a waiting run is parked on
    queued: float | None
    started: float | None
    started_at: datetime | None  # started as a datetime, once a snapshot needed it
    finished: float | None
    steps: RunSteps | None
    parent: Run | None
    linked: bool
    _run_id: str | None

    @property
    def run_id(self) -> str:
        """The run's identity: 32 hex digits of a random (version 4) UUID, drawn on first read."""
        run_id = self._run_id
        if run_id is None:
            # The layout of uuid.uuid4().hex (version 4, variant 10xx) without the UUID object
            # and the system call: an identifier, not a secret (random reseeds after a fork).
            bits = _getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
            run_id = self._run_id = f"{bits:032x}"
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
        info.run_id = self._run_id or self.run_id
        info.task_name = self.task.name or "unnamed"
        info.input = self.input
        info.state = state
        info.attempt = attempt
        info.priority = self.priority
        info.job_id = self.job_id
        info.blocked_by = None if blocked_by is None else blocked_by.names()
        queued = self.queued
        info.queued_at = None if queued is None else to_datetime(queued)
        started_at = self.started_at
        if started_at is None and self.started is not None:
            # Every snapshot of the run shows the same start: converted once.
            started_at = self.started_at = to_datetime(self.started)
        info.started_at = started_at
        info.finished_at = None if finished is None else to_datetime(finished)
        if steps is None:
            info.steps = []
            info.progress = 0
        else:
            info.steps = steps.infos()
            info.progress = steps.progress()
        info.__class__ = RunInfo
        return cast(RunInfo, info)


def new_run(task: Any, input: Any, priority: int = 0, job_id: str | None = None) -> Run:
    """A run of ``task`` with ``input``, not started yet (state ``waiting``): the one place
    runs are made."""
    run = Run()
    run.task = task
    run.input = input
    run.state = "waiting"
    run.attempt = 1
    run.priority = priority
    run.job_id = job_id
    run.blocked_by = None
    run.queued = None
    run.started = None
    run.started_at = None
    run.finished = None
    run.steps = None
    run.parent = None
    run.linked = False
    run._run_id = None
    return run


# The run whose code executes now, set by enter(). It is not reset when the run ends (a set
# and a reset cost twice one set, on every run): a finished run left in a context counts as
# absent, and readers walk past it to the run it was entered in.
CURRENT: ContextVar[Run | None] = ContextVar("taskbuffer_current_run", default=None)


def enter(run: Run) -> None:
    """Make ``run`` the current run of this asyncio context (it starts executing)."""
    parent = CURRENT.get()
    while parent is not None and parent.state != "running":
        parent = parent.parent  # ended: it only lingers in the context
    run.parent = parent
    CURRENT.set(run)


def _innermost() -> Run | None:
    run = CURRENT.get()
    while run is not None and run.state != "running":
        run = run.parent
    return run


def current_run() -> RunInfo | None:
    """The run whose code is executing now, or ``None`` outside a run.

    Inside a pre- or after-task it is the owner's run; inside a chain's or parallel's member
    it is the member's own run. Works in any code the run awaits and in asyncio tasks the run
    creates (they copy its context).
    """
    run = _innermost()
    while run is not None and run.linked:
        run = run.parent
    return None if run is None else run.info()


def find_run(task: Hashable) -> Run | None:
    """The innermost entered run of ``task`` in the current context, or ``None``."""
    run = _innermost()
    while run is not None and run.task is not task:
        run = run.parent
    return run
