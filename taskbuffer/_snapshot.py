"""What an event copies of its task and its run when emitted, and the snapshots built from it.

Emitting must cost next to nothing while a subscriber only counts events, so an event holds a
:class:`Capture`: the event's fields and a copy of what can change of the task's and the run's
state, filled in by ``TaskRunner._capture`` (the one place that knows the task's state). The
``TaskMetadata`` and the ``RunInfo`` are built from it only when a subscriber reads
``event.task`` or ``event.run``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import to_datetime
from ._metadata import TaskMetadata, make_metadata
from ._validation import error_message

if TYPE_CHECKING:
    from ._run import Run, RunInfo, RunState
    from ._steps import RunSteps

__all__ = ("Capture",)


class Capture:
    """An event's fields and its task's and run's state at emission time (see the module
    docstring). ``run`` is ``None`` for an event not tied to one run (``missed``)."""

    __slots__ = (
        "attempt",
        "blocked_by",
        "cron_schedule",
        "error",
        "error_count",
        "finished",
        "finished_runs",
        "labels",
        "last_error",
        "last_run",
        "next_run",
        "run",
        "run_count",
        "run_state",
        "run_steps",
        "status",
        "step_name",
        "task",
        "task_steps",
        "timestamp",
        "total_duration",
        "type",
    )

    type: Any
    timestamp: float
    step_name: str | None
    error: str | None
    task: Any
    status: Any
    run_count: int
    error_count: int
    last_error: BaseException | None
    last_run: float | None
    labels: dict[str, str] | None
    task_steps: RunSteps | None
    finished_runs: int
    total_duration: float
    next_run: float | None
    cron_schedule: str | None
    run: Run | None
    run_state: RunState
    attempt: int
    blocked_by: tuple[str, str] | None
    finished: float | None
    run_steps: RunSteps | None

    def task_name(self) -> str:
        """The task's name, without building its snapshot (for log messages)."""
        name: str | None = self.task.name
        return name or "unnamed"

    def run_info(self) -> RunInfo | None:
        """The run's snapshot as captured."""
        run = self.run
        if run is None:
            return None
        return run.info_as(
            self.run_state, self.attempt, self.blocked_by, self.finished, self.run_steps
        )

    def metadata(self) -> TaskMetadata:
        """The task's snapshot as captured."""
        task = self.task
        steps = self.task_steps
        last_run, next_run = self.last_run, self.next_run
        last_error = self.last_error
        finished_runs = self.finished_runs
        # In TaskMetadata's field order (make_metadata skips the dataclass __init__).
        return make_metadata(
            (
                task.name or "unnamed",
                task.version,
                self.status,
                [] if steps is None else steps.infos(),
                None if steps is None else steps.current_step(),
                0 if steps is None else steps.progress(),
                self.run_count,
                self.labels or {},
                None if last_error is None else error_message(last_error),
                self.error_count,
                None if last_run is None else to_datetime(last_run),
                None if next_run is None else to_datetime(next_run),
                self.cron_schedule,
                task.buffered,
                task.buffer_max,
                task.timeout,
                self.total_duration / finished_runs if finished_runs else None,
            )
        )
