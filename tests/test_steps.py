"""Declared steps: validation, ``notify_step``, progress and step metadata."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskbuffer import StepSpec, Task, TaskEvent, TaskStep, TaskStepInfo

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


def stepped(steps: Sequence[StepSpec], function: Callable[..., Any] = lambda: None) -> Task[Any]:
    return Task(task_function=function, steps=steps)


# -------------------------------------------------------------------------- validation


def test_steps_as_task_steps_or_mappings() -> None:
    t = stepped(
        [
            TaskStep(name="fetch", description="download", percentage=30),
            {"name": "parse", "description": "read it", "percentage": 50.5},
            {"name": "store"},
        ]
    )
    infos = t.get_steps_metadata()
    assert [(i.name, i.description, i.percentage, i.status) for i in infos] == [
        ("fetch", "download", 30, "pending"),
        ("parse", "read it", 50.5, "pending"),
        ("store", "", 0, "pending"),
    ]
    assert all(i.start_time is None and i.end_time is None and i.duration is None for i in infos)
    assert t.get_progress() == 0


def test_duplicate_step_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="step names must be unique; 'a' is declared twice"):
        stepped([{"name": "a"}, {"name": "b"}, TaskStep(name="a")])


@pytest.mark.parametrize("bad", [-0.1, 100.5, math.nan, math.inf])
def test_percentage_outside_0_to_100_is_rejected(bad: Any) -> None:
    with pytest.raises(
        ValueError, match=rf"step 'x' percentage must be a number from 0 to 100, not {bad!r}"
    ):
        stepped([{"name": "x", "percentage": bad}])


def test_percentages_summing_over_100_are_rejected() -> None:
    with pytest.raises(
        ValueError, match="step percentages must sum to at most 100; they sum to 110"
    ):
        stepped([{"name": "a", "percentage": 60}, {"name": "b", "percentage": 50}])


def test_percentages_may_sum_to_exactly_100() -> None:
    t = stepped([{"name": "a", "percentage": 60}, {"name": "b", "percentage": 40}])
    assert sum(step.percentage for step in t.get_steps_metadata()) == 100


def test_percentages_summing_just_over_100_are_rejected() -> None:
    with pytest.raises(ValueError, match="they sum to 100.5"):
        stepped([{"name": "a", "percentage": 50}, {"name": "b", "percentage": 50.5}])


@pytest.mark.parametrize("bad", ["", None, 3])
def test_step_name_must_be_a_non_empty_string(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"steps\[1\] name must be a non-empty string"):
        stepped([{"name": "ok"}, {"name": bad}])


def test_mapping_step_needs_a_name() -> None:
    with pytest.raises(ValueError, match=r"steps\[0\] needs a 'name'"):
        stepped([{"percentage": 10}])


def test_mapping_step_with_unknown_keys_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"steps\[0\] has unknown keys \['weight'\]; accepted keys"
    ):
        stepped([{"name": "a", "weight": 3}])


def test_step_of_another_type_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"steps\[0\] must be a TaskStep or a mapping.*not str"):
        stepped(["fetch"])  # type: ignore[list-item]


def test_steps_must_be_a_sequence() -> None:
    with pytest.raises(TypeError, match="steps must be a sequence of TaskStep or mappings"):
        stepped("fetch")  # type: ignore[arg-type]


@given(st.lists(st.integers(min_value=-50, max_value=150), max_size=6))
def test_percentages_are_accepted_exactly_when_each_is_0_to_100_and_they_sum_to_100(
    percentages: list[int],
) -> None:
    steps = [{"name": f"s{i}", "percentage": p} for i, p in enumerate(percentages)]
    valid = all(0 <= p <= 100 for p in percentages) and sum(percentages) <= 100
    if valid:
        assert len(stepped(steps).get_steps_metadata()) == len(percentages)
    else:
        with pytest.raises(ValueError, match="percentage"):
            stepped(steps)


# ------------------------------------------------------------------------- notify_step


def test_unknown_step_lists_the_declared_steps() -> None:
    t = stepped([{"name": "fetch"}, {"name": "parse"}])
    with pytest.raises(ValueError, match="unknown step 'store'; declared steps: 'fetch', 'parse'"):
        t.notify_step("store")


def test_unknown_step_without_declared_steps() -> None:
    with pytest.raises(ValueError, match="unknown step 'x'; declared steps: none"):
        stepped([]).notify_step("x")


async def test_progress_during_and_after_a_run(record: Record) -> None:
    seen: list[tuple[int, str | None, list[str]]] = []

    def snapshot() -> None:
        seen.append(
            (
                t.get_progress(),
                t.get_metadata().current_step,
                [i.status for i in t.get_steps_metadata()],
            )
        )

    def function() -> str:
        snapshot()
        t.notify_step("fetch")
        snapshot()
        t.notify_step("parse")
        snapshot()
        return "done"

    t = stepped(
        [
            {"name": "fetch", "percentage": 25},
            {"name": "parse", "percentage": 35},
            {"name": "store", "percentage": 40},
        ],
        function,
    )
    events = record(t)
    assert await t.trigger() == "done"
    assert seen == [
        (0, None, ["pending", "pending", "pending"]),
        (13, "fetch", ["active", "pending", "pending"]),  # 12.5 rounds half up
        (43, "parse", ["completed", "active", "pending"]),  # 25 + 17.5 = 42.5
    ]
    # The active step completes; the pending one is marked completed but adds nothing.
    assert t.get_progress() == 60
    assert [i.status for i in t.get_steps_metadata()] == ["completed"] * 3
    assert t.get_metadata().current_step is None
    assert t.get_metadata().current_progress == 60

    step_events = [event for event in events if event.type == "step"]
    assert [event.step_name for event in step_events] == ["fetch", "parse"]
    assert [event.task.current_step for event in step_events] == ["fetch", "parse"]
    assert [event.task.current_progress for event in step_events] == [13, 43]
    assert {event.task.status for event in step_events} == {"running"}


async def test_steps_reset_at_the_start_of_each_run() -> None:
    seen: list[list[str]] = []

    def function(step: str) -> None:
        seen.append([i.status for i in t.get_steps_metadata()])
        t.notify_step(step)

    t = stepped([{"name": "a", "percentage": 50}, {"name": "b", "percentage": 50}], function)
    await t.trigger("b")
    assert t.get_progress() == 50
    await t.trigger("a")
    assert seen == [["pending", "pending"], ["pending", "pending"]]
    assert t.get_progress() == 50
    assert [i.status for i in t.get_steps_metadata()] == ["completed", "completed"]


async def test_step_times_follow_the_loop_clock() -> None:
    async def function() -> None:
        t.notify_step("a")
        await asyncio.sleep(2)
        t.notify_step("b")
        await asyncio.sleep(3)

    t = stepped([{"name": "a"}, {"name": "b"}, {"name": "c"}], function)
    await t.trigger()
    a, b, c = t.get_steps_metadata()
    assert a.duration == pytest.approx(2.0)
    assert b.duration == pytest.approx(3.0)
    assert a.end_time == b.start_time
    assert c.start_time is None and c.duration is None and c.end_time == b.end_time
    assert c.status == "completed"


async def test_failed_run_completes_the_active_step() -> None:
    def function() -> None:
        t.notify_step("a")
        raise ValueError("fail")

    t = stepped([{"name": "a", "percentage": 30}, {"name": "b", "percentage": 70}], function)
    with pytest.raises(ValueError):
        await t.trigger()
    assert t.get_progress() == 30
    assert [i.status for i in t.get_steps_metadata()] == ["completed", "completed"]


async def test_step_info_is_frozen_and_json_ready() -> None:
    infos: list[TaskStepInfo] = []

    def function() -> None:
        t.notify_step("a")
        infos.extend(t.get_steps_metadata())

    t = stepped([{"name": "a", "description": "first", "percentage": 10}], function)
    await t.trigger()
    info = infos[0]
    assert isinstance(info, TaskStepInfo)
    as_dict = info.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["status"] == "active"
    assert as_dict["end_time"] is None
    with pytest.raises(AttributeError):
        info.status = "completed"  # type: ignore[misc]


# ------------------------------------------------------------------------- properties


def _within_100(percentages: list[float]) -> list[float]:
    """Trim each percentage so the running total stays within 100."""
    trimmed: list[float] = []
    total = 0.0
    for p in percentages:
        p = min(p, 100 - total)
        trimmed.append(p)
        total += p
    return trimmed


percentage_lists = (
    st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=8)
    .map(_within_100)
    .filter(lambda ps: sum(ps) <= 100)
)


def half_up(value: float) -> int:
    return min(100, math.floor(value + 0.5))


@given(percentages=percentage_lists, reached=st.integers(min_value=0, max_value=8))
def test_progress_is_finished_steps_plus_half_the_active_one(
    percentages: list[float], reached: int
) -> None:
    reached = min(reached, len(percentages))
    seen: list[int] = []

    def function() -> None:
        for i in range(reached):
            t.notify_step(f"s{i}")
            seen.append(t.get_progress())

    t = stepped([{"name": f"s{i}", "percentage": p} for i, p in enumerate(percentages)], function)
    asyncio.run(t.trigger())
    for i, progress in enumerate(seen):
        finished = 0.0
        for p in percentages[:i]:
            finished += p
        assert progress == half_up(finished + percentages[i] / 2)
        assert 0 <= progress <= 100
    assert len(seen) == reached


@given(percentages=percentage_lists, reached=st.integers(min_value=0, max_value=8))
def test_progress_after_a_run_counts_only_reached_steps(
    percentages: list[float], reached: int
) -> None:
    reached = min(reached, len(percentages))

    def function() -> None:
        for i in range(reached):
            t.notify_step(f"s{i}")

    t = stepped([{"name": f"s{i}", "percentage": p} for i, p in enumerate(percentages)], function)
    asyncio.run(t.trigger())
    finished = 0.0
    for p in percentages[:reached]:
        finished += p
    assert t.get_progress() == half_up(finished)
    assert [i.status for i in t.get_steps_metadata()] == ["completed"] * len(percentages)
