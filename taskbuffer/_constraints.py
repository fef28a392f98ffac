"""``TaskConstraintGroup``: per-key concurrency caps, cooldowns, rate limits and checks.

A group keeps a small state record per key only while the key has something running, waiting,
cooling down or inside its rate window (see :mod:`._keystate`, which holds that state, and
:mod:`._admission`, which queues the triggers a key blocks).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._keystate import KeyTable, key_type_error, loop_time
from ._validation import check_count, check_seconds, safe_repr
from ._waiting import LOCAL_ADMISSION, new_queued_key, new_sharing_key

if TYPE_CHECKING:
    from ._task import Task

__all__ = ("ConstraintGroupStatistics", "RateLimit", "TaskConstraintGroup", "key_table")

KeyFunction: TypeAlias = Callable[["Task[Any, Any]", Any], "str | None"]
ShouldExecute: TypeAlias = Callable[["Task[Any, Any]", Any], "bool | Awaitable[bool]"]
ResultSharing: TypeAlias = Literal["none", "share-latest"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimit:
    """At most ``max_per_window`` starts per key within any ``window`` seconds (sliding)."""

    max_per_window: int
    window: float

    def __post_init__(self) -> None:
        check_count("max_per_window", self.max_per_window, minimum=1)
        check_seconds("window", self.window, positive=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConstraintGroupStatistics:
    """A snapshot of a group: keys it holds state for, runs in flight, triggers waiting."""

    name: str
    tracked_keys: int
    running: int
    waiting: int


class TaskConstraintGroup:
    """Constraints applied to every trigger through a :class:`TaskManager`, per key.

    :param constraint_key_for_execution: ``(task, input) -> key``; ``None`` exempts the trigger.
    :param max_concurrent: runs per key at once (``math.inf`` = no cap).
    :param cooldown: seconds between a run's end and the next start, per key.
    :param should_execute: ``(task, input) -> bool`` (or awaitable); ``False`` skips the run.
    :param rate_limit: a sliding window of starts per key.
    :param result_sharing: ``"share-latest"`` resolves the triggers waiting for a key with the
        result of the run of that key that succeeds, without running them.
    """

    __slots__ = (
        "__weakref__",
        "_keys",
        "constraint_key_for_execution",
        "name",
        "result_sharing",
        "should_execute",
    )

    def __init__(
        self,
        *,
        name: str,
        constraint_key_for_execution: KeyFunction,
        max_concurrent: int | float = math.inf,
        cooldown: float = 0.0,
        should_execute: ShouldExecute | None = None,
        rate_limit: RateLimit | None = None,
        result_sharing: ResultSharing = "none",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, not {name!r}")
        if not callable(constraint_key_for_execution):
            raise TypeError(
                "constraint_key_for_execution must be a callable (task, input) -> str | None, "
                f"not {safe_repr(constraint_key_for_execution)}"
            )
        check_count("max_concurrent", max_concurrent, minimum=1, infinite=True)
        cooldown = check_seconds("cooldown", cooldown) or 0.0
        if should_execute is not None and not callable(should_execute):
            raise TypeError(
                f"should_execute must be callable or None, not {safe_repr(should_execute)}"
            )
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit or None, not {safe_repr(rate_limit)}")
        if result_sharing not in ("none", "share-latest"):
            raise ValueError(
                f"result_sharing must be 'none' or 'share-latest', not {safe_repr(result_sharing)}"
            )
        self.name = name
        self.constraint_key_for_execution = constraint_key_for_execution
        self.should_execute = should_execute
        self.result_sharing: ResultSharing = result_sharing
        # The per-key state. Its owner is the manager this group is added to (the token the
        # manager also passes as the owner of its triggers), or None: a group constrains one
        # manager at a time.
        self._keys = KeyTable(
            name,
            max_concurrent=max_concurrent,
            cooldown=cooldown,
            rate_limit=rate_limit,
            new_key=new_sharing_key if result_sharing == "share-latest" else new_queued_key,
            on_due=LOCAL_ADMISSION.dispatch,
        )

    def __repr__(self) -> str:
        keys = self._keys
        return (
            f"<TaskConstraintGroup {self.name!r} keys={len(keys.states)} "
            f"running={keys.running_total} waiting={keys.waiting_total}>"
        )

    @property
    def max_concurrent(self) -> int | float:
        """Runs per key at once (``math.inf``: no cap)."""
        return self._keys.max_concurrent

    @property
    def cooldown(self) -> float:
        """Seconds between a run's end and the next start, per key."""
        return self._keys.cooldown

    @property
    def rate_limit(self) -> RateLimit | None:
        """The sliding window of starts per key, or ``None``."""
        limit: RateLimit | None = self._keys.rate_limit
        return limit

    def get_constraint_key(self, task: Task[Any, Any], input: Any = None) -> str | None:
        """The key of ``(task, input)`` in this group, or ``None`` if exempt.

        :raises TypeError: the key function returned something other than a str or None.
        """
        key = self.constraint_key_for_execution(task, input)
        if key is not None and not isinstance(key, str):
            raise key_type_error(self.name, key)
        return key

    async def check_should_execute(self, task: Task[Any, Any], input: Any = None) -> bool:
        """Whether this group's ``should_execute`` allows the run (True without one)."""
        check = self.should_execute
        if check is None:
            return True
        verdict = check(task, input)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    def can_run(self, key: str) -> bool:
        """Whether a run with ``key`` could start now: under the cap, no cooldown, window room."""
        keys = self._keys
        st = keys.get(key)
        return st is None or keys.blocked_until(st, loop_time()) is None

    def acquire_slot(self, key: str) -> bool:
        """Take a slot for ``key`` if one is free now; returns whether it did."""
        keys = self._keys
        now = loop_time()
        st = keys.ensure(key)
        if keys.blocked_until(st, now) is not None:
            keys.maybe_drop(st, now)
            return False
        keys.take(st)
        LOCAL_ADMISSION.begin([st], now)
        return True

    def release_slot(self, key: str) -> None:
        """Give back a slot of ``key``, recording the end time for the cooldown."""
        st = self._keys.get(key)
        if st is not None and st.running > 0:
            LOCAL_ADMISSION.release([st], loop_time(), ran=True)

    def get_cooldown_remaining(self, key: str) -> float:
        """Seconds until the cooldown of ``key`` is over (0.0 if none is pending)."""
        keys = self._keys
        return keys.cooldown_remaining(keys.get(key), loop_time())

    def get_rate_limit_delay(self, key: str) -> float:
        """Seconds until the rate window of ``key`` has room (0.0 if it has room now).

        ``math.inf`` while the window is full of slots taken by triggers whose runs have not
        started yet (their ``should_execute`` is being asked): it has room when one of them
        is given back, or a window after the run starts."""
        keys = self._keys
        return keys.rate_limit_delay(keys.get(key), loop_time())

    def get_running_count(self, key: str) -> int:
        """How many runs of ``key`` are in flight."""
        st = self._keys.get(key)
        return 0 if st is None else int(st.running)

    def reset(self) -> None:
        """Forget running counts, cooldowns and rate windows; waiting triggers are re-offered."""
        keys = self._keys
        LOCAL_ADMISSION.dispatch(keys.forget(), loop_time())
        for st in list(keys.states.values()):
            keys.maybe_drop(st, loop_time())

    def statistics(self) -> ConstraintGroupStatistics:
        """A snapshot: tracked keys, runs in flight and triggers waiting."""
        keys = self._keys
        return ConstraintGroupStatistics(
            name=self.name,
            tracked_keys=len(keys.states),
            running=keys.running_total,
            waiting=keys.waiting_total,
        )


def key_table(group: TaskConstraintGroup) -> KeyTable:
    """The per-key state of ``group`` (for the manager that admits triggers through it)."""
    return group._keys
