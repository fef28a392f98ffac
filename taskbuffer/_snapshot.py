"""What an event copies of its task and its run when emitted, and the snapshots built from it.

Emitting must cost next to nothing while a subscriber only counts events, so an event holds a
capture: the event's fields and a copy of what can change of the task's and the run's state,
made by ``TaskRunner._capture`` (the one place that reads the task's state and writes a
capture). The ``TaskMetadata`` and the ``RunInfo`` are built from it only when a subscriber
reads ``event.task`` or ``event.run``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from ._clock import to_datetime
from ._metadata import TaskMetadata, make_metadata
from ._validation import error_message

if TYPE_CHECKING:
    from ._run import Run, RunInfo
    from ._steps import RunSteps

__all__ = (
    "Capture",
    "event_field",
    "event_fields",
    "metadata",
    "run_info",
    "source_of",
    "task_name",
)


# The layout of a capture: TaskRunner._capture writes it (in this order, its one writer), the
# readers below read it. (A tuple: an event is emitted on every run start and end while anybody
# listens, and a tuple of these values costs a third of a slotted object's attribute stores.)
(
    _TYPE,
    _TIMESTAMP,
    _STEP_NAME,
    _ERROR,
    _TASK,
    _STATUS,
    _RUN_COUNT,
    _ERROR_COUNT,
    _LAST_ERROR,
    _LAST_RUN,
    _LABELS,
    _FINISHED_RUNS,
    _TOTAL_DURATION,
    _NEXT_RUN,
    _CRON_SCHEDULE,
    _TASK_STEPS,
    _RUN,
    _RUN_STATE,
    _ATTEMPT,
    _BLOCKED_BY,
    _FINISHED,
    _RUN_STEPS,
) = range(22)
Capture: TypeAlias = tuple[Any, ...]
_EVENT_FIELDS = {"type": _TYPE, "timestamp": _TIMESTAMP, "step_name": _STEP_NAME, "error": _ERROR}


def event_field(name: str) -> Callable[[Any], Any]:
    """A reader of the event field ``name`` from a pending event's ``capture``."""
    index = _EVENT_FIELDS[name]

    def read(event: Any) -> Any:
        return event.capture[index]

    return read


def event_fields(c: Capture) -> tuple[Any, Any, Any, Any]:
    """The event's own fields: type, timestamp, step name, error."""
    return c[_TYPE], c[_TIMESTAMP], c[_STEP_NAME], c[_ERROR]


def source_of(c: Capture) -> Any:
    """The task that emitted the event."""
    return c[_TASK]


def task_name(c: Capture) -> str:
    """The task's name, without building its snapshot (for log messages)."""
    name: str | None = c[_TASK].name
    return name or "unnamed"


def run_info(c: Capture) -> RunInfo | None:
    """The run's snapshot as captured."""
    run: Run | None = c[_RUN]
    if run is None:
        return None
    return run.info_as(c[_RUN_STATE], c[_ATTEMPT], c[_BLOCKED_BY], c[_FINISHED], c[_RUN_STEPS])


def metadata(c: Capture) -> TaskMetadata:
    """The task's snapshot as captured."""
    task = c[_TASK]
    steps: RunSteps | None = c[_TASK_STEPS]
    last_run, next_run, last_error = c[_LAST_RUN], c[_NEXT_RUN], c[_LAST_ERROR]
    finished_runs = c[_FINISHED_RUNS]
    # In TaskMetadata's field order (make_metadata skips the dataclass __init__).
    return make_metadata(
        (
            task.name or "unnamed",
            task.version,
            c[_STATUS],
            [] if steps is None else steps.infos(),
            None if steps is None else steps.current_step(),
            0 if steps is None else steps.progress(),
            c[_RUN_COUNT],
            c[_LABELS] or {},
            None if last_error is None else error_message(last_error),
            c[_ERROR_COUNT],
            None if last_run is None else to_datetime(last_run),
            None if next_run is None else to_datetime(next_run),
            c[_CRON_SCHEDULE],
            task.buffered,
            task.buffer_max,
            task.timeout,
            c[_TOTAL_DURATION] / finished_runs if finished_runs else None,
        )
    )
