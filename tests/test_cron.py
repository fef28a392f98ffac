"""Cron: parsing, the daylight-saving policy, and cron schedules of a ``TaskManager``.

Manager tests run on looptime's virtual clock with the wall clock pinned to a known instant
(``wall_clock``), so fire instants are asserted exactly; one test runs on the real clock.
"""

from __future__ import annotations

import asyncio
import calendar
import gc
import logging
import re
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dt_time
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import croniter as croniter_module
import looptime
import pytest
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from taskbuffer import (
    InvalidCronExpressionError,
    Task,
    TaskConstraintGroup,
    TaskEvent,
    TaskManager,
    TaskNotFoundError,
    _clock,
)
from taskbuffer._clock import now_wall
from taskbuffer._cron import CronSchedule

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")

# A Monday, 12:00:00.25 UTC: the quarter second keeps the start off any tick.
MONDAY_NOON = datetime(2024, 6, 3, 12, 0, 0, 250000, tzinfo=UTC).timestamp()

Record = Callable[[Task[Any, Any]], list[TaskEvent]]
WallClock = Callable[[float], None]


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    """Pin the running loop's wall clock: ``now_wall()`` is ``epoch + loop.time()``.

    taskbuffer derives wall-clock instants from the loop clock through an anchor read from
    ``time.time()`` on the loop's first use; this feeds that first read.
    """

    def pin(epoch: float) -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(_clock, "time", SimpleNamespace(time=lambda: epoch + loop.time()))
        assert abs(now_wall() - (epoch + loop.time())) < 1e-6, "the wall clock was read before"

    return pin


def block_loop(seconds: float) -> None:
    """Stand for a blocking call of ``seconds`` on the loop's thread, on virtual time.

    looptime moves its clock only between loop iterations, so a truly blocking call costs no
    virtual time; this moves the clock the way such a call would (looptime has no public API
    for it, hence the private attribute).
    """
    loop = asyncio.get_running_loop()
    now, per_second = "_LoopTimeEventLoop__now", "_LoopTimeEventLoop__resolution_reciprocal"
    setattr(loop, now, getattr(loop, now) + round(seconds * getattr(loop, per_second)))


def recorder(name: str = "job") -> tuple[Task[None], list[float]]:
    """A task that records the wall-clock instant of each run's start."""
    starts: list[float] = []

    def job() -> None:
        starts.append(now_wall())

    return Task(task_function=job, name=name), starts


def instant(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def fires(expression: str, tz: tzinfo | None, start: datetime, count: int) -> list[str]:
    """The first ``count`` fire instants after ``start``, as ISO strings in ``tz``."""
    schedule = CronSchedule(expression, tz)
    t = start.timestamp()
    out = []
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(datetime.fromtimestamp(t, tz).isoformat())
    return out


def traced() -> bool:
    """Whether a tracer such as coverage's slows every Python call down."""
    if sys.gettrace() is not None:
        return True
    if sys.version_info >= (3, 12):
        return sys.monitoring.get_tool(sys.monitoring.COVERAGE_ID) is not None
    return False


def assert_nothing_left() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "*/5 * * * * *",
        "0 9 * * mon-fri",
        "0 0 L * *",
        "0 0 1 jan *",
        "0 0 * * 5#2",
        "  0   12 * * *  ",
    ],
)
def test_five_and_six_field_strings_are_accepted(expression: str) -> None:
    CronSchedule(expression)
    TaskManager().add_and_schedule_task(Task(task_function=lambda: None, name="t"), expression)


@pytest.mark.parametrize(
    ("expression", "count"),
    [("", 0), ("* * * *", 4), ("0 0 1 1 * 2030", 6), ("* * * * * * *", 7), ("@daily", 1)],
)
def test_strings_with_other_than_five_or_six_fields_are_rejected(
    expression: str, count: int
) -> None:
    if count == 6:  # six fields, but "2030" is no day of the week (and no year field exists)
        with pytest.raises(InvalidCronExpressionError, match=re.escape(repr(expression))):
            CronSchedule(expression)
        return
    with pytest.raises(InvalidCronExpressionError) as caught:
        CronSchedule(expression)
    assert str(caught.value) == (
        f"invalid cron expression {expression!r}: it has {count} field(s); expected 5 fields "
        "(minute hour day-of-month month day-of-week) or 6 fields with seconds first "
        "(second minute hour day-of-month month day-of-week)"
    )
    assert caught.value.expression == expression


@pytest.mark.parametrize(
    "expression",
    ["61 * * * *", "* 24 * * *", "*/0 * * * *", "a b c d e", "60 * * * * *", "* * 32 * *"],
)
def test_bad_field_values_are_rejected(expression: str) -> None:
    pattern = re.escape(f"invalid cron expression {expression!r}: ")
    with pytest.raises(InvalidCronExpressionError, match=pattern):
        CronSchedule(expression)


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *"])
def test_an_expression_that_never_matches_is_rejected(expression: str) -> None:
    with pytest.raises(InvalidCronExpressionError, match="it never matches a date"):
        CronSchedule(expression)


def test_invalid_cron_expression_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid cron expression 'nope'"):
        TaskManager().add_and_schedule_task(Task(task_function=lambda: None, name="t"), "nope")


def test_a_cron_string_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="a cron expression must be a str, not 5"):
        CronSchedule(5)  # type: ignore[arg-type]


def test_six_fields_put_the_seconds_first() -> None:
    start = datetime(2024, 6, 3, 12, 0, 1, tzinfo=UTC)
    assert fires("*/5 * * * * *", UTC, start, 3) == [
        "2024-06-03T12:00:05+00:00",
        "2024-06-03T12:00:10+00:00",
        "2024-06-03T12:00:15+00:00",
    ]
    # second 30 of minute 0 of every hour
    assert fires("30 0 * * * *", UTC, start, 2) == [
        "2024-06-03T12:00:30+00:00",
        "2024-06-03T13:00:30+00:00",
    ]


def test_five_fields_have_minute_precision() -> None:
    start = datetime(2024, 6, 3, 12, 0, 1, tzinfo=UTC)
    assert fires("*/20 * * * *", UTC, start, 3) == [
        "2024-06-03T12:20:00+00:00",
        "2024-06-03T12:40:00+00:00",
        "2024-06-03T13:00:00+00:00",
    ]


def test_fire_instants_are_strictly_after_the_given_instant() -> None:
    schedule = CronSchedule("* * * * * *", UTC)
    t = datetime(2024, 6, 3, 12, 0, 0, tzinfo=UTC).timestamp()
    assert schedule.next_after(t) == t + 1
    assert schedule.next_after(t - 0.5) == t
    assert schedule.next_after(t + 0.999) == t + 1


@pytest.mark.parametrize(
    ("expression", "fixed_time"),
    [
        ("30 2 * * *", True),
        ("0 */6 * * *", True),
        ("* * 2 * * *", True),
        ("* 2 * * * *", False),  # seconds first: minute 2 of every hour
        ("*/5 * * * *", False),
        ("0 * * * *", False),
        ("*/10 * * * * *", False),
        ("0 0-23 * * *", False),
        ("0 0 1 * *", True),
    ],
)
def test_expressions_are_fixed_time_when_they_name_hours(expression: str, fixed_time: bool) -> None:
    assert CronSchedule(expression).fixed_time is fixed_time


# ---------------------------------------------------------------- daylight saving time

