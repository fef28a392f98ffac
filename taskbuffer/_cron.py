"""Cron and one-off scheduling for a TaskManager (placeholder: implemented in issue 4)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._metadata import ScheduledTaskInfo

if TYPE_CHECKING:
    from ._manager import TaskManager
    from ._task import Task

__all__ = ("Scheduler",)


class Scheduler:
    """The schedules of one manager: cron schedules and pending one-off runs."""

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager

    def validate(self, cron: str) -> None:
        raise NotImplementedError

    def schedule(self, task: Task[Any, Any], cron: str) -> None:
        raise NotImplementedError

    def remove(self, task: Task[Any, Any]) -> None:
        pass

    def schedule_at(self, task: Task[Any, Any], when: datetime, input: Any) -> None:
        raise NotImplementedError

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def scheduled_tasks(self) -> list[ScheduledTaskInfo]:
        return []

    def next_runs(self, limit: int) -> list[dict[str, Any]]:
        return []

    def count(self) -> int:
        return 0
