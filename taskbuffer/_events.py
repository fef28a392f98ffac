"""Lifecycle events and the subject that carries them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, SupportsIndex, TypeAlias

from reactivex.subject import Subject

from ._metadata import TaskMetadata

__all__ = ("EventSubject", "TaskEvent", "TaskEventType", "deliver")

logger = logging.getLogger("taskbuffer")

# "missed": cron ticks were missed while the event loop was blocked and are coalesced into the
# run that follows; ``error`` carries the message (how many were missed).
TaskEventType: TypeAlias = Literal[
    "started",
    "step",
    "completed",
    "failed",
    "queued",
    "skipped",
    "retrying",
    "cancelled",
    "missed",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskEvent:
    """One lifecycle event of a task, with a metadata snapshot taken when it was emitted."""

    type: TaskEventType
    task: TaskMetadata
    timestamp: float
    step_name: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values."""
        return {
            "type": self.type,
            "task": self.task.to_dict(),
            "timestamp": self.timestamp,
            "step_name": self.step_name,
            "error": self.error,
        }


# An event's fields and its task's state, copied at emission time, in this order:
# (build_metadata, type, timestamp, step_name, error, task, <task state...>). The first item
# builds the TaskMetadata from the whole tuple.
StateCapture: TypeAlias = tuple[Any, ...]

_TASK_SLOT = TaskEvent.__dict__["task"]
_SETTERS = tuple(
    TaskEvent.__dict__[name].__set__ for name in ("type", "timestamp", "step_name", "error")
)


def _captured(index: int) -> property:
    def read(self: _PendingEvent) -> Any:
        return _TASK_SLOT.__get__(self, TaskEvent)[index]

    return property(read)


class _PendingEvent(TaskEvent):
    """A :class:`TaskEvent` that is one tuple until somebody reads its ``task``.

    Emitting stores a single tuple (the event's fields and a copy of a dozen counters) instead
    of writing five fields and building a metadata snapshot; the values are those of emission
    time either way. ``type``, ``timestamp``, ``step_name`` and ``error`` read from the tuple;
    the first read of ``task`` (or a comparison, copy or pickle) builds the snapshot, fills
    the fields, and the instance becomes a plain ``TaskEvent``.
    """

    __slots__ = ()
    # ``_PendingEvent()`` makes an empty instance at C speed (no dataclass __init__); the
    # emitter then stores the capture in the ``task`` slot.
    __init__ = object.__init__

    type = _captured(1)
    timestamp = _captured(2)
    step_name = _captured(3)
    error = _captured(4)

    @property
    def task(self) -> TaskMetadata:
        capture = _TASK_SLOT.__get__(self, TaskEvent)
        metadata: TaskMetadata = capture[0](capture)
        for setter, value in zip(_SETTERS, capture[1:5], strict=True):
            setter(self, value)
        _TASK_SLOT.__set__(self, metadata)
        object.__setattr__(self, "__class__", TaskEvent)
        return metadata

    def __eq__(self, other: object) -> bool:
        _ = self.task  # materialise, which also makes this a plain TaskEvent
        return TaskEvent.__eq__(self, other)

    __hash__ = TaskEvent.__hash__

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        _ = self.task  # materialise first: copies and pickles are plain TaskEvents
        return self.__reduce_ex__(protocol)


def deliver(subject: Subject[TaskEvent], event: TaskEvent) -> None:
    """``subject.on_next(event)``, minus reactivex's per-call lock, and shielded: a subscriber
    that raises is logged on the ``taskbuffer`` logger, stays subscribed, and the others still
    get the event. Events are emitted from the event loop's thread only."""
    if subject.is_stopped or subject.is_disposed:
        return
    observers = subject.observers
    for observer in observers.copy() if len(observers) > 1 else observers:
        try:
            observer.on_next(event)
        except Exception:
            _log_subscriber_error(event)


def _log_subscriber_error(event: TaskEvent) -> None:
    logger.exception(
        "an event subscriber raised on a %r event of task %r", event.type, event.task.name
    )


class EventSubject(Subject[TaskEvent]):
    """A reactivex ``Subject`` whose subscribers cannot break the emitter or each other.

    A subscriber that raises is logged on the ``taskbuffer`` logger and stays subscribed; the
    remaining subscribers still receive the event and the run goes on.
    """

    def on_next(self, value: TaskEvent) -> None:
        deliver(self, value)