# Europe/Berlin: 2024-03-31 02:00 CET -> 03:00 CEST; 2024-10-27 03:00 CEST -> 02:00 CET.
# America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
DST_GOLDEN: list[tuple[str, ZoneInfo, datetime, list[str]]] = [
    # A fixed-time job in the skipped hour runs once, right after the jump.
    (
        "30 2 * * *",
        BERLIN,
        datetime(2024, 3, 30),
        ["2024-03-30T02:30:00+01:00", "2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"],
    ),
    (
        "30 2 * * *",
        NEW_YORK,
        datetime(2024, 3, 9),
        ["2024-03-09T02:30:00-05:00", "2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"],
    ),
    # Several times inside one jump make one run; a time right after it is that same run.
    (
        "0,30 2,3 * * *",
        BERLIN,
        datetime(2024, 3, 31),
        ["2024-03-31T03:00:00+02:00", "2024-03-31T03:30:00+02:00", "2024-04-01T02:00:00+02:00"],
    ),
    # A fixed-time job in the repeated hour runs once, at the first occurrence.
    (
        "30 2 * * *",
        BERLIN,
        datetime(2024, 10, 26),
        ["2024-10-26T02:30:00+02:00", "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"],
    ),
    (
        "30 1 * * *",
        NEW_YORK,
        datetime(2024, 11, 2),
        ["2024-11-02T01:30:00-04:00", "2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"],
    ),
    (
        "0 */2 * * *",
        BERLIN,
        datetime(2024, 10, 27, 1),
        ["2024-10-27T02:00:00+02:00", "2024-10-27T04:00:00+01:00", "2024-10-27T06:00:00+01:00"],
    ),
    # Interval-like jobs keep their interval in real elapsed time across a jump forward ...
    (
        "*/30 * * * *",
        BERLIN,
        datetime(2024, 3, 31, 1),
        ["2024-03-31T01:30:00+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T03:30:00+02:00"],
    ),
    (
        "*/20 * * * * *",
        NEW_YORK,
        datetime(2024, 3, 10, 1, 59, 30),
        ["2024-03-10T01:59:40-05:00", "2024-03-10T03:00:00-04:00", "2024-03-10T03:00:20-04:00"],
    ),
    # ... and run in both passes of a repeated hour.
    (
        "*/30 * * * *",
        BERLIN,
        datetime(2024, 10, 27, 1, 50),
        [
            "2024-10-27T02:00:00+02:00",
            "2024-10-27T02:30:00+02:00",
            "2024-10-27T02:00:00+01:00",
            "2024-10-27T02:30:00+01:00",
            "2024-10-27T03:00:00+01:00",
        ],
    ),
    (
        "*/15 * * * *",
        NEW_YORK,
        datetime(2024, 11, 3, 1, 40),
        [
            "2024-11-03T01:45:00-04:00",
            "2024-11-03T01:00:00-05:00",
            "2024-11-03T01:15:00-05:00",
            "2024-11-03T01:30:00-05:00",
            "2024-11-03T01:45:00-05:00",
            "2024-11-03T02:00:00-05:00",
        ],
    ),
    # Leap day, end of month.
    (
        "0 12 29 2 *",
        BERLIN,
        datetime(2023, 1, 1),
        ["2024-02-29T12:00:00+01:00", "2028-02-29T12:00:00+01:00"],
    ),
    (
        "0 0 0 29 2 *",
        NEW_YORK,
        datetime(2024, 3, 1),
        ["2028-02-29T00:00:00-05:00", "2032-02-29T00:00:00-05:00"],
    ),
    (
        "0 0 L * *",
        BERLIN,
        datetime(2024, 1, 1),
        [
            "2024-01-31T00:00:00+01:00",
            "2024-02-29T00:00:00+01:00",
            "2024-03-31T00:00:00+01:00",
            "2024-04-30T00:00:00+02:00",
        ],
    ),
    (
        "0 0 L 2 *",
        NEW_YORK,
        datetime(2023, 1, 1),
        ["2023-02-28T00:00:00-05:00", "2024-02-29T00:00:00-05:00", "2025-02-28T00:00:00-05:00"],
    ),
    (
        "0 0 31 * *",
        NEW_YORK,
        datetime(2024, 1, 1),
        [
            "2024-01-31T00:00:00-05:00",
            "2024-03-31T00:00:00-04:00",
            "2024-05-31T00:00:00-04:00",
            "2024-07-31T00:00:00-04:00",
            "2024-08-31T00:00:00-04:00",
            "2024-10-31T00:00:00-04:00",
            "2024-12-31T00:00:00-05:00",
        ],
    ),
    (
        "0 6 30 * *",
        BERLIN,
        datetime(2025, 1, 31),
        ["2025-03-30T06:00:00+02:00", "2025-04-30T06:00:00+02:00"],
    ),
]


@pytest.mark.parametrize(
    ("expression", "tz", "start", "expected"),
    DST_GOLDEN,
    ids=[f"{e}|{tz}|{s:%Y-%m-%d}" for e, tz, s, _ in DST_GOLDEN],
)
def test_daylight_saving_and_calendar_golden_cases(
    expression: str, tz: ZoneInfo, start: datetime, expected: list[str]
) -> None:
    assert fires(expression, tz, start.replace(tzinfo=tz), len(expected)) == expected


def test_a_fixed_time_job_started_inside_the_repeated_hour_does_not_run_it_again() -> None:
    # 02:10 CET on 2024-10-27 is the second pass: 02:30 already happened (at 02:30 CEST).
    start = datetime(2024, 10, 27, 2, 10, fold=1, tzinfo=BERLIN)
    assert fires("30 2 * * *", BERLIN, start, 1) == ["2024-10-28T02:30:00+01:00"]
    # An interval-like job runs in the second pass as usual.
    assert fires("*/30 * * * *", BERLIN, start, 1) == ["2024-10-27T02:30:00+01:00"]


def test_the_default_zone_is_local_time(local_zone: Callable[[str], None]) -> None:
    local_zone("America/New_York")
    schedule = CronSchedule("30 2 * * *")
    first = schedule.next_after(instant("2024-03-09T00:00:00-05:00"))
    assert first == instant("2024-03-09T02:30:00-05:00")
    assert schedule.next_after(first) == instant("2024-03-10T03:00:00-04:00")  # the jump


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the process's local time zone (``TZ``) for one test."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


# ---------------------------------------------------- property: a year of random schedules


@dataclass(frozen=True)
class Spec:
    """A generated cron expression and the value sets it stands for."""

    text: str
    seconds: frozenset[int] | None  # None: a 5-field expression
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def matches(self, local: datetime) -> bool:
        if self.seconds is not None and local.second not in self.seconds:
            return False
        if local.minute not in self.minutes or local.hour not in self.hours:
            return False
        if local.month not in self.months:
            return False
        return local.day in self.days and local.isoweekday() % 7 in self.weekdays


@st.composite
def cron_field(draw: st.DrawFn, low: int, high: int, step: int = 1) -> tuple[str, frozenset[int]]:
    values = list(range(low, high + 1, step))
    kind = draw(st.sampled_from(["*", "step", "value", "range", "list"]))
    if kind == "*" and step == 1:
        return "*", frozenset(values)
    if kind in ("*", "step"):
        n = draw(st.sampled_from([k for k in (2, 3, 4, 5, 6, 10, 15, 20, 30) if k < high - low]))
        n *= step
        return f"{low}-{high}/{n}" if step > 1 else f"*/{n}", frozenset(range(low, high + 1, n))
    if kind == "value":
        v = draw(st.sampled_from(values))
        return str(v), frozenset({v})
    if kind == "range":
        # Distinct bounds: croniter reads an equal range ("5-5") as the whole cycle.
        a, b = sorted(draw(st.lists(st.sampled_from(values), min_size=2, max_size=2, unique=True)))
        if step > 1:
            return ",".join(map(str, range(a, b + 1, step))), frozenset(range(a, b + 1, step))
        return f"{a}-{b}", frozenset(range(a, b + 1))
    chosen = sorted(set(draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))))
    return ",".join(map(str, chosen)), frozenset(chosen)


@st.composite
def cron_specs(draw: st.DrawFn) -> Spec:
    six = draw(st.booleans())
    # Seconds on a 5 s grid, so that the brute-force oracle below can step 5 s at a time.
    seconds = draw(cron_field(0, 55, step=5)) if six else None
    minutes = draw(cron_field(0, 59))
    hours = draw(cron_field(0, 23))
    # At most one of the day fields: how two combine is the day rule's own property test.
    day_field = draw(st.sampled_from(["neither", "days", "weekdays"]))
    days = draw(cron_field(1, 31)) if day_field == "days" else ("*", frozenset(range(1, 32)))
    months = draw(cron_field(1, 12)) if draw(st.booleans()) else ("*", frozenset(range(1, 13)))
    every_weekday = ("*", frozenset(range(7)))
    weekdays = draw(cron_field(0, 6)) if day_field == "weekdays" else every_weekday
    fields = [minutes[0], hours[0], days[0], months[0], weekdays[0]]
    if seconds is not None:
        fields.insert(0, seconds[0])
    return Spec(
        text=" ".join(fields),
        seconds=None if seconds is None else seconds[1],
        minutes=minutes[1],
        hours=hours[1],
        days=days[1],
        months=months[1],
        weekdays=weekdays[1],
    )


