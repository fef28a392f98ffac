"""Declared steps of a task, and where each run is in them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ._clock import now_wall
from ._validation import check_number, safe_repr

__all__ = ("StepSpec", "StepStatus", "TaskStep", "TaskStepInfo")

StepStatus: TypeAlias = Literal["pending", "active", "completed"]


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
    """A task's declared steps; each run moves through them in a :class:`RunSteps` of its own."""

    __slots__ = ("index", "steps")

    def __init__(self, steps: tuple[TaskStep, ...]) -> None:
        self.steps = steps
        self.index = {step.name: i for i, step in enumerate(steps)}

    def check(self, name: str) -> int:
        """The position of step ``name``.

        :raises ValueError: ``name`` is not declared (the message lists the declared steps).
        """
        try:
            return self.index[name]
        except KeyError:
            declared = ", ".join(repr(s.name) for s in self.steps) or "none"
            raise ValueError(f"unknown step {name!r}; declared steps: {declared}") from None

    def start(self) -> RunSteps:
        """The steps of a new run: every one pending."""
        n = len(self.steps)
        return RunSteps(self, ["pending"] * n, [None] * n, [None] * n, [False] * n)


class RunSteps:
    """Where one run is in its task's declared steps: statuses, start and end times, and
    whether each completed step counts toward progress (a step marked completed only because
    the run ended before reaching it adds nothing)."""

    __slots__ = ("counted", "ends", "starts", "status", "tracker")

    def __init__(
        self,
        tracker: StepTracker,
        status: list[StepStatus],
        starts: list[float | None],
        ends: list[float | None],
        counted: list[bool],
    ) -> None:
        self.tracker = tracker
        self.status = status
        self.starts = starts
        self.ends = ends
        self.counted = counted

    def __repr__(self) -> str:
        return f"<RunSteps current={self.current_step()!r} progress={self.progress()}>"

    def copy(self) -> RunSteps:
        """A snapshot of where the run is now, for a value object built later."""
        return RunSteps(
            self.tracker,
            self.status.copy(),
            self.starts.copy(),
            self.ends.copy(),
            self.counted.copy(),
        )

    def move_to(self, target: int) -> None:
        """Finish the active step and start step number ``target``."""
        now = now_wall()
        status = self.status
        for i, current in enumerate(status):
            if current == "active":
                self._complete(i, now, counted=True)
                break
        status[target] = "active"
        self.starts[target] = now
        self.ends[target] = None
        self.counted[target] = False

    def _complete(self, i: int, now: float, *, counted: bool) -> None:
        self.status[i] = "completed"
        self.ends[i] = now
        self.counted[i] = counted

    def finish(self) -> None:
        """At a run's end the active step completes; pending ones complete without progress."""
        now = now_wall()
        for i, status in enumerate(self.status):
            if status == "active":
                self._complete(i, now, counted=True)
            elif status == "pending":
                self._complete(i, now, counted=False)

    def current_step(self) -> str | None:
        for step, status in zip(self.tracker.steps, self.status, strict=True):
            if status == "active":
                return step.name
        return None

    def completed_names(self) -> list[str]:
        steps = self.tracker.steps
        return [s.name for s, counted in zip(steps, self.counted, strict=True) if counted]

    def progress(self) -> int:
        total = 0.0
        for step, status, counted in zip(
            self.tracker.steps, self.status, self.counted, strict=True
        ):
            if status == "active":
                total += step.percentage / 2
            elif counted:
                total += step.percentage
        return min(100, math.floor(total + 0.5))

    def infos(self) -> list[TaskStepInfo]:
        statuses, starts, ends = self.status, self.starts, self.ends
        infos = []
        for i, step in enumerate(self.tracker.steps):
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
