"""Option validation: every numeric option of the package, one wording, the right error type.

A wrong type (``bool`` included: it is not a number here) is a ``TypeError``; a value of the
right type out of range (NaN included) is a ``ValueError``; both name the parameter and what is
accepted. ``math.inf`` is accepted only where it means "no limit".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import pytest

from taskbuffer import (
    RateLimit,
    Task,
    TaskConstraintGroup,
    TaskDebounced,
    TaskManager,
    TaskOnce,
)
from taskbuffer.distributed.redis import RedisDistributedCoordinator


async def job() -> None:
    return None


def task_with(**options: Any) -> Task[Any, Any]:
    return Task(task_function=job, **options)


def buffered_with(buffer_max: Any) -> Task[Any, Any]:
    return Task(task_function=job, buffered=True, buffer_max=buffer_max)


def debounced_with(debounce_time: Any) -> TaskDebounced[Any, Any]:
    return TaskDebounced(task_function=job, debounce_time=debounce_time)


def group_with(**options: Any) -> TaskConstraintGroup:
    return TaskConstraintGroup(name="g", constraint_key_for_execution=lambda t, i: "k", **options)


def rate_limit_with(**options: Any) -> RateLimit:
    return RateLimit(**{"max_per_window": 1, "window": 1.0, **options})


def stepped_with(percentage: Any) -> Task[Any, Any]:
    return Task(task_function=job, steps=[{"name": "a", "percentage": percentage}])


# What each option accepts, in the words of its error messages.
ACCEPTS = {
    "timeout": "timeout must be a number of seconds > 0, math.inf or None",
    "retry_delay": "retry_delay must be a finite number of seconds >= 0",
    "retries": "retries must be an int >= 0",
    "retry_backoff": "retry_backoff must be a finite number >= 1",
    "retry_jitter": "retry_jitter must be a number from 0 to 1",
    "retry_max_delay": "retry_max_delay must be a number of seconds >= 0, math.inf or None",
    "buffer_max": "buffer_max must be an int >= 1",
    "debounce_time": "debounce_time must be a finite number of seconds >= 0",
    "max_concurrent": "max_concurrent must be an int >= 1 or math.inf",
    "cooldown": "cooldown must be a finite number of seconds >= 0",
    "max_per_window": "max_per_window must be an int >= 1",
    "window": "window must be a finite number of seconds > 0",
    "percentage": "step 'a' percentage must be a number from 0 to 100",
    "claim_ttl": "claim_ttl must be a finite number of seconds > 0",
    "limit": "limit must be an int >= 0",
}

BUILD: dict[str, Callable[[Any], object]] = {
    "timeout": lambda v: task_with(timeout=v),
    "retry_delay": lambda v: task_with(retry_delay=v),
    "retries": lambda v: task_with(retries=v),
    "retry_backoff": lambda v: task_with(retry_backoff=v),
    "retry_jitter": lambda v: task_with(retry_jitter=v),
    "retry_max_delay": lambda v: task_with(retry_max_delay=v),
    "buffer_max": buffered_with,
    "debounce_time": debounced_with,
    "max_concurrent": lambda v: group_with(max_concurrent=v),
    "cooldown": lambda v: group_with(cooldown=v),
    "max_per_window": lambda v: rate_limit_with(max_per_window=v),
    "window": lambda v: rate_limit_with(window=v),
    "percentage": stepped_with,
    "claim_ttl": lambda v: RedisDistributedCoordinator(claim_ttl=v),
    "limit": lambda v: TaskManager().get_next_scheduled_runs(v),
}

# (option, bad value, error, how the message shows the value)
BAD: list[tuple[str, Any, type[Exception], str]] = [
    ("timeout", 0, ValueError, "0"),
    ("timeout", -1.5, ValueError, "-1.5"),
    ("timeout", math.nan, ValueError, "nan"),
    ("timeout", -math.inf, ValueError, "-inf"),
    ("timeout", "5", TypeError, "str '5'"),
    ("timeout", True, TypeError, "bool True"),
    ("timeout", [1], TypeError, "list [1]"),
    ("retry_delay", -1, ValueError, "-1"),
    ("retry_delay", math.inf, ValueError, "inf"),
    ("retry_delay", None, TypeError, "NoneType None"),
    ("retries", -1, ValueError, "-1"),
    ("retries", "3", TypeError, "str '3'"),
    ("retries", 1.0, TypeError, "float 1.0"),
    ("retries", True, TypeError, "bool True"),
    ("retries", None, TypeError, "NoneType None"),
    ("retry_backoff", 0.5, ValueError, "0.5"),
    ("retry_backoff", math.nan, ValueError, "nan"),
    ("retry_backoff", math.inf, ValueError, "inf"),
    ("retry_backoff", "2", TypeError, "str '2'"),
    ("retry_jitter", -0.1, ValueError, "-0.1"),
    ("retry_jitter", 1.5, ValueError, "1.5"),
    ("retry_jitter", math.nan, ValueError, "nan"),
    ("retry_jitter", None, TypeError, "NoneType None"),
    ("retry_jitter", "0.1", TypeError, "str '0.1'"),
    ("retry_max_delay", -1, ValueError, "-1"),
    ("retry_max_delay", math.nan, ValueError, "nan"),
    ("retry_max_delay", "5", TypeError, "str '5'"),
    ("buffer_max", 0, ValueError, "0"),
    ("buffer_max", 1.5, TypeError, "float 1.5"),
    ("buffer_max", "3", TypeError, "str '3'"),
    ("buffer_max", True, TypeError, "bool True"),
    ("debounce_time", -0.01, ValueError, "-0.01"),
    ("debounce_time", math.inf, ValueError, "inf"),
    ("debounce_time", "1", TypeError, "str '1'"),
    ("max_concurrent", 0, ValueError, "0"),
    ("max_concurrent", 2.0, TypeError, "float 2.0"),
    ("max_concurrent", math.nan, TypeError, "float nan"),
    ("max_concurrent", "2", TypeError, "str '2'"),
    ("max_concurrent", True, TypeError, "bool True"),
    ("cooldown", -0.5, ValueError, "-0.5"),
    ("cooldown", math.inf, ValueError, "inf"),
    ("cooldown", "1", TypeError, "str '1'"),
    ("max_per_window", 0, ValueError, "0"),
    ("max_per_window", 1.5, TypeError, "float 1.5"),
    ("max_per_window", None, TypeError, "NoneType None"),
    ("window", 0, ValueError, "0"),
    ("window", math.inf, ValueError, "inf"),
    ("window", "1", TypeError, "str '1'"),
    ("percentage", 101, ValueError, "101"),
    ("percentage", math.nan, ValueError, "nan"),
    ("percentage", "50", TypeError, "str '50'"),
    ("claim_ttl", 0, ValueError, "0"),
    ("claim_ttl", math.inf, ValueError, "inf"),
    ("claim_ttl", "2", TypeError, "str '2'"),
    ("limit", -1, ValueError, "-1"),
    ("limit", 1.5, TypeError, "float 1.5"),
    # An int beyond the float range is no number of seconds (float() of it overflows).
    ("timeout", 10**400, ValueError, repr(10**400)),
    ("retry_delay", 10**400, ValueError, repr(10**400)),
    ("retry_backoff", 10**400, ValueError, repr(10**400)),
    ("cooldown", -(10**400), ValueError, repr(-(10**400))),
    ("percentage", 10**400, ValueError, repr(10**400)),
    ("retries", -(10**400), ValueError, repr(-(10**400))),
]


@pytest.mark.parametrize(
    ("option", "bad", "error", "shown"),
    [pytest.param(*case, id=f"{case[0]}={case[1]!r}"[:40]) for case in BAD],
)
def test_a_bad_numeric_option_raises_naming_it_and_what_is_accepted(
    option: str, bad: Any, error: type[Exception], shown: str
) -> None:
    message = f"{ACCEPTS[option]}, not {shown}"
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        BUILD[option](bad)


STOP_TIMEOUT = "timeout must be a number of seconds >= 0, math.inf or None"


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (-1, ValueError, f"{STOP_TIMEOUT}, not -1"),
        (math.nan, ValueError, f"{STOP_TIMEOUT}, not nan"),
        ("1", TypeError, f"{STOP_TIMEOUT}, not str '1'"),
        (True, TypeError, f"{STOP_TIMEOUT}, not bool True"),
    ],
)
async def test_a_bad_stop_timeout_raises_naming_it_and_what_is_accepted(
    bad: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        await TaskManager().stop(timeout=bad)


async def test_stop_with_an_infinite_timeout_waits_as_long_as_it_takes() -> None:
    manager = TaskManager()
    await manager.start()
    await manager.stop(timeout=math.inf)
    assert not manager.started


def test_a_zero_and_a_non_numeric_timeout_get_the_same_wording() -> None:
    with pytest.raises(ValueError) as zero:
        task_with(timeout=0)
    with pytest.raises(TypeError) as text:
        task_with(timeout="5")
    accepted = ACCEPTS["timeout"]
    assert str(zero.value).split(", not ")[0] == str(text.value).split(", not ")[0] == accepted


def test_an_infinite_timeout_means_no_limit_and_keeps_metadata_json_clean() -> None:
    t = task_with(timeout=math.inf)
    assert t.timeout is None
    metadata = t.get_metadata()
    assert metadata.timeout is None
    json.dumps(metadata.to_dict(), allow_nan=False)  # raises on inf or nan


@pytest.mark.parametrize("good", [1, 3, math.inf, 10**400], ids=["1", "3", "inf", "10**400"])
def test_max_concurrent_accepts_ints_and_inf(good: float) -> None:
    assert group_with(max_concurrent=good).max_concurrent == good


def test_a_count_may_be_an_int_beyond_the_float_range() -> None:
    huge = 10**400
    assert task_with(retries=huge)._retries == huge
    assert buffered_with(huge).buffer_max == huge
    assert rate_limit_with(max_per_window=huge).max_per_window == huge


@pytest.mark.parametrize("good", [0, 0.0, 2, 1e-9, 1e9])
def test_finite_non_negative_durations_are_accepted(good: float) -> None:
    t = task_with(retry_delay=good, timeout=good or None)
    assert t.get_metadata().timeout == (good or None)
    assert group_with(cooldown=good).cooldown == good
    assert debounced_with(good).debounce_time == good


RETRY_ON = (
    "retry_on must be an exception class, a tuple of exception classes or a callable taking "
    "the error and returning a bool"
)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        (3, "int 3"),
        ("ValueError", "str 'ValueError'"),
        (int, "type <class 'int'>"),
        ((ValueError, int), "tuple (<class 'ValueError'>, <class 'int'>)"),
        ([ValueError], "list [<class 'ValueError'>]"),
        (None, "NoneType None"),
        (ValueError("an instance"), "ValueError ValueError('an instance')"),
    ],
)
def test_a_bad_retry_on_raises_naming_it_and_what_is_accepted(bad: Any, shown: str) -> None:
    with pytest.raises(TypeError, match=f"^{re.escape(f'{RETRY_ON}, not {shown}')}$"):
        task_with(retry_on=bad)


@pytest.mark.parametrize(
    "good",
    [ValueError, BaseException, (OSError, TimeoutError), (), lambda error: True],
    ids=["class", "BaseException", "tuple", "empty tuple", "callable"],
)
def test_retry_on_accepts_classes_tuples_and_callables(good: Any) -> None:
    task_with(retries=1, retry_on=good)


@pytest.mark.parametrize("good", [0, 0.5, 1])
def test_retry_jitter_accepts_zero_to_one(good: float) -> None:
    task_with(retry_jitter=good)


@pytest.mark.parametrize("good", [0, 2.5, math.inf, None])
def test_retry_max_delay_accepts_seconds_inf_and_none(good: float | None) -> None:
    task_with(retry_max_delay=good)


# ------------------------------------------------------------------- labels and version


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({1: "a"}, "labels must be a mapping of str to str; got int 1 -> str 'a'"),
        ({"a": 1}, "labels must be a mapping of str to str; got str 'a' -> int 1"),
        ({"a": None}, "labels must be a mapping of str to str; got str 'a' -> NoneType None"),
        ([("a", "b")], "labels must be a mapping of str to str or None, not list [('a', 'b')]"),
        ("a=b", "labels must be a mapping of str to str or None, not str 'a=b'"),
    ],
)
def test_labels_must_map_str_to_str(labels: Any, message: str) -> None:
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        task_with(labels=labels)
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        TaskOnce(task_function=job, labels=labels)


@pytest.mark.parametrize("bad", [2, 2.1, b"1.0", ["1"]])
def test_version_must_be_a_str_or_none(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"^version must be a str or None, not "):
        task_with(version=bad)


def test_labels_are_copied_and_version_kept() -> None:
    labels = {"team": "a"}
    t = task_with(labels=labels, version="1.2")
    labels["team"] = "b"
    assert t.labels == {"team": "a"}
    assert t.get_metadata().version == "1.2"
    assert task_with(labels=None, version=None).labels == {}


# ------------------------------------------------------------- values whose repr raises


class HostileRepr:
    """A bad argument whose ``repr`` raises: the error must still be the intended one."""

    def __repr__(self) -> str:
        raise RuntimeError("repr bomb")


def _bad_calls() -> list[tuple[str, Callable[[Any], object]]]:
    from taskbuffer import Service, ServiceManager, Taskchain, Taskparallel

    return [
        ("task_function", lambda bad: Task(task_function=bad)),
        ("steps", lambda bad: Task(task_function=lambda: None, steps=bad)),
        ("task_setup", lambda bad: Task(task_function=lambda: None, task_setup=bad)),
        (
            "constraint key",
            lambda bad: TaskConstraintGroup(name="g", constraint_key_for_execution=bad),
        ),
        (
            "rate_limit",
            lambda bad: TaskConstraintGroup(
                name="g", constraint_key_for_execution=lambda t, i: None, rate_limit=bad
            ),
        ),
        ("chain member", lambda bad: Taskchain(task_array=[bad])),
        ("parallel member", lambda bad: Taskparallel(task_array=[bad])),
        ("timezone", lambda bad: TaskManager(timezone=bad)),
        ("add_task", lambda bad: TaskManager().add_task(bad)),
        ("add_constraint_group", lambda bad: TaskManager().add_constraint_group(bad)),
        ("depends_on", lambda bad: Service(name="s", start=lambda: None, depends_on=bad)),
        ("add_service", lambda bad: ServiceManager().add_service(bad)),
    ]


@pytest.mark.parametrize("what", [name for name, _ in _bad_calls()])
def test_a_bad_argument_whose_repr_raises_still_gets_the_intended_error(what: str) -> None:
    call = dict(_bad_calls())[what]
    with pytest.raises(TypeError, match="HostileRepr object: repr\\(\\) failed: RuntimeError"):
        call(HostileRepr())