def transitions(tz: ZoneInfo, year: int) -> list[float]:
    """The instants in ``year`` at which ``tz`` changes its UTC offset."""

    def offset(t: float) -> timedelta | None:
        return datetime.fromtimestamp(t, tz).utcoffset()

    found = []
    t = datetime(year, 1, 1, tzinfo=UTC).timestamp()
    end = datetime(year + 1, 1, 1, tzinfo=UTC).timestamp()
    while t < end:
        if offset(t) != offset(t + 86400):
            lo, hi = int(t), int(t + 86400)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if offset(mid) != offset(lo) else (mid, hi)
            found.append(float(hi))
        t += 86400
    return found


def oracle(spec: Spec, tz: ZoneInfo, start: float, end: float) -> list[float]:
    """The fire instants in ``(start, end]`` by brute force, from the written policy."""
    step = 60 if spec.seconds is None else 5
    fixed_time = len(spec.hours) < 24

    def wall(t: float) -> datetime:
        return datetime.fromtimestamp(t, tz).replace(tzinfo=None)

    out = []
    reached = wall(start)  # the latest local time the clock has shown
    t = start + step
    while t <= end:
        local = wall(t)
        if fixed_time:
            # Fires the first time the clock reaches or passes a matching time.
            if local > reached:
                shown = reached + timedelta(seconds=step)
                while shown <= local and not spec.matches(shown):
                    shown += timedelta(seconds=step)
                if shown <= local:
                    out.append(t)
                reached = local
        elif spec.matches(local):  # interval-like: whenever the clock shows a matching time
            out.append(t)
        t += step
    return out


@settings(max_examples=80, deadline=None)
@given(
    spec=cron_specs(),
    tz=st.sampled_from([BERLIN, NEW_YORK, ZoneInfo("Australia/Lord_Howe")]),
    year=st.integers(2021, 2027),
)
def test_fire_instants_over_a_year_strictly_increase_and_follow_the_policy(
    spec: Spec, tz: ZoneInfo, year: int
) -> None:
    try:
        schedule = CronSchedule(spec.text, tz)
    except InvalidCronExpressionError:
        assume(False)  # e.g. "0 0 31 2 *": never matches
        raise
    assert schedule.fixed_time is (len(spec.hours) < 24)
    window = 3 * 3600.0
    year_start = datetime(year, 1, 1, tzinfo=tz).timestamp()
    year_end = datetime(year + 1, 1, 1, tzinfo=tz).timestamp()
    # Walk the year: up to 300 fires from its start, then around each offset change, where the
    # result must equal the brute-force oracle; every fire is later than the one before.
    seen: list[float] = []
    t = year_start
    for _ in range(300):
        t = schedule.next_after(t)
        if t >= year_end:
            break
        seen.append(t)
    for change in transitions(tz, year):
        start, end = change - window, change + window
        expected = oracle(spec, tz, start, end)
        got = []
        t = schedule.next_after(start)
        while t <= end:
            got.append(t)
            t = schedule.next_after(t)
        assert got == expected, (spec.text, str(tz), datetime.fromtimestamp(change, tz))
        seen.extend(x for x in got if not seen or x > seen[-1])
        # Jumping in anywhere gives the next fire of the walk.
        for probe in got[:5]:
            assert schedule.next_after(probe - 0.5) == probe
    t = schedule.next_after(seen[-1] if seen else year_start)
    seen.append(t)
    assert all(a < b for a, b in zip(seen, seen[1:], strict=False))
    for fire in seen:
        local = datetime.fromtimestamp(fire, tz).replace(tzinfo=None)
        # Every fire shows a matching time, except a fixed-time run right after a jump.
        assert spec.matches(local) or (schedule.fixed_time and fire in transitions(tz, year))


# --------------------------------------------------------------------------- the day rule

# A day field is given unless it is "*" or "?"; with both given, a day matching either counts.


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        # Day 1 (every */100 is day 1) or the fourth Monday.
        (
            "1 1 */100 * MON#4",
            "2020-01-01T00:00:00+00:00",
            ["2020-01-01T01:01", "2020-01-27T01:01", "2020-02-01T01:01", "2020-02-24T01:01"],
        ),
        # Days 1-7 or the first Monday (always one of them): not only the first Mondays.
        (
            "0 0 1-7 * 1#1",
            "2024-05-31T12:00:00+00:00",
            [f"2024-06-0{d}T00:00" for d in range(1, 8)] + ["2024-07-01T00:00"],
        ),
        # Mondays or the weekday nearest the 15th (Saturday 2024-06-15: Friday the 14th).
        (
            "0 0 15W * 1",
            "2024-06-01T00:00:00+00:00",
            [
                "2024-06-03T00:00",
                "2024-06-10T00:00",
                "2024-06-14T00:00",
                "2024-06-17T00:00",
                "2024-06-24T00:00",
                "2024-07-01T00:00",
            ],
        ),
    ],
)
async def test_a_day_matching_either_day_field_counts_with_hash_and_w(
    wall_clock: WallClock, expression: str, start: str, expected: list[str]
) -> None:
    wall_clock(instant(start))
    job, starts = recorder()
    end = instant(f"{expected[-1]}+00:00")
    async with asyncio.timeout(end - instant(start) + 60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, expression)
        await asyncio.sleep(end - now_wall() + 1)
    assert starts == [instant(f"{e}+00:00") for e in expected]


DAY_RULE_GOLDEN: list[tuple[str, datetime, list[str]]] = [
    # The last day of the month or the last Friday.
    ("0 0 L * L5", datetime(2024, 5, 1), ["2024-05-31", "2024-06-28", "2024-06-30", "2024-07-26"]),
    # The weekday nearest the 1st (never in the month before) or the second Monday.
    ("0 0 1W * 1#2", datetime(2024, 5, 31), ["2024-06-03", "2024-06-10", "2024-07-01"]),
    # A day field that never matches (February 30th) leaves the other one.
    ("0 0 30 2 1", datetime(2024, 2, 20), ["2024-02-26", "2025-02-03"]),
    # "*/2" and "0-6" are both given: every day (croniter alone: every other day).
    ("0 0 */2 * 0-6", datetime(2024, 6, 1), ["2024-06-02", "2024-06-03", "2024-06-04"]),
    ("0 0 1-31 * */2", datetime(2024, 6, 1), ["2024-06-02", "2024-06-03", "2024-06-04"]),
    # "L" ends a range: days 28 to the last.
    ("0 0 28-L * *", datetime(2024, 2, 27), ["2024-02-28", "2024-02-29", "2024-03-28"]),
    # Past the month's end, "nW" is the weekday nearest its last day (2024-06-30 is a Sunday).
    ("0 0 31W * *", datetime(2024, 6, 1), ["2024-06-28", "2024-07-31", "2024-08-30"]),
    # "?" is not given: the other field alone decides.
    ("0 0 ? * 1#1", datetime(2024, 6, 1), ["2024-06-03", "2024-07-01"]),
    ("0 0 15W * ?", datetime(2024, 6, 1), ["2024-06-14", "2024-07-15"]),
    # A list of "#" and "L" items is their union.
    ("0 0 * * 1#1,L5", datetime(2024, 6, 1), ["2024-06-03", "2024-06-28", "2024-07-01"]),
    ("0 0 * * mon-wed#2", datetime(2024, 6, 1), ["2024-06-10", "2024-06-11", "2024-06-12"]),
    # Seconds first: both sides fire at the same times of day.
    (
        "30 0 12 1 * 1#1",
        datetime(2024, 6, 1),
        ["2024-06-01T12:00:30", "2024-06-03T12:00:30", "2024-07-01T12:00:30"],
    ),
]


