"""Checks of the options every public constructor and method takes, with one wording.

Every numeric option of the package (durations, counts, ratios) is checked here, so that a bad
value reads the same wherever it is passed::

    timeout must be a number of seconds > 0, math.inf or None, not 0          (ValueError)
    timeout must be a number of seconds > 0, math.inf or None, not str '5'    (TypeError)
    cooldown must be a finite number of seconds >= 0, not inf                 (ValueError)

A value of the wrong type (``bool`` is not a number here) raises ``TypeError``; a value of the
right type outside the accepted range (NaN included) raises ``ValueError``. Both messages name
the parameter and say what is accepted. ``math.inf`` is accepted only where it means "no
limit", and ``None`` only where the option is optional.

Also here: the checks of label mappings, optional strings and error filters (``retry_on``),
and :func:`safe_str`, which renders an exception (or any value) for a message without ever
raising.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any, cast

__all__ = (
    "check_count",
    "check_error_filter",
    "check_labels",
    "check_number",
    "check_optional_str",
    "check_seconds",
    "error_message",
    "reraise_interrupt_later",
    "safe_repr",
    "safe_str",
)


def safe_str(value: object) -> str:
    """``str(value)``, or a stand-in naming its type when ``__str__`` raises.

    Whatever ``__str__`` raises, ``BaseException`` subclasses included, never reaches the
    caller: it renders an error in the middle of a run's bookkeeping or of a snapshot. A
    ``KeyboardInterrupt`` or ``SystemExit`` is raised again afterwards (see
    :func:`reraise_interrupt_later`).
    """
    try:
        return str(value)
    except BaseException as exc:  # a hostile or broken __str__ must not break the caller
        reraise_interrupt_later(exc)
        return f"<{_type_name(value)} object: str() failed: {_type_name(exc)}>"


def safe_repr(value: object) -> str:
    """``repr(value)``, or a stand-in naming its type when ``__repr__`` raises (as
    :func:`safe_str`)."""
    try:
        return repr(value)
    except BaseException as exc:
        reraise_interrupt_later(exc)
        return f"<{_type_name(value)} object: repr() failed: {_type_name(exc)}>"


def reraise_interrupt_later(error: BaseException) -> None:
    """Raise ``error`` again from a callback of the running loop if it is a
    ``KeyboardInterrupt`` or ``SystemExit`` (as asyncio treats them when a callback raises
    them), so that the code that caught it finishes first; at once with no running loop.
    Any other error is left alone: the caller has dealt with it."""
    if isinstance(error, KeyboardInterrupt | SystemExit):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise error from None
        loop.call_soon(_reraise, error)


def _reraise(error: BaseException) -> None:
    raise error


def error_message(error: BaseException | str) -> str:
    """The message an event or a snapshot shows for ``error``: its ``str()``, or its type's
    name when that is empty; never raises (see :func:`safe_str`)."""
    if isinstance(error, str):
        return error
    return safe_str(error) or _type_name(error)


_FLOAT_MAX = int(sys.float_info.max)


def _type_name(value: object) -> str:
    return type(value).__qualname__


def _shown(value: object) -> str:
    # The type says what was wrong for a TypeError; the repr alone is enough for a value.
    return f"{_type_name(value)} {safe_repr(value)}"


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float,
    maximum: float | None = None,
    above: bool = False,
    unit: str = "",
    integer: bool = False,
    infinite: bool = False,
    none: bool = False,
) -> Any:
    """Check one numeric option and return it unchanged.

    :param minimum: the smallest accepted value (excluded with ``above=True``).
    :param maximum: the largest accepted value, if any.
    :param unit: what the number counts, for the message (``"seconds"``).
    :param integer: only ``int`` is accepted (and ``math.inf``, with ``infinite``).
    :param infinite: ``math.inf`` is accepted (it means "no limit").
    :param none: ``None`` is accepted.
    :raises TypeError: not a number (or not an int), ``bool`` included.
    :raises ValueError: NaN, out of range, or infinite where that is not accepted.
    """
    if value is None and none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int) and not (infinite and value == math.inf))
    ):
        accepted = _accepted(minimum, maximum, above, unit, integer, infinite, none)
        raise TypeError(f"{name} must be {accepted}, not {_shown(value)}")
    if not integer and isinstance(value, int) and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        # An int beyond any float: not a usable number of seconds or ratio (a count may be
        # as large as it likes). Compared as ints: float(value) would raise OverflowError.
        accepted = _accepted(minimum, maximum, above, unit, integer, infinite, none)
        raise ValueError(f"{name} must be {accepted}, not {safe_repr(value)}")
    if (
        (isinstance(value, float) and math.isnan(value))  # isnan(int) overflows for huge ints
        or (value == math.inf and not infinite)
        or value < minimum
        or (above and value == minimum)
        or (maximum is not None and value > maximum)
    ):
        accepted = _accepted(minimum, maximum, above, unit, integer, infinite, none)
        raise ValueError(f"{name} must be {accepted}, not {safe_repr(value)}")
    return value


def _accepted(
    minimum: float,
    maximum: float | None,
    above: bool,
    unit: str,
    integer: bool,
    infinite: bool,
    none: bool,
) -> str:
    """What an option accepts, in words: ``a number of seconds > 0, math.inf or None``."""
    kind = "an int" if integer else f"a number of {unit}" if unit else "a number"
    if not integer and not infinite and maximum is None:
        kind = kind.replace("a number", "a finite number")  # inf passes ">= x" otherwise
    if maximum is not None:
        bound = f"from {minimum:g} to {maximum:g}"
    else:
        bound = f"{'>' if above else '>='} {minimum:g}"
    alternatives = [f"{kind} {bound}"]
    if infinite:
        alternatives.append("math.inf")
    if none:
        alternatives.append("None")
    if len(alternatives) == 1:
        return alternatives[0]
    return ", ".join(alternatives[:-1]) + " or " + alternatives[-1]


def check_seconds(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    infinite: bool = False,
    none: bool = False,
) -> float | None:
    """A duration in seconds: a finite number ``>= 0`` (``> 0`` with ``positive``).

    With ``infinite``, ``math.inf`` is accepted and means "no limit"; it is returned as
    ``None`` (so snapshots stay JSON-clean), as is ``None`` itself with ``none``.
    """
    seconds = check_number(
        name, value, minimum=0, above=positive, unit="seconds", infinite=infinite, none=none
    )
    if seconds is None or seconds == math.inf:
        return None
    return float(seconds)


def check_count(name: str, value: Any, *, minimum: int, infinite: bool = False) -> Any:
    """A count: an ``int >= minimum`` (or ``math.inf`` with ``infinite``)."""
    return check_number(name, value, minimum=minimum, integer=True, infinite=infinite)


def check_error_filter(
    name: str, value: Any
) -> tuple[type[BaseException], ...] | Callable[[BaseException], bool]:
    """Which errors an option selects: an exception class or a tuple of them (returned as a
    tuple, for ``isinstance``), or a predicate taking the error (returned as it is)."""
    classes = value if isinstance(value, tuple) else (value,) if isinstance(value, type) else None
    if classes is not None:
        if all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
            return classes
    elif callable(value):
        return cast("Callable[[BaseException], bool]", value)
    raise TypeError(
        f"{name} must be an exception class, a tuple of exception classes or a callable "
        f"taking the error and returning a bool, not {_shown(value)}"
    )


def check_optional_str(name: str, value: Any) -> str | None:
    """A ``str`` or ``None``."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {_shown(value)}")
    return value


def check_labels(name: str, labels: Any) -> dict[str, str]:
    """A mapping of str to str (or ``None`` for none), copied into a new dict."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise TypeError(f"{name} must be a mapping of str to str or None, not {_shown(labels)}")
    copied: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"{name} must be a mapping of str to str; got {_shown(key)} -> {_shown(value)}"
            )
        copied[key] = value
    return copied
