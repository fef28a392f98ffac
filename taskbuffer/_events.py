"""Lifecycle events and the subject that carries them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from reactivex.subject import Subject

from ._metadata import TaskMetadata

__all__ = ("EventSubject", "TaskEvent", "TaskEventType")

logger = logging.getLogger("taskbuffer")

TaskEventType: TypeAlias = Literal[
    "started", "step", "completed", "failed", "queued", "skipped", "retrying", "cancelled"
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


class EventSubject(Subject[TaskEvent]):
    """A reactivex ``Subject`` whose subscribers cannot break the emitter or each other.

    A subscriber that raises is logged on the ``taskbuffer`` logger and stays subscribed; the
    remaining subscribers still receive the event and the run goes on.
    """

    def _on_next_core(self, value: TaskEvent) -> None:
        for observer in self.observers.copy():
            try:
                observer.on_next(value)
            except Exception:
                logger.exception(
                    "an event subscriber raised on a %r event of task %r",
                    value.type,
                    value.task.name,
                )