@pytest.mark.parametrize(("expression", "start", "expected"), DAY_RULE_GOLDEN)
def test_the_day_rule_golden_cases(expression: str, start: datetime, expected: list[str]) -> None:
    got = fires(expression, UTC, start.replace(tzinfo=UTC), len(expected))
    assert got == [datetime.fromisoformat(e).replace(tzinfo=UTC).isoformat() for e in expected]


def test_random_fields_fire_at_one_time_of_day_on_both_day_fields() -> None:
    # croniter picks an "R" value at each parse; both day fields must use the same one.
    schedule = CronSchedule("R R 1 * 1", UTC)
    first = schedule.next_after(instant("2024-06-30T00:00:00+00:00"))  # Monday 2024-07-01
    later = [schedule.next_after(first)]  # Monday 2024-07-08
    local = [datetime.fromtimestamp(t, UTC) for t in (first, *later)]
    assert [t.date().isoformat() for t in local] == ["2024-07-01", "2024-07-08"]
    assert local[0].time() == local[1].time()


@pytest.mark.parametrize("day_of_week", ["1#1,5", "1#1,1", "0-6,1#1", "L5,mon", "mon,fri#2"])
def test_a_day_of_week_list_mixing_plain_days_and_hash_or_l_is_rejected(
    day_of_week: str,
) -> None:
    expression = f"0 0 * * {day_of_week}"
    with pytest.raises(InvalidCronExpressionError) as caught:
        CronSchedule(expression)
    assert caught.value.reason == (
        f"its day-of-week field {day_of_week!r} mixes plain days with '#' or 'L' items; "
        "a day-of-week list is all plain days or all '#' and 'L' items"
    )


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        # A reversed range wraps around the end of its field: Friday to Monday ...
        ("0 0 * * 5-1", datetime(2024, 6, 6), ["06-07", "06-08", "06-09", "06-10", "06-14"]),
        ("0 0 * * fri-mon", datetime(2024, 6, 6), ["06-07", "06-08", "06-09", "06-10", "06-14"]),
        # ... days 30, 31, 1 and 2 (a month without the 30th or 31st skips them) ...
        ("0 0 30-2 * *", datetime(2024, 1, 29), ["01-30", "01-31", "02-01", "02-02", "03-01"]),
        # ... November to February.
        ("0 0 1 11-2 *", datetime(2024, 6, 1), ["11-01", "12-01", "01-01", "02-01", "11-01"]),
        # A step counts on across the wrap: Friday, Sunday, Tuesday.
        ("0 0 * * fri-tue/2", datetime(2024, 6, 6), ["06-07", "06-09", "06-11", "06-14"]),
        # An equal range is the whole cycle (write "5" for Friday).
        ("0 0 * * 5-5", datetime(2024, 6, 6), ["06-07", "06-08", "06-09", "06-10", "06-11"]),
        ("0 0 5-5 * *", datetime(2024, 6, 6), ["06-07", "06-08", "06-09", "06-10", "06-11"]),
        # A day field is given unless it is "*": "0-6" matches every day, so does the union.
        ("0 0 1 * 0-6", datetime(2024, 6, 6), ["06-07", "06-08", "06-09", "06-10", "06-11"]),
    ],
)
def test_how_ranges_are_read(expression: str, start: datetime, expected: list[str]) -> None:
    got = fires(expression, UTC, start.replace(tzinfo=UTC), len(expected))
    assert [g[5:10] for g in got] == expected


def nearest_weekday(year: int, month: int, day: int) -> int:
    """The weekday (Monday to Friday) nearest ``day`` within the month; past its end, the end."""
    last = calendar.monthrange(year, month)[1]
    day = min(day, last)
    weekday = calendar.weekday(year, month, day)  # 0 is Monday
    if weekday == 5:  # Saturday: the Friday before, or the Monday after the 1st
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: the Monday after, or the Friday before the last day
        return day + 1 if day < last else day - 2
    return day


@dataclass(frozen=True)
class DayField:
    """A generated day field and which days it matches."""

    text: str
    matches: Callable[[date], bool]

    @property
    def given(self) -> bool:
        return self.text not in ("*", "?")


def last_day(d: date) -> int:
    return calendar.monthrange(d.year, d.month)[1]


def weekday(d: date) -> int:
    """The cron day of the week: 0 is Sunday."""
    return d.isoweekday() % 7


@st.composite
def days_of_month(draw: st.DrawFn) -> DayField:
    kind = draw(st.sampled_from(["*", "?", "plain", "L", "L-list", "W"]))
    if kind in ("*", "?"):
        return DayField(kind, lambda d: True)
    if kind == "plain":
        text, values = draw(cron_field(1, 31))
        return DayField(text, lambda d: d.day in values)
    if kind == "L":
        return DayField("L", lambda d: d.day == last_day(d))
    if kind == "L-list":
        n = draw(st.integers(1, 31))
        return DayField(f"{n},L", lambda d: d.day in (n, last_day(d)))
    n = draw(st.integers(1, 31))
    text = draw(st.sampled_from([f"{n}W", f"W{n}"]))
    return DayField(text, lambda d: d.day == nearest_weekday(d.year, d.month, n))


WEEKDAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


@st.composite
def nth_weekday(draw: st.DrawFn) -> tuple[str, Callable[[date], bool]]:
    kind = draw(st.sampled_from(["#", "name#", "range#", "L"]))
    if kind == "range#":
        a, b = sorted(draw(st.lists(st.integers(0, 6), min_size=2, max_size=2, unique=True)))
        k = draw(st.integers(1, 5))
        text = f"{WEEKDAY_NAMES[a]}-{WEEKDAY_NAMES[b]}#{k}"
        return text, lambda d: a <= weekday(d) <= b and (d.day - 1) // 7 + 1 == k
    w = draw(st.integers(0, 7))  # 7 is Sunday too
    if kind == "L":
        return f"L{w}", lambda d: weekday(d) == w % 7 and d.day + 7 > last_day(d)
    k = draw(st.integers(1, 5))
    text = f"{WEEKDAY_NAMES[w % 7]}#{k}" if kind == "name#" else f"{w}#{k}"
    return text, lambda d: weekday(d) == w % 7 and (d.day - 1) // 7 + 1 == k


@st.composite
def days_of_week(draw: st.DrawFn) -> DayField:
    kind = draw(st.sampled_from(["*", "?", "plain", "nth", "nth"]))
    if kind in ("*", "?"):
        return DayField(kind, lambda d: True)
    if kind == "plain":
        text, values = draw(cron_field(0, 6))
        return DayField(text, lambda d: weekday(d) in values)
    items = draw(st.lists(nth_weekday(), min_size=1, max_size=2))
    return DayField(
        ",".join(text for text, _ in items), lambda d: any(match(d) for _, match in items)
    )


def day_rule(days: DayField, weekdays: DayField) -> Callable[[date], bool]:
    """The documented rule, day by day."""
    if days.given and weekdays.given:
        return lambda d: days.matches(d) or weekdays.matches(d)
    if days.given:
        return days.matches
    return weekdays.matches


