"""Lifecycle events and the subject that carries them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, SupportsIndex, TypeAlias

from reactivex.subject import Subject

from ._metadata import TaskMetadata

__all__ = ("EventSubject", "TaskEvent", "TaskEventType")

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


# The state of a task copied at emission time; its first item builds the metadata from it.
StateCapture: TypeAlias = tuple[Any, ...]


_TASK_SLOT = TaskEvent.__dict__["task"]
_set_type = TaskEvent.__dict__["type"].__set__
_set_task = _TASK_SLOT.__set__
_set_timestamp = TaskEvent.__dict__["timestamp"].__set__
_set_step_name = TaskEvent.__dict__["step_name"].__set__
_set_error = TaskEvent.__dict__["error"].__set__


class _PendingEvent(TaskEvent):
    """A :class:`TaskEvent` whose metadata snapshot is built when ``task`` is first read.

    Emitting costs a copy of a few counters instead of a full snapshot; the values are those
    of emission time either way. On first read the instance becomes a plain ``TaskEvent``.
    """

    __slots__ = ()

    @property
    def task(self) -> TaskMetadata:
        capture = _TASK_SLOT.__get__(self, TaskEvent)
        metadata: TaskMetadata = capture[0](capture)
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


def make_event(
    type: TaskEventType,
    capture: StateCapture,
    timestamp: float,
    step_name: str | None,
    error: str | None,
) -> TaskEvent:
    """Build an event without running the dataclass ``__init__`` (this is the hot path)."""
    event = object.__new__(_PendingEvent)
    _set_type(event, type)
    _set_task(event, capture)
    _set_timestamp(event, timestamp)
    _set_step_name(event, step_name)
    _set_error(event, error)
    return event


class EventSubject(Subject[TaskEvent]):
    """A reactivex ``Subject`` whose subscribers cannot break the emitter or each other.

    A subscriber that raises is logged on the ``taskbuffer`` logger and stays subscribed; the
    remaining subscribers still receive the event and the run goes on.
    """

    def on_next(self, value: TaskEvent) -> None:
        # Skips reactivex's per-call lock: events are emitted from the event loop's thread.
        if self.is_stopped or self.is_disposed:
            return
        for observer in self.observers.copy() if len(self.observers) > 1 else self.observers:
            try:
                observer.on_next(value)
            except Exception:
                logger.exception(
                    "an event subscriber raised on a %r event of task %r",
                    value.type,
                    value.task.name,
                )
