"""One schedule of a manager's scheduler (a cron schedule or a pending one-off run) and the
listing of the soonest ones."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._clock import to_datetime
from ._cron import ONCE, CronSchedule

if TYPE_CHECKING:
    from ._task import Task

__all__ = ("Entry", "soonest_runs")


@dataclass(slots=True, eq=False)
class Entry:
    """One schedule: a cron schedule of a task, or one pending one-off run."""

    task: Task[Any, Any]
    when: float  # epoch seconds of the next fire
    cron: CronSchedule | None  # None for a one-off run
    input: Any
    # Breaks ties between equal instants, first scheduled first. A one-off run keeps its
    # number, so it has the same place in the manager's heap and in its task's heap.
    seq: int
    active: bool = True

    @property
    def schedule(self) -> str:
        return ONCE if self.cron is None else self.cron.expression


def soonest_runs(entries: Iterable[Entry], limit: int) -> list[dict[str, Any]]:
    """The ``limit`` soonest of ``entries`` as ``get_next_runs`` lists them."""
    soonest = heapq.nsmallest(limit, entries, key=lambda entry: entry.when)
    return [
        {
            "task_name": entry.task.name,
            "next_run": to_datetime(entry.when),
            "schedule": entry.schedule,
        }
        for entry in soonest
    ]