@settings(max_examples=50, deadline=None)
@given(
    days=days_of_month(),
    weekdays=days_of_week(),
    months=st.one_of(st.just(("*", frozenset(range(1, 13)))), cron_field(1, 12)),
    hours=st.lists(st.sampled_from([0, 4, 9, 12, 23]), min_size=1, max_size=2, unique=True),
    minute=st.integers(0, 59),
    second=st.none() | st.integers(0, 59),
    tz=st.sampled_from([UTC, BERLIN, NEW_YORK]),
    year=st.integers(2020, 2030),
)
def test_fire_instants_follow_the_day_rule_with_hash_l_and_w(
    days: DayField,
    weekdays: DayField,
    months: tuple[str, frozenset[int]],
    hours: list[int],
    minute: int,
    second: int | None,
    tz: tzinfo,
    year: int,
) -> None:
    """Compare with a day-by-day evaluation of the rule over three years (or 150 fires)."""
    special = re.compile(r"[#LW]")
    assume(special.search(days.text) or special.search(weekdays.text))
    hours = sorted(hours)  # none near a daylight-saving change: the day rule alone is tested
    fields = [str(minute), ",".join(map(str, hours)), days.text, months[0], weekdays.text]
    expression = " ".join(fields if second is None else [str(second), *fields])
    rule = day_rule(days, weekdays)
    start = datetime(year, 1, 1, tzinfo=tz).timestamp() - 0.5
    expected = []
    day = date(year, 1, 1)
    while day.year < year + 3:
        if day.month in months[1] and rule(day):
            for hour in hours:
                at = datetime.combine(day, dt_time(hour, minute, second or 0), tz)
                expected.append(at.timestamp())
        day += timedelta(days=1)
    try:
        schedule = CronSchedule(expression, tz)
    except InvalidCronExpressionError as exc:
        # Only a schedule that matches nothing (in croniter's 50-year horizon) is rejected.
        assert exc.reason == "it never matches a date" and not expected, expression
        return
    end = datetime(year + 3, 1, 1, tzinfo=tz).timestamp()
    got: list[float] = []
    t = start
    while len(got) < 150:
        t = schedule.next_after(t)
        if t >= end:
            break
        got.append(t)
    assert [iso(g, tz) for g in got] == [iso(e, tz) for e in expected[:150]], expression
    # Starting anywhere gives the next fire.
    for probe in (start + 86400 * 17.3, start + 86400 * 200.7, got[-1] - 1 if got else start):
        i = bisect_right(expected, probe)
        if i < len(expected):
            assert iso(schedule.next_after(probe), tz) == iso(expected[i], tz), (expression, probe)


def iso(t: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


# ----------------------------------------------------------------------- the manager


async def test_schedules_are_listed_as_soon_as_they_are_added(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)
    m = TaskManager(timezone=UTC)
    job, _ = recorder("job")
    other, _ = recorder("other")
    m.add_and_schedule_task(job, "*/10 * * * * *")
    m.add_and_schedule_task(other, "0 13 * * *")
    [info_job, info_other] = m.get_scheduled_tasks()
    assert (info_job.name, info_job.schedule) == ("job", "*/10 * * * * *")
    assert info_job.next_run == datetime(2024, 6, 3, 12, 0, 10, tzinfo=UTC)
    assert info_job.last_run is None and info_job.metadata.name == "job"
    assert info_other.next_run == datetime(2024, 6, 3, 13, 0, tzinfo=UTC)
    metadata = m.get_task_metadata("job")
    assert metadata is not None
    assert metadata.cron_schedule == "*/10 * * * * *"
    assert metadata.next_run == datetime(2024, 6, 3, 12, 0, 10, tzinfo=UTC)
    assert m.get_next_scheduled_runs() == [
        {
            "task_name": "job",
            "next_run": datetime(2024, 6, 3, 12, 0, 10, tzinfo=UTC),
            "schedule": "*/10 * * * * *",
        },
        {
            "task_name": "other",
            "next_run": datetime(2024, 6, 3, 13, 0, tzinfo=UTC),
            "schedule": "0 13 * * *",
        },
    ]
    assert [r["task_name"] for r in m.get_next_scheduled_runs(1)] == ["job"]
    assert m.get_next_scheduled_runs(0) == []
    assert m.statistics().scheduled == 2
    assert info_job.to_dict()["next_run"] == "2024-06-03T12:00:10+00:00"


async def test_a_listing_shows_the_last_run_and_steps(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)

    def work() -> None:
        job.notify_step("fetch")

    job: Task[None] = Task(
        task_function=work,
        name="job",
        steps=[{"name": "fetch", "description": "get it", "percentage": 100}],
    )
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, "*/10 * * * * *")
        await asyncio.sleep(10)
        [info] = m.get_scheduled_tasks()
    assert info.last_run == datetime(2024, 6, 3, 12, 0, 10, tzinfo=UTC)
    assert info.next_run == datetime(2024, 6, 3, 12, 0, 20, tzinfo=UTC)
    assert [(s.name, s.status) for s in info.steps] == [("fetch", "completed")]
    assert info.metadata.run_count == 1 and info.metadata.cron_schedule == "*/10 * * * * *"


async def test_add_execute_remove_task_schedules_the_task_while_it_is_registered(
    wall_clock: WallClock,
) -> None:
    wall_clock(MONDAY_NOON)
    seen: list[list[str]] = []

    def job() -> None:
        seen.append([info.schedule for info in m.get_scheduled_tasks()])

    def broken() -> None:
        job()
        raise RuntimeError("no")

    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        await m.add_execute_remove_task(Task(task_function=job, name="a"), schedule="0 * * * *")
        assert m.statistics().scheduled == 0 and m.get_task_by_name("a") is None
        with pytest.raises(Exception, match="no"):
            await m.add_execute_remove_task(
                Task(task_function=broken, name="b"), schedule="*/5 * * * * *"
            )
        assert m.statistics().scheduled == 0 and m.get_task_by_name("b") is None
    assert seen == [["0 * * * *"], ["*/5 * * * * *"]]


def test_schedules_can_be_added_outside_a_loop() -> None:
    m = TaskManager(timezone=UTC)
    job, _ = recorder()
    m.add_and_schedule_task(job, "* * * * *")
    [run] = m.get_next_scheduled_runs()
    assert run["next_run"] > datetime.now(UTC)
    assert run["next_run"] - datetime.now(UTC) <= timedelta(minutes=1)


async def test_cron_fires_only_while_the_manager_is_started(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)
    base = MONDAY_NOON - 0.25
    m = TaskManager(timezone=UTC)
    job, starts = recorder()
    m.add_and_schedule_task(job, "*/10 * * * * *")
    async with asyncio.timeout(120):
        await asyncio.sleep(25)  # not started: ticks at :10 and :20 do not run
        assert starts == []
        await m.start()
        # The ticks due while stopped are not made up for; the next is at :30.
        assert m.get_next_scheduled_runs()[0]["next_run"].timestamp() == base + 30
        await asyncio.sleep(20)
        assert starts == [base + 30, base + 40]
        await m.stop()
        assert m.get_scheduled_tasks()[0].next_run is not None  # still listed
        await asyncio.sleep(30)
        assert starts == [base + 30, base + 40]
        await m.start()
        await asyncio.sleep(10)
        await m.stop()
    assert starts == [base + 30, base + 40, base + 80]
    assert_nothing_left()


async def test_scheduling_again_replaces_the_schedule(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)
    base = MONDAY_NOON - 0.25
    job, starts = recorder()
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, "*/2 * * * * *")
        await asyncio.sleep(3)
        m.schedule_task_by_name("job", "*/5 * * * * *")
        assert m.statistics().scheduled == 1
        assert [i.schedule for i in m.get_scheduled_tasks()] == ["*/5 * * * * *"]
        await asyncio.sleep(7)
    assert starts == [base + 2, base + 5, base + 10]


async def test_deschedule_drops_the_schedule_and_clears_the_metadata(
    wall_clock: WallClock,
) -> None:
    wall_clock(MONDAY_NOON)
    job, starts = recorder()
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(2)
        m.deschedule_task_by_name("job")
        await asyncio.sleep(5)
        metadata = job.get_metadata()
        assert (metadata.cron_schedule, metadata.next_run) == (None, None)
        assert m.get_scheduled_tasks() == [] and m.get_next_scheduled_runs() == []
        assert m.statistics().scheduled == 0
        assert m.get_task_by_name("job") is job  # still registered
        with pytest.raises(TaskNotFoundError):
            m.deschedule_task_by_name("nope")
        with pytest.raises(TaskNotFoundError):
            m.schedule_task_by_name("nope", "* * * * *")
    assert len(starts) == 2


async def test_remove_task_drops_its_schedule(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)
    job, starts = recorder()
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(1)
        m.remove_task(job)
        assert m.statistics().scheduled == 0 and job.get_metadata().cron_schedule is None
        await asyncio.sleep(5)
    assert len(starts) == 1


def test_a_bad_cron_string_leaves_the_task_unregistered() -> None:
    m = TaskManager()
    job, _ = recorder()
    with pytest.raises(InvalidCronExpressionError, match="'61 \\* \\* \\* \\*'"):
        m.add_and_schedule_task(job, "61 * * * *")
    assert m.get_task_by_name("job") is None and m.statistics().scheduled == 0
    m.add_task(job)
    with pytest.raises(InvalidCronExpressionError):
        m.schedule_task_by_name("job", "* * * *")
    assert job.get_metadata().cron_schedule is None


