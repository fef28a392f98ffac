"""Cron expressions: parsing, and their fire instants across daylight-saving changes.

Cron strings have 5 fields (``minute hour day-of-month month day-of-week``) or 6 with the
seconds **first** (``"*/5 * * * * *"`` is every 5 seconds). croniter parses them and finds the
matching times on the local clock of the manager's time zone (local time by default); anything
croniter accepts in those fields works (lists, ranges, steps, names, ``L``, ``#``, ``W``).

The day rule. A day field is *given* unless it is ``*`` or ``?``. With one given, it alone picks
the days; with both given, a day matching either one counts. croniter intersects the two fields
instead when one of them uses ``#``, ``L<n>`` or ``W`` (and reads some full ranges as ``*``), so
with both given each field gets a croniter of its own (the other field ``*``) and the earlier
match wins. A day-of-week list that mixes plain days with ``#`` or ``L<n>`` items is rejected:
croniter rejects most such lists and reads the rest as the ``#`` items alone.

Daylight-saving policy. When the local clock of the time zone jumps forward or repeats an hour:

* A *fixed-time* expression (its hour field names particular hours, e.g. ``30 2 * * *`` or
  ``0 */6 * * *``) fires the first time the local clock reaches or passes a matching time. On
  the day the clock jumps over its time (02:30 does not exist when 02:00 becomes 03:00), it
  runs once, right after the jump (at 03:00 new time); several matching times inside one jump
  make one run. On the day the clock falls back and shows its time twice, it runs once, at the
  first occurrence.
* An *interval-like* expression (hour field ``*``: it runs every hour, e.g. ``*/5 * * * *`` or
  ``*/10 * * * * *``) fires whenever the local clock shows a matching time, so it keeps its
  interval in real elapsed time: across a jump forward nothing is skipped or doubled (01:55
  then 03:00 is five real minutes), and in a repeated hour it runs in both passes.
* Fire instants strictly increase: no instant fires twice.

croniter's own time zone handling would run a fixed-time job twice in a repeated hour, so the
matching is done here on naive local times and mapped to instants by the rules above.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from ._exceptions import InvalidCronExpressionError
from ._validation import safe_repr

if TYPE_CHECKING:
    from croniter import croniter

__all__ = ("ONCE", "CronSchedule", "Zone")

ONCE = "once"
"""The ``schedule`` shown for a one-off run (``schedule_task_at``) in listings."""

_EPOCH = datetime(1970, 1, 1)
_DAY = 86400.0
_MICROSECOND = timedelta(microseconds=1)
# Offset changes come months apart in the tz database: checking a span of this length by its
# endpoints cannot miss a change that is undone inside it.
_SCAN_SPAN = 7 * _DAY
# After a look-up found no offset change, at least this much is remembered as change-free, so
# that frequent schedules do not look again on every tick.
_STABLE_SPAN = 3600.0
# croniter's day-of-week items that name a weekday of the month: "1#2", "mon-fri#2", "L5".
_NTH_ITEM = re.compile(r"#|^l\d", re.IGNORECASE)
# A range item with an optional step: "fri-tue/2", "20-L", "10-4". (Items with "#" have no step.)
_RANGE_ITEM = re.compile(r"^(\w+)-(\w+)(?:/(\d+))?$")
# Each field's bounds and names, seconds first; 7 is Sunday too, "L" ends a day-of-month range.
_FIELD_BOUNDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
)
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_FIELD_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {"l": 31},
    {name: i for i, name in enumerate(_MONTH_NAMES, 1)},
    {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
    | {"7": 0},
)


def _seconds(naive: datetime) -> float:
    """A naive datetime read as if it were UTC, in epoch seconds (local "wall seconds")."""
    return (naive - _EPOCH).total_seconds()


def _naive(seconds: float) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


class Zone:
    """The local clock of a time zone, read from instants only.

    Only ``instant -> local time`` conversions are used (which every ``tzinfo`` gets right);
    local times are mapped back to instants by looking for offset changes, so that skipped and
    repeated local times are handled the same way for any ``tzinfo`` and for local time.
    """

    __slots__ = ("_stable_hi", "_stable_lo", "_stable_off", "tz")

    def __init__(self, tz: tzinfo | None) -> None:
        self.tz = tz
        # A span of instants known to have one UTC offset: a cache for ``transition``.
        self._stable_lo = self._stable_hi = self._stable_off = math.nan

    def wall(self, t: float) -> datetime:
        """The naive local time at instant ``t``."""
        if self.tz is None:
            return datetime.fromtimestamp(t)
        return datetime.fromtimestamp(t, self.tz).replace(tzinfo=None)

    def offset(self, t: float) -> float:
        """Seconds east of UTC at instant ``t`` (offsets change on whole seconds)."""
        whole = math.floor(t)
        return _seconds(self.wall(whole)) - whole

    def wall_and_offset(self, t: float) -> tuple[datetime, float]:
        """The naive local time at instant ``t`` and the offset in effect there."""
        wall = self.wall(t)
        return wall, float(round(_seconds(wall) - t))

    def transition(self, a: float, b: float, off: float) -> float | None:
        """The first whole second in ``(a, b]`` whose offset is not ``off`` (that of ``a``)."""
        if off == self._stable_off and self._stable_lo <= a and b <= self._stable_hi:
            return None
        end = max(b, a + _STABLE_SPAN)
        found = self._scan(a, end, off)
        if found is None:
            self._stable_lo, self._stable_hi, self._stable_off = a, end, off
            return None
        if found > b:
            self._stable_lo, self._stable_hi, self._stable_off = a, found - 1.0, off
            return None
        return found

    def _scan(self, a: float, b: float, off: float) -> float | None:
        lo = a
        while lo < b:
            hi = min(lo + _SCAN_SPAN, b)
            if self.offset(hi) != off:
                # Bisect on whole seconds: offset(floor(lo)) == off != offset(floor(hi)).
                low, high = math.floor(lo), math.floor(hi)
                while high - low > 1:
                    mid = (low + high) // 2
                    if self.offset(mid) != off:
                        high = mid
                    else:
                        low = mid
                return float(high)
            lo = hi
        return None

    def first_reaching(self, local: datetime) -> float:
        """The first instant at which the local clock shows ``local`` or a later time.

        That is ``local`` itself; its first occurrence if the clock shows it twice; or, if the
        clock jumps over it, the instant of the jump.
        """
        u = _seconds(local)
        # The instant is ``u - offset`` and offsets are under a day either way.
        a = u - _DAY
        before = self.offset(a)
        change = self.transition(a, u + _DAY, before)
        if change is None:
            return u - before
        first = u - before
        if first < change:
            return first
        second = u - self.offset(change)
        if second >= change:
            return second
        return change


class CronSchedule:
    """A validated cron string and the instants it fires at, in one time zone.

    :param expression: 5 fields, or 6 with seconds first.
    :param tz: the time zone whose local clock the expression is read on; ``None`` is local
        time.
    :raises InvalidCronExpressionError: the string is not a cron expression this accepts.
    """

    __slots__ = (
        "_known",
        "_last_fire",
        "_last_local",
        "_last_offset",
        "_minutes",
        "_seconds",
        "_sides",
        "_six",
        "_zone",
        "expression",
        "fixed_time",
    )

    def __init__(self, expression: str, tz: tzinfo | None = None) -> None:
        if not isinstance(expression, str):
            raise TypeError(f"a cron expression must be a str, not {safe_repr(expression)}")
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise InvalidCronExpressionError(expression, f"it has {len(fields)} field(s)")
        six = len(fields) == 6
        from croniter import croniter  # lazily: import taskbuffer stays fast

        items = [item for item in fields[-1].split(",") if item]
        if len({bool(_NTH_ITEM.search(item)) for item in items}) == 2:
            raise InvalidCronExpressionError(
                expression,
                f"its day-of-week field {fields[-1]!r} mixes plain days with '#' or 'L' items; "
                "a day-of-week list is all plain days or all '#' and 'L' items",
            )
        try:
            fields = _unwrap_ranges(fields, six)
            # Naive datetimes: croniter matches local wall times; instants are mapped here.
            it = croniter(
                " ".join(fields), datetime(2000, 1, 1), ret_type=datetime, second_at_beginning=six
            )
            sides = _sides(it, fields, six)
        except Exception as exc:  # croniter raises assorted errors for assorted bad input
            reason = str(exc) or type(exc).__name__
            raise InvalidCronExpressionError(expression, reason) from exc
        if not sides:  # e.g. Feb 30
            raise InvalidCronExpressionError(expression, "it never matches a date")
        self.expression = expression
        self._sides = sides
        self._six = six
        self._zone = Zone(tz)
        minutes = _values(it.expanded[0])
        hours = _values(it.expanded[1])
        self._minutes = minutes
        self._seconds = _values(it.expanded[5]) if six else (0,)
        # Whether DST gaps and repeats are handled as for a fixed time of day (module docstring).
        self.fixed_time = hours is not None and len(hours) < 24
        self._known: datetime | None = None  # the latest local time croniter said matches
        # The latest interval-like fire with its local time and offset: the next call usually
        # starts from it (the tick path), which then needs no time zone conversion.
        self._last_fire = math.nan
        self._last_local = _EPOCH
        self._last_offset = 0.0

    def __repr__(self) -> str:
        kind = "fixed-time" if self.fixed_time else "interval-like"
        return f"<CronSchedule {self.expression!r} {kind} tz={self._zone.tz!r}>"

    def next_after(self, t: float) -> float:
        """The first fire instant (epoch seconds) strictly after instant ``t``."""
        zone = self._zone
        if t == self._last_fire:
            wall, off = self._last_local, self._last_offset
        else:
            wall, off = zone.wall_and_offset(t)
        if self.fixed_time:
            return self._next_fixed(t, wall, off)
        # Interval-like: the first instant after t whose local time matches. Walk the spans of
        # constant offset: within one, local time and instants differ by that offset.
        s = t
        local = self._next_local(wall, inclusive=False)
        while True:
            candidate = _seconds(local) - off
            change = zone.transition(s, candidate, off)
            if change is None:
                self._last_fire, self._last_local, self._last_offset = candidate, local, off
                return candidate
            # The offset changes first: go on from the local time shown right after the change
            # (which, after a fall back, the clock shows for the second time).
            s, off = change, zone.offset(change)
            local = self._next_local(_naive(change + off), inclusive=True)

    def _next_fixed(self, t: float, wall: datetime, off: float) -> float:
        # Fixed-time: the first time the clock reaches the next matching time it has not yet
        # reached. In the second pass of a repeated hour the clock has already been further.
        floor, inclusive = wall, False
        zone = self._zone
        back = t - _DAY
        before = zone.offset(back)
        if before > off:  # the clock fell back within the last day
            change = zone.transition(back, t, before)
            if change is not None:
                reached = _naive(change + before)  # shown up to (not including) this
                if reached > wall:
                    floor, inclusive = reached, True
        return zone.first_reaching(self._next_local(floor, inclusive=inclusive))

    def _next_local(self, floor: datetime, *, inclusive: bool) -> datetime:
        """The first matching local time after ``floor`` (or at it, if ``inclusive``)."""
        if not inclusive and floor == self._known:
            following = self._next_in_hour(floor)
            if following is not None:
                self._known = following
                return following
        start = floor - _MICROSECOND if inclusive else floor
        local = _first_match(self._sides, start)
        self._known = local
        return local

    def _next_in_hour(self, local: datetime) -> datetime | None:
        """The next match in the same hour of the same day as the match ``local``, if any.

        Day and hour fields still match there, so only minutes and seconds need checking: this
        spares croniter (the slow part) on all but the first tick of each hour.
        """
        seconds = self._seconds
        first_second = 0
        if self._six:
            second = local.second
            if seconds is None:
                if second < 59:
                    return local.replace(second=second + 1)
            else:
                i = bisect_right(seconds, second)
                if i < len(seconds):
                    return local.replace(second=seconds[i])
                first_second = seconds[0]
        minutes = self._minutes
        minute = local.minute
        if minutes is None:
            if minute < 59:
                return local.replace(minute=minute + 1, second=first_second)
        else:
            i = bisect_right(minutes, minute)
            if i < len(minutes):
                return local.replace(minute=minutes[i], second=first_second)
        return None


def _unwrap_ranges(fields: list[str], six: bool) -> list[str]:
    """``fields`` with each range that croniter misreads written out as its list of values.

    croniter counts a step across the end of a wrapping range one value too far ("31-8/2" as
    31,3,5,7; "10-feb/4" as October alone) and reads "31-L" as the whole month; the documented
    reading is the range's values from its start through the field's end and on from the
    field's start (31,2,4,6,8; October and February; the 31st). Anything it cannot read is left
    to croniter, which rejects it.
    """
    kinds = _FIELD_BOUNDS if six else _FIELD_BOUNDS[1:]
    names = _FIELD_NAMES if six else _FIELD_NAMES[1:]
    return [
        ",".join(_unwrap(item, bounds, field_names) for item in field.split(","))
        for field, bounds, field_names in zip(fields, kinds, names, strict=True)
    ]


def _unwrap(item: str, bounds: tuple[str, int, int], names: dict[str, int]) -> str:
    """One item of a field, written out as its values if croniter would misread it."""
    match = _RANGE_ITEM.match(item.lower())
    if match is None:
        return item
    written_low, written_high, written_step = match.groups()
    low, high = (_value(v, names) for v in (written_low, written_high))
    field, lowest, highest = bounds
    step = int(written_step or 1)
    if written_low == "l" or step == 0 or -1 in (low, high):
        return item  # croniter rejects these ("L" only ends a range)
    if not (lowest <= low <= highest and lowest <= high <= highest):
        # croniter checks only the larger bound: it took "5-0" in the day of month.
        raise ValueError(f"its {field} range {item!r} goes outside {lowest}-{highest}")
    if written_high == "l" and low == highest:  # "31-L": the 31st, not croniter's equal range
        return str(low)
    if low <= high or written_step is None:
        return item  # croniter reads these as documented (an equal range is the whole cycle)
    values = [*range(low, highest + 1), *range(lowest, high + 1)]
    return ",".join(str(v) for v in values[::step])


def _value(written: str, names: dict[str, int]) -> int:
    """A value or name of a field as a number; -1 if it is neither."""
    if written.isdigit():
        return names.get(str(int(written)), int(written))
    return names.get(written, -1)


def _values(field: list[Any]) -> tuple[int, ...] | None:
    """A croniter-expanded field as sorted ints, or ``None`` for "every value"."""
    if "*" in field:
        return None
    return tuple(sorted({int(v) for v in field}))


def _sides(it: croniter[datetime], fields: list[str], six: bool) -> tuple[croniter[datetime], ...]:
    """croniters that together match what the expression ``fields`` (parsed as ``it``) does.

    One, ``it``, unless both day fields are given: then one per day field with the other
    ``*``, so that a day matching either counts (module docstring). An ``L`` in a
    day-of-month list gets one of its own too: croniter counts it as a day, so 30 days and
    ``L`` read as every day ("2-31,L" fired on the 1st). Those that never match a date are
    left out.
    """
    from croniter import croniter  # lazily, as in CronSchedule

    day_of_month, day_of_week = fields[-3], fields[-1]
    days = _day_of_month_parts(day_of_month)
    if day_of_month not in ("*", "?") and day_of_week not in ("*", "?"):
        pairs = [*((part, "*") for part in days), ("*", day_of_week)]
    elif len(days) > 1:
        pairs = [(part, day_of_week) for part in days]
    else:
        return (it,) if _matches_a_date(it) else ()
    # The other fields as croniter resolved them: an "R" is random per parse, and all sides
    # must fire at the same times of day.
    minute, hour, _, month, _, *second = [_text(field) for field in it.expanded]
    candidates = [
        croniter(
            " ".join([*second, minute, hour, part, month, weekdays]),
            datetime(2000, 1, 1),
            ret_type=datetime,
            second_at_beginning=six,
        )
        for part, weekdays in pairs
    ]
    return tuple(side for side in candidates if _matches_a_date(side))


def _day_of_month_parts(field: str) -> list[str]:
    """A day-of-month field split into its ``L`` items and the rest, if it has both."""
    items = field.split(",")
    rest = [item for item in items if item.lower() != "l"]
    if rest and len(rest) < len(items):
        return [",".join(rest), "L"]
    return [field]


def _matches_a_date(side: croniter[datetime]) -> bool:
    from croniter import CroniterBadDateError

    try:
        side.get_next(datetime)
    except CroniterBadDateError:
        return False
    return True


def _first_match(sides: tuple[croniter[datetime], ...], start: datetime) -> datetime:
    """The first local time after ``start`` that one of ``sides`` matches.

    Each side matched a date when parsed, and cron dates recur well within the 50 years
    croniter looks ahead, so none runs out.
    """
    return min(side.get_next(datetime, start) for side in sides)


def _text(field: list[Any]) -> str:
    """A croniter-expanded field written back as a cron field."""
    return ",".join(str(v) for v in field)
