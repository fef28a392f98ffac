"""Declared steps of a task and their progress within one run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ._clock import now_wall
from ._validation import check_number, safe_repr

__all__ = ("StepSpec", "StepStatus", "TaskStep", "TaskStepInfo")

StepStatus: TypeAlias = Literal["pending", "active", "completed"]
# Per-run step state: statuses, start times, end times, whether each counts toward progress.
StepState: TypeAlias = tuple[list[StepStatus], list[float | None], list[float | None], list[bool]]


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskStep:
    """A declared step: its name, a description, and its share of the progress (0-100)."""

    name: str
    description: str = ""
    percentage: float = 0


StepSpec: TypeAlias = TaskStep | Mapping[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskStepInfo:
    """A snapshot of one step: ``start_time``/``end_time`` are epoch seconds."""

    name: str
    description: str
    percentage: float
    status: StepStatus
    start_time: float | None
    end_time: float | None
    duration: float | None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready values."""
        return {
            "name": self.name,
            "description": self.description,
            "percentage": self.percentage,
            "status": self.status,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "duration": self.duration,
        }


def _coerce_step(spec: object, index: int) -> TaskStep:
    if isinstance(spec, TaskStep):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"name", "description", "percentage"}
        if unknown:
            raise ValueError(
                f"steps[{index}] has unknown keys {sorted(unknown)!r}; "
                "accepted keys are 'name', 'description' and 'percentage'"
            )
        if "name" not in spec:
            raise ValueError(f"steps[{index}] needs a 'name'")
        return TaskStep(
            name=spec["name"],
            description=spec.get("description", ""),
            percentage=spec.get("percentage", 0),
        )
    raise TypeError(
        f"steps[{index}] must be a TaskStep or a mapping with 'name', 'description' and "
        f"'percentage', not {type(spec).__name__}"
    )


def validate_steps(specs: object) -> tuple[TaskStep, ...]:
    """Check declared steps: unique string names, percentages 0-100 summing to at most 100."""
    if isinstance(specs, str | bytes) or not isinstance(specs, Sequence):
        raise TypeError(f"steps must be a sequence of TaskStep or mappings, not {safe_repr(specs)}")
    steps = tuple(_coerce_step(spec, i) for i, spec in enumerate(specs))
    seen: set[str] = set()
    total = 0.0
    for i, step in enumerate(steps):
        if not isinstance(step.name, str) or not step.name:
            raise ValueError(f"steps[{i}] name must be a non-empty string, not {step.name!r}")
        if step.name in seen:
            raise ValueError(f"step names must be unique; {step.name!r} is declared twice")
        seen.add(step.name)
        pct = check_number(
            f"step {step.name!r} percentage", step.percentage, minimum=0, maximum=100
        )
        total += pct
    if total > 100:
        raise ValueError(f"step percentages must sum to at most 100; they sum to {total:g}")
    return steps


class StepTracker:
    """The mutable state of a task's steps during (and after) its latest run."""

    __slots__ = ("_counted", "_ends", "_index", "_starts", "_status", "steps")

    def __init__(self, steps: tuple[TaskStep, ...]) -> None:
        self.steps = steps
        self._index = {step.name: i for i, step in enumerate(steps)}
        n = len(steps)
        self._status: list[StepStatus] = ["pending"] * n
        self._starts: list[float | None] = [None] * n
        self._ends: list[float | None] = [None] * n
        # A step completed by reaching it (counts toward progress) versus one marked
        # completed only because the run ended before it (adds nothing).
        self._counted = [False] * n

    def reset(self) -> None:
        n = len(self.steps)
        self._status = ["pending"] * n
        self._starts = [None] * n
        self._ends = [None] * n
        self._counted = [False] * n

    def _active(self) -> int | None:
        for i, status in enumerate(self._status):
            if status == "active":
                return i
        return None

    def notify(self, name: str) -> None:
        try:
            target = self._index[name]
        except KeyError:
            declared = ", ".join(repr(s.name) for s in self.steps) or "none"
            raise ValueError(f"unknown step {name!r}; declared steps: {declared}") from None
        now = now_wall()
        active = self._active()
        if active is not None:
            self._finish(active, now, counted=True)
        self._status[target] = "active"
        self._starts[target] = now
        self._ends[target] = None
        self._counted[target] = False

    def _finish(self, i: int, now: float, *, counted: bool) -> None:
        self._status[i] = "completed"
        self._ends[i] = now
        self._counted[i] = counted

    def finish_run(self) -> None:
        """At a run's end the active step completes; pending ones complete without progress."""
        if not self.steps:
            return
        now = now_wall()
        for i, status in enumerate(self._status):
            if status == "active":
                self._finish(i, now, counted=True)
            elif status == "pending":
                self._finish(i, now, counted=False)

    def capture(self) -> StepState:
        """A copy of the per-run state, for a snapshot built later."""
        return (self._status.copy(), self._starts.copy(), self._ends.copy(), self._counted.copy())

    def state(self) -> StepState:
        return (self._status, self._starts, self._ends, self._counted)

    def current_step(self, state: StepState | None = None) -> str | None:
        statuses = (state or self.state())[0]
        for step, status in zip(self.steps, statuses, strict=True):
            if status == "active":
                return step.name
        return None

    def completed_names(self) -> list[str]:
        return [s.name for s, counted in zip(self.steps, self._counted, strict=True) if counted]

    def progress(self, state: StepState | None = None) -> int:
        statuses, _, _, counted_flags = state or self.state()
        total = 0.0
        for step, status, counted in zip(self.steps, statuses, counted_flags, strict=True):
            if status == "active":
                total += step.percentage / 2
            elif counted:
                total += step.percentage
        return min(100, math.floor(total + 0.5))

    def infos(self, state: StepState | None = None) -> list[TaskStepInfo]:
        statuses, starts, ends, _ = state or self.state()
        infos = []
        for i, step in enumerate(self.steps):
            start, end = starts[i], ends[i]
            infos.append(
                TaskStepInfo(
                    name=step.name,
                    description=step.description,
                    percentage=step.percentage,
                    status=statuses[i],
                    start_time=start,
                    end_time=end,
                    duration=None if start is None or end is None else end - start,
                )
            )
        return infos