def test_a_cron_string_is_parsed_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []

    def counting(expression: str, *args: Any, **kwargs: Any) -> Any:
        parsed.append(expression)
        return croniter(expression, *args, **kwargs)

    # taskbuffer imports croniter lazily, from the croniter module, at each parse.
    monkeypatch.setattr(croniter_module, "croniter", counting)
    m = TaskManager()
    job, _ = recorder()
    m.add_and_schedule_task(job, "*/5 * * * * *")
    assert parsed == ["*/5 * * * * *"]
    m.schedule_task_by_name("job", "0 * * * *")
    assert parsed == ["*/5 * * * * *", "0 * * * *"]
    assert job.get_metadata().cron_schedule == "0 * * * *"


async def test_ticks_fire_on_time_in_the_manager_zone(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)  # 08:00 in New York (EDT)
    job, starts = recorder()
    async with asyncio.timeout(3 * 86400), TaskManager(timezone=NEW_YORK) as m:
        m.add_and_schedule_task(job, "0 9 * * mon-fri")
        await asyncio.sleep(2 * 86400)
    assert starts == [instant("2024-06-03T09:00:00-04:00"), instant("2024-06-04T09:00:00-04:00")]


async def test_the_manager_follows_the_dst_policy_in_spring(wall_clock: WallClock) -> None:
    wall_clock(instant("2024-03-30T12:00:00+01:00"))
    fixed, fixed_starts = recorder("fixed")
    interval, interval_starts = recorder("interval")
    async with asyncio.timeout(3 * 86400), TaskManager(timezone=BERLIN) as m:
        m.add_and_schedule_task(fixed, "30 2 * * *")
        m.add_and_schedule_task(interval, "0 * * * *")
        await asyncio.sleep(2 * 86400 + 1)
    assert fixed_starts == [
        instant("2024-03-31T03:00:00+02:00"),  # 02:30 was skipped: right after the jump
        instant("2024-04-01T02:30:00+02:00"),
    ]
    hours = [b - a for a, b in zip(interval_starts, interval_starts[1:], strict=False)]
    assert len(interval_starts) == 48 and set(hours) == {3600.0}


async def test_the_manager_follows_the_dst_policy_in_autumn(wall_clock: WallClock) -> None:
    # (Each season starts its own loop: looptime stalls past ~2**24 s of loop time, where
    # adding asyncio's clock resolution to loop.time() no longer changes it.)
    wall_clock(instant("2024-10-26T12:00:00+02:00"))
    fixed, fixed_starts = recorder("fixed")
    interval, interval_starts = recorder("interval")
    async with asyncio.timeout(3 * 86400), TaskManager(timezone=BERLIN) as m:
        m.add_and_schedule_task(fixed, "30 2 * * *")
        m.add_and_schedule_task(interval, "*/30 * * * *")
        await asyncio.sleep(instant("2024-10-27T04:00:00+01:00") - now_wall() + 1)
    assert fixed_starts == [instant("2024-10-27T02:30:00+02:00")]  # not again at 02:30 CET
    locals_ = ["02:00+02:00", "02:30+02:00", "02:00+01:00", "02:30+01:00", "03:00+01:00"]
    expected = [instant(f"2024-10-27T{t}") for t in (*locals_, "03:30+01:00", "04:00+01:00")]
    assert interval_starts[-7:] == expected  # both passes of the repeated hour
    halves = [b - a for a, b in zip(interval_starts, interval_starts[1:], strict=False)]
    assert set(halves) == {1800.0}


async def test_every_tick_runs_through_the_constraints(
    wall_clock: WallClock, record: Record
) -> None:
    wall_clock(MONDAY_NOON)
    verdicts = iter([True, False, True])
    seen: list[Any] = []

    def should_execute(task: Task[Any, Any], input: Any) -> bool:
        seen.append(input)
        return next(verdicts)

    group = TaskConstraintGroup(
        name="gate", constraint_key_for_execution=lambda t, i: "k", should_execute=should_execute
    )
    job, starts = recorder()
    events = record(job)
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_constraint_group(group)
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(3)
    assert len(starts) == 2 and seen == [None, None, None]
    assert [e.type for e in events] == ["started", "completed", "skipped", "started", "completed"]


async def test_overlapping_ticks_queue_behind_a_concurrency_limit(
    wall_clock: WallClock, record: Record
) -> None:
    wall_clock(MONDAY_NOON)
    starts: list[float] = []

    async def slow() -> None:
        starts.append(now_wall())
        await asyncio.sleep(1.5)

    job = Task(task_function=slow, name="slow")
    events = record(job)
    group = TaskConstraintGroup(
        name="one", constraint_key_for_execution=lambda t, i: "k", max_concurrent=1
    )
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_constraint_group(group)
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(3)
        assert m.statistics().running == 1 and m.statistics().waiting == 1
        await m.stop(drain=False)
    base = MONDAY_NOON - 0.25
    assert starts == [base + 1, base + 2.5]
    assert [e.type for e in events].count("queued") == 2
    assert_nothing_left()


async def test_ticks_run_in_their_own_tasks(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)
    running: list[int] = []

    async def slow() -> None:
        running.append(m.statistics().running)
        await asyncio.sleep(2.5)

    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(Task(task_function=slow, name="slow"), "* * * * * *")
        await asyncio.sleep(4)
        await m.stop(timeout=0)
    assert running == [1, 2, 3, 3]
    assert_nothing_left()


