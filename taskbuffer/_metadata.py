"""Snapshots of task state: metadata, execution reports, schedule listings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias, cast

from ._steps import TaskStepInfo
from ._validation import error_message

__all__ = (
    "ScheduledTaskInfo",
    "TaskExecutionReport",
    "TaskMetadata",
    "TaskStatus",
    "make_metadata",
)

TaskStatus: TypeAlias = Literal["idle", "running", "completed", "failed"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskMetadata:
    """A snapshot of a task's state. Datetimes are timezone-aware; durations are seconds."""

    name: str
    version: str | None
    status: TaskStatus
    steps: list[TaskStepInfo]
    current_step: str | None
    current_progress: int
    run_count: int
    labels: dict[str, str]
    last_error: str | None
    error_count: int
    last_run: datetime | None
    next_run: datetime | None
    cron_schedule: str | None
    buffered: bool
    buffer_max: int | None
    timeout: float | None
    average_duration: float | None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready values (datetimes as ISO 8601 strings)."""
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "steps": [step.to_dict() for step in self.steps],
            "current_step": self.current_step,
            "current_progress": self.current_progress,
            "run_count": self.run_count,
            "labels": dict(self.labels),
            "last_error": self.last_error,
            "error_count": self.error_count,
            "last_run": _iso(self.last_run),
            "next_run": _iso(self.next_run),
            "cron_schedule": self.cron_schedule,
            "buffered": self.buffered,
            "buffer_max": self.buffer_max,
            "timeout": self.timeout,
            "average_duration": self.average_duration,
        }


class _Filling(TaskMetadata):
    """A ``TaskMetadata`` being filled in by :func:`make_metadata`; it never escapes.

    Same layout, but object's ``__init__``/``__setattr__``/``__delattr__`` instead of the
    frozen dataclass's, so each field is a plain slot store that CPython specialises.
    """

    __slots__ = ()
    __init__ = object.__init__
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


def make_metadata(values: tuple[Any, ...]) -> TaskMetadata:
    """A ``TaskMetadata`` from its field values in definition order, without the dataclass
    ``__init__`` (its frozen-attribute writes dominated the cost of reading ``event.task``)."""
    m = _Filling()
    (
        m.name,
        m.version,
        m.status,
        m.steps,
        m.current_step,
        m.current_progress,
        m.run_count,
        m.labels,
        m.last_error,
        m.error_count,
        m.last_run,
        m.next_run,
        m.cron_schedule,
        m.buffered,
        m.buffer_max,
        m.timeout,
        m.average_duration,
    ) = values
    object.__setattr__(m, "__class__", TaskMetadata)
    return cast(TaskMetadata, m)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskExecutionReport:
    """What one ``add_execute_remove_task`` run did. Times are epoch seconds."""

    task_name: str
    start_time: float
    end_time: float
    duration: float
    steps: list[TaskStepInfo]
    steps_completed: list[str]
    progress: int
    result: Any
    error: BaseException | None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (``error`` as its message, ``result`` as is)."""
        return {
            "task_name": self.task_name,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "duration": self.duration,
            "steps": [step.to_dict() for step in self.steps],
            "steps_completed": list(self.steps_completed),
            "progress": self.progress,
            "result": self.result,
            "error": None if self.error is None else error_message(self.error),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduledTaskInfo:
    """A scheduled task as ``TaskManager.get_scheduled_tasks()`` lists it."""

    name: str
    schedule: str
    next_run: datetime | None
    last_run: datetime | None
    steps: list[TaskStepInfo]
    metadata: TaskMetadata

    def to_dict(self) -> dict[str, Any]:
        """The listing as JSON-ready values."""
        return {
            "name": self.name,
            "schedule": self.schedule,
            "next_run": _iso(self.next_run),
            "last_run": _iso(self.last_run),
            "steps": [step.to_dict() for step in self.steps],
            "metadata": self.metadata.to_dict(),
        }