async def test_a_failing_tick_reaches_the_event_stream_and_the_log(
    wall_clock: WallClock, record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    wall_clock(MONDAY_NOON)
    caplog.set_level(logging.DEBUG)

    def broken() -> None:
        raise RuntimeError("disk full")

    job = Task(task_function=broken, name="broken")
    events = record(job)
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(2)
    gc.collect()  # a lost task exception would be reported when the task is collected
    assert [(e.type, e.error) for e in events] == [
        ("started", None),
        ("failed", "disk full"),
        ("started", None),
        ("failed", "disk full"),
    ]
    errors = [r for r in caplog.records if r.name == "taskbuffer" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["scheduled run of task 'broken' failed"] * 2
    assert all(isinstance(r.exc_info and r.exc_info[1], RuntimeError) for r in errors)
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert job.error_count == 2


class Halt(BaseException):
    """A BaseException that is neither an Exception nor a cancellation."""


async def test_a_tick_whose_run_raises_a_base_exception_is_recorded_and_logged_not_lost(
    wall_clock: WallClock, record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    wall_clock(MONDAY_NOON)
    caplog.set_level(logging.DEBUG)

    def halting() -> None:
        raise Halt("halt")

    job = Task(task_function=halting, name="halting")
    events = record(job)
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, "* * * * * *")
        await asyncio.sleep(2)
    gc.collect()  # a lost task exception would be reported when the task is collected
    assert [(e.type, e.error) for e in events] == [("started", None), ("failed", "halt")] * 2
    errors = [r for r in caplog.records if r.name == "taskbuffer" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["scheduled run of task 'halting' failed"] * 2
    assert all(isinstance(r.exc_info and r.exc_info[1], Halt) for r in errors)
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert (job.error_count, job.running, job.get_metadata().status) == (2, False, "failed")


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_in_a_scheduled_run_stops_the_loop_once_it_is_recorded(
    error_type: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    def interrupt() -> None:
        raise error_type("halt")

    job = Task(task_function=interrupt, name="interrupting")

    async def main() -> None:
        async with TaskManager(timezone=UTC) as m:
            m.add_task(job)
            m.schedule_task_at("interrupting", datetime(2000, 1, 1, tzinfo=UTC))
            await asyncio.sleep(60)

    with pytest.raises(error_type):
        asyncio.run(main())
    gc.collect()
    assert (job.error_count, job.running, job.get_metadata().status) == (1, False, "failed")
    assert isinstance(job.last_error, error_type)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_missed_ticks_coalesce_into_one_run(
    wall_clock: WallClock, record: Record, caplog: pytest.LogCaptureFixture
) -> None:
    wall_clock(MONDAY_NOON)
    base = MONDAY_NOON - 0.25
    starts: list[float] = []

    def job() -> None:
        starts.append(now_wall())
        if len(starts) == 2:
            block_loop(3.5)  # e.g. a blocking call: the ticks at +3 and +4 pass meanwhile

    task = Task(task_function=job, name="job")
    events = record(task)
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(task, "* * * * * *")
        await asyncio.sleep(7)
    # +3 runs late (once, for +3, +4 and +5), then the schedule goes on: no burst.
    assert starts == [base + 1, base + 2, base + 5.5, base + 6, base + 7]
    missed = [e for e in events if e.type == "missed"]
    assert len(missed) == 1
    assert missed[0].error == (
        "2 ticks were missed while the event loop was blocked ('* * * * * *'); "
        "coalesced into this run"
    )
    assert [e.type for e in events].index("missed") == 4  # before the late run's "started"
    assert missed[0].run is None  # no single run owns it
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [f"task 'job': {missed[0].error}"]


async def test_a_schedule_whose_next_tick_cannot_be_computed_is_dropped(
    wall_clock: WallClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wall_clock(MONDAY_NOON)
    job, starts = recorder()
    other, other_starts = recorder("other")
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, "*/2 * * * * *")
        m.add_and_schedule_task(other, "*/3 * * * * *")
        real_next_after = CronSchedule.next_after

        def next_after(self: CronSchedule, t: float) -> float:
            if self.expression == "*/2 * * * * *":
                raise RuntimeError("croniter gave up")
            return real_next_after(self, t)

        monkeypatch.setattr(CronSchedule, "next_after", next_after)
        await asyncio.sleep(7)
        assert job.get_metadata().cron_schedule is None and m.statistics().scheduled == 1
    assert len(starts) == 1  # the tick that was due still ran; no more after it
    assert len(other_starts) == 2  # other schedules are unaffected
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.getMessage().startswith("task 'job': cron <CronSchedule '*/2 * * * * *'")


async def test_the_missed_count_is_capped_for_very_long_blocks(
    wall_clock: WallClock, record: Record
) -> None:
    wall_clock(MONDAY_NOON)
    blocked = False

    def job() -> None:
        nonlocal blocked
        if not blocked:
            blocked = True
            block_loop(200_000)  # past more than 100,000 ticks of an every-second schedule

    task = Task(task_function=job, name="job")
    events = record(task)
    async with asyncio.timeout(300_000), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(task, "* * * * * *")
        await asyncio.sleep(200_002)
        [missed] = [e for e in events if e.type == "missed"]
        assert missed.error is not None and missed.error.startswith("100000+ ticks were missed")
        # The schedule goes on from now, not from where the count stopped.
        next_run = m.get_next_scheduled_runs()[0]["next_run"].timestamp()
        assert 0 < next_run - now_wall() <= 1


async def test_starting_again_without_a_stop_keeps_one_timer(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)
    job, starts = recorder()
    m = TaskManager(timezone=UTC)
    m.add_and_schedule_task(job, "* * * * * *")
    async with asyncio.timeout(60):
        await m.start()
        await m.start()
        await asyncio.sleep(3)
        await m.stop()
    assert len(starts) == 3


async def test_restarting_rebuilds_stale_cron_and_keeps_one_offs(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)
    base = MONDAY_NOON - 0.25
    job, starts = recorder()
    m = TaskManager(timezone=UTC)
    m.add_and_schedule_task(job, "*/10 * * * * *")
    m.schedule_task_at("job", datetime.fromtimestamp(base + 25, UTC))
    async with asyncio.timeout(60):
        await asyncio.sleep(15)  # the cron tick at +10 passes while stopped
        await m.start()
        assert job.get_metadata().next_run == datetime.fromtimestamp(base + 20, UTC)
        await asyncio.sleep(10)
        await m.stop()
    assert starts == [base + 20, base + 25]


async def test_a_tick_updates_next_run_with_pending_one_offs_in_view(
    wall_clock: WallClock,
) -> None:
    wall_clock(MONDAY_NOON)
    base = MONDAY_NOON - 0.25
    job, _ = recorder()
    async with asyncio.timeout(60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(job, "*/10 * * * * *")
        m.schedule_task_at("job", datetime.fromtimestamp(base + 15, UTC))
        await asyncio.sleep(10)  # the tick at +10: next is the one-off at +15, not +20
        assert job.get_metadata().next_run == datetime.fromtimestamp(base + 15, UTC)
        await asyncio.sleep(5)
        assert job.get_metadata().next_run == datetime.fromtimestamp(base + 20, UTC)


async def test_rescheduling_many_times_keeps_the_timer_heap_small(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)
    job, starts = recorder()
    async with asyncio.timeout(120), TaskManager(timezone=UTC) as m:
        m.add_task(job)
        for n in range(1000):
            m.schedule_task_by_name("job", f"{n % 60} * * * * *")
        assert len(m._scheduler._heap) < 200  # replaced schedules do not pile up
        assert m.statistics().scheduled == 1
        assert repr(m._scheduler).startswith("<Scheduler started=True cron=1 once=0")
        await asyncio.sleep(60)
    assert len(starts) == 1  # only the last schedule, "39 * * * * *", fires


@pytest.mark.looptime(noop_cycles=0)
async def test_a_day_of_an_every_second_schedule_fires_86400_times(
    wall_clock: WallClock,
) -> None:
    wall_clock(datetime(2024, 6, 3, 0, 0, 0, 500000, tzinfo=UTC).timestamp())
    count = 0
    latest = 0.0

    def tick() -> None:
        nonlocal count, latest
        count += 1
        now = now_wall()
        latest = max(latest, now - round(now))

    began = time.perf_counter()
    async with asyncio.timeout(86400 + 60), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(Task(task_function=tick, name="tick"), "* * * * * *")
        await asyncio.sleep(86400)  # ticks at 00:00:01 ... 24:00:00
    elapsed = time.perf_counter() - began
    assert count == 86400
    assert latest < 1e-3
    # The budget is 30 s; a tracer (coverage, as in CI) makes every Python call several times
    # dearer, so a traced run only has to stay clear of the per-test timeout.
    budget = 50.0 if traced() else 30.0
    assert elapsed < budget, f"{elapsed:.1f} s of real time"


@pytest.mark.realtime
async def test_an_every_second_schedule_fires_on_time_in_real_time() -> None:
    starts: list[float] = []
    three = asyncio.Event()

    def job() -> None:
        starts.append(now_wall())
        if len(starts) == 3:
            three.set()

    async with asyncio.timeout(3.5), TaskManager(timezone=UTC) as m:
        m.add_and_schedule_task(Task(task_function=job, name="job"), "* * * * * *")
        await three.wait()
    lateness = [s - round(s) for s in starts]
    # asyncio may run a timer up to its clock resolution early, hence not exactly 0.
    assert all(-0.001 <= late <= 0.05 for late in lateness), lateness
    assert [round(b - a) for a, b in zip(starts, starts[1:], strict=False)] == [1, 1]


async def test_nothing_is_left_behind_after_stop(wall_clock: WallClock) -> None:
    wall_clock(MONDAY_NOON)

    async def slow() -> None:
        await asyncio.sleep(10)

    async with asyncio.timeout(60):
        m = TaskManager(timezone=UTC)
        m.add_and_schedule_task(Task(task_function=slow, name="slow"), "* * * * * *")
        await m.start()
        await asyncio.sleep(1.5)
        await m.stop(timeout=1)
        assert_nothing_left()
        await m.stop()  # again: harmless


def test_a_manager_runs_cron_in_one_loop_after_another() -> None:
    starts: list[float] = []
    ticked: list[asyncio.Event] = []

    def job() -> None:
        starts.append(now_wall())
        ticked[-1].set()

    m = TaskManager(timezone=UTC)  # built outside any loop, as at import time
    m.add_and_schedule_task(Task(task_function=job, name="job"), "* * * * * *")

    async def run_one_tick() -> None:
        ticked.append(asyncio.Event())
        async with asyncio.timeout(5):
            await m.start()
            await ticked[-1].wait()
            await m.stop()
        assert_nothing_left()

    for _ in range(2):  # two loops, one after the other, each on virtual time
        with asyncio.Runner(loop_factory=looptime.new_event_loop) as runner:
            runner.run(run_one_tick())
    assert len(starts) == 2


# ------------------------------------------------- ranges that croniter misread (review of 14)

# The README: a reversed range wraps around the end of its field and a step counts on across
# the end; "L" ends a day-of-month range; "L" in a day-of-month list is the month's last day.


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        # Days 31, 2, 4, 6, 8 (croniter: 31, 3, 5, 7).
        (
            "0 0 31-8/2 * *",
            datetime(2024, 1, 30),
            ["01-31", "02-02", "02-04", "02-06", "02-08", "03-02"],
        ),
        # Days 22, 25, 28, 31, 3 (croniter left out the 3rd).
        ("0 0 22-3/3 * *", datetime(2024, 1, 30), ["01-31", "02-03", "02-22", "02-25", "02-28"]),
        # October and February (croniter: October alone).
        ("0 0 1 10-feb/4 *", datetime(2024, 6, 1), ["10-01", "02-01", "10-01"]),
        # November, March, July (croniter: April and November).
        ("0 0 1 11-7/4 *", datetime(2024, 6, 1), ["07-01", "11-01", "03-01", "07-01"]),
        # Friday and Tuesday (croniter: Wednesday and Friday); 7 is Sunday as a bound too.
        ("0 0 * * 5-3/4", datetime(2024, 6, 1), ["06-04", "06-07", "06-11", "06-14"]),
        ("0 0 * * sat-thu/3", datetime(2024, 6, 1), ["06-04", "06-08", "06-11", "06-15"]),
        ("0 0 * * 7-3/2", datetime(2024, 6, 1), ["06-02", "06-04", "06-09", "06-11"]),
        # "31-L" is the 31st alone (croniter: an equal range, every day).
        ("0 0 31-L * *", datetime(2024, 4, 1), ["05-31", "07-31", "08-31", "10-31"]),
        ("0 0 31-L/2 * *", datetime(2024, 4, 1), ["05-31", "07-31", "08-31", "10-31"]),
    ],
)
def test_a_step_counts_on_across_the_end_of_a_wrapping_range(
    expression: str, start: datetime, expected: list[str]
) -> None:
    got = fires(expression, UTC, start.replace(tzinfo=UTC), len(expected))
    assert [g[5:10] for g in got] == expected


WRAP_FIELDS = {
    # field index in a 6-field expression: (low, high, names, the period to watch, its start)
    0: (0, 59, [], 60, datetime(2024, 1, 1)),
    1: (0, 59, [], 3600, datetime(2024, 1, 1)),
    2: (0, 23, [], 86400, datetime(2024, 1, 1)),
    3: (1, 31, [], 31 * 86400, datetime(2024, 1, 1)),  # January: every day exists
    4: (1, 12, [m.lower() for m in calendar.month_abbr[1:]], 366 * 86400, datetime(2024, 1, 1)),
    5: (0, 6, WEEKDAY_NAMES, 7 * 86400, datetime(2024, 6, 2)),  # from a Sunday
}


@settings(max_examples=120, deadline=None)
@given(data=st.data(), field=st.sampled_from(sorted(WRAP_FIELDS)))
def test_wrapping_ranges_with_steps_match_their_documented_values(
    data: st.DataObject, field: int
) -> None:
    low, high, names, period, start = WRAP_FIELDS[field]
    a = data.draw(st.integers(low + 1, high), label="start")
    b = data.draw(st.integers(low, a - 1), label="end")
    step = data.draw(st.integers(1, high - low + 1), label="step")
    cycle = [*range(a, high + 1), *range(low, b + 1)]
    values = set(cycle[::step])

    def spell(v: int) -> str:
        spelling = data.draw(st.sampled_from(["number", "name", "7"]))
        if spelling == "name" and names:
            return names[v - low]
        if spelling == "7" and names is WEEKDAY_NAMES and v == 0:
            return "7"  # Sunday too
        return str(v)

    # Finer fields at one value, coarser ones "*" (a month watched on the 1st of each).
    fields = ["0", "0", "0", "1" if field == 4 else "*", "*", "*"]
    fields[field + 1 : 3] = ["*"] * (2 - field)
    fields[field] = f"{spell(a)}-{spell(b)}/{step}"
    expression = " ".join(fields)
    schedule = CronSchedule(expression, UTC)
    begin = start.replace(tzinfo=UTC).timestamp()
    t, seen = begin - 1, set()
    while (t := schedule.next_after(t)) < begin + period:
        local = datetime.fromtimestamp(t, UTC)
        seen.add(
            [
                local.second,
                local.minute,
                local.hour,
                local.day,
                local.month,
                local.isoweekday() % 7,
            ][field]
        )
    assert seen == values, expression


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        # croniter checked only the larger bound of a range and ran these.
        ("0 0 5-0 * *", "its day-of-month range '5-0' goes outside 1-31"),
        ("0 0 1 3-0 *", "its month range '3-0' goes outside 1-12"),
        ("0 0 8-0/2 * *", "its day-of-month range '8-0/2' goes outside 1-31"),
        ("0 0 * * 8-1/2", "its day-of-week range '8-1/2' goes outside 0-6"),
    ],
)
def test_a_range_bound_outside_its_field_is_rejected(expression: str, reason: str) -> None:
    with pytest.raises(InvalidCronExpressionError) as caught:
        CronSchedule(expression)
    assert caught.value.reason == reason


@pytest.mark.parametrize("expression", ["0 0 L-5/2 * *", "0 0 31-L/0 * *", "0 0 5-3/0 * *"])
def test_l_starting_a_range_and_a_zero_step_stay_rejected(expression: str) -> None:
    with pytest.raises(InvalidCronExpressionError):
        CronSchedule(expression)


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        # 30 days and "L": croniter counted "L" as a 31st day and fired on every day.
        ("0 0 2-31,L * *", datetime(2024, 3, 30), ["03-31", "04-02", "04-03"]),
        ("0 0 1-6,8-31,L * *", datetime(2024, 4, 5), ["04-06", "04-08", "04-09"]),
        # The 30th is in the list only as the last day of a 30-day month.
        ("0 0 1-29,31,L * *", datetime(2024, 3, 29), ["03-31", "04-01"]),
        ("0 0 1-29,31,L * *", datetime(2024, 4, 29), ["04-30", "05-01"]),
        # So with a day of the week beside it: days 2-31, the last day, or Mondays (Tuesdays).
        ("0 0 2-31,L * 1", datetime(2024, 3, 30), ["03-31", "04-01", "04-02"]),
        ("0 0 2-31,L * 1", datetime(2024, 4, 29, 12), ["04-30", "05-02", "05-03"]),
        ("0 0 2-31,L * 2", datetime(2024, 3, 30), ["03-31", "04-02", "04-03"]),
    ],
)
def test_l_in_a_day_of_month_list_is_only_the_last_day(
    expression: str, start: datetime, expected: list[str]
) -> None:
    got = fires(expression, UTC, start.replace(tzinfo=UTC), len(expected))
    assert [g[5:10] for g in got] == expected


@pytest.mark.parametrize(
    ("equal", "star"), [("0 0 5-5/2 * *", "0 0 */2 * *"), ("0 0 * * 5-5/2", "0 0 * * */2")]
)
def test_an_equal_range_with_a_step_counts_from_the_fields_first_value(
    equal: str, star: str
) -> None:
    start = datetime(2024, 4, 1, tzinfo=UTC)
    assert fires(equal, UTC, start, 8) == fires(star, UTC, start, 8)


def test_a_numeric_range_before_hash_is_rejected_as_the_readme_says() -> None:
    assert fires("0 0 * * mon-fri#2", UTC, datetime(2024, 6, 1, tzinfo=UTC), 1)[0][:10] == (
        "2024-06-10"
    )
    with pytest.raises(InvalidCronExpressionError):
        CronSchedule("0 0 * * 1-5#2")
