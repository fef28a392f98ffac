"""``TaskConstraintGroup``: construction, inspection, and the constraint semantics of
triggers through a ``TaskManager`` (API.md, "TaskConstraintGroup" and "Constraint semantics").

Every async test runs on looptime's virtual clock, so the instants asserted are exact.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import gc
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from _constraint_support import Gates, event_types, idle, settle

from taskbuffer import (
    ConstraintGroupStatistics,
    RateLimit,
    Task,
    TaskConstraintGroup,
    TaskEvent,
    TaskManager,
    TaskManagerStoppedError,
    TaskTimeoutError,
)

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


def same_key(task: Task[Any, Any], input: Any) -> str:
    return "k"


def first_char(task: Task[Any, Any], input: Any) -> str | None:
    """Inputs are strings like ``"a1"``; the key is their first character."""
    return None if input is None else str(input)[0]


def make_group(**options: Any) -> TaskConstraintGroup:
    options.setdefault("name", "g")
    options.setdefault("constraint_key_for_execution", same_key)
    return TaskConstraintGroup(**options)


def manager_with(*groups: TaskConstraintGroup) -> TaskManager:
    manager = TaskManager()
    for group in groups:
        manager.add_constraint_group(group)
    return manager


def spawn(coro: Any) -> asyncio.Task[Any]:
    return asyncio.ensure_future(coro)


# ------------------------------------------------------------------------ construction


def test_defaults() -> None:
    group = TaskConstraintGroup(name="g", constraint_key_for_execution=same_key)
    assert group.name == "g"
    assert group.max_concurrent == math.inf
    assert group.cooldown == 0.0
    assert group.should_execute is None
    assert group.rate_limit is None
    assert group.result_sharing == "none"
    assert group.statistics() == idle(group)


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        TaskConstraintGroup("g", same_key)  # type: ignore[call-arg]


def test_rate_limit_is_a_frozen_keyword_only_value() -> None:
    limit = RateLimit(max_per_window=3, window=2.5)
    assert (limit.max_per_window, limit.window) == (3, 2.5)
    assert limit == RateLimit(max_per_window=3, window=2.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limit.window = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        RateLimit(3, 2.5)  # type: ignore[call-arg]


def test_rate_limit_must_be_a_rate_limit() -> None:
    with pytest.raises(TypeError, match=r"^rate_limit must be a RateLimit or None"):
        make_group(rate_limit=(3, 1.0))


@pytest.mark.parametrize("bad", ["latest", "", None, "share_latest"])
def test_result_sharing_must_be_none_or_share_latest(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"^result_sharing must be 'none' or 'share-latest'"):
        make_group(result_sharing=bad)


@pytest.mark.parametrize("bad", ["", None, 3])
def test_name_must_be_a_non_empty_string(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"^name must be a non-empty string"):
        make_group(name=bad)


def test_callables_are_checked() -> None:
    with pytest.raises(TypeError, match=r"^constraint_key_for_execution must be a callable"):
        make_group(constraint_key_for_execution="k")
    with pytest.raises(TypeError, match=r"^should_execute must be callable or None"):
        make_group(should_execute=True)


def test_repr_shows_the_name_and_counts() -> None:
    assert repr(make_group(name="api")) == "<TaskConstraintGroup 'api' keys=0 running=0 waiting=0>"


# ----------------------------------------------------------------- key and should_execute


async def test_get_constraint_key_calls_the_key_function_with_task_and_input() -> None:
    seen: list[tuple[Task[Any, Any], Any]] = []

    def key(task: Task[Any, Any], input: Any) -> str | None:
        seen.append((task, input))
        return None if input is None else f"user-{input}"

    group = make_group(constraint_key_for_execution=key)
    t = Task(name="t", task_function=lambda: None)
    assert group.get_constraint_key(t, 7) == "user-7"
    assert group.get_constraint_key(t) is None
    assert seen == [(t, 7), (t, None)]


def test_a_key_that_is_not_a_string_is_a_type_error() -> None:
    group = make_group(name="ids", constraint_key_for_execution=lambda task, input: 42)
    t = Task(name="t", task_function=lambda: None)
    with pytest.raises(
        TypeError, match=r"constraint group 'ids'.*must return a str or None, not 42"
    ):
        group.get_constraint_key(t, None)


async def test_check_should_execute_accepts_sync_and_async_checks() -> None:
    t = Task(name="t", task_function=lambda: None)
    assert await make_group().check_should_execute(t) is True

    sync_group = make_group(should_execute=lambda task, input: input == "yes")
    assert await sync_group.check_should_execute(t, "yes") is True
    assert await sync_group.check_should_execute(t, "no") is False

    async def check(task: Task[Any, Any], input: Any) -> bool:
        await asyncio.sleep(1)
        return bool(input)

    async_group = make_group(should_execute=check)
    assert await async_group.check_should_execute(t, 1) is True
    assert await async_group.check_should_execute(t, 0) is False
    assert asyncio.get_running_loop().time() == 2.0


# --------------------------------------------------------------------- inspection methods


async def test_acquire_and_release_slots_up_to_max_concurrent() -> None:
    group = make_group(max_concurrent=2)
    assert group.can_run("k") and group.get_running_count("k") == 0
    assert group.acquire_slot("k") is True
    assert group.acquire_slot("k") is True
    assert group.get_running_count("k") == 2
    assert not group.can_run("k")
    assert group.acquire_slot("k") is False
    assert group.get_running_count("k") == 2
    assert group.can_run("other") and group.acquire_slot("other")
    stats = group.statistics()
    assert (stats.tracked_keys, stats.running, stats.waiting) == (2, 3, 0)
    group.release_slot("k")
    assert group.can_run("k") and group.get_running_count("k") == 1
    group.release_slot("k")
    group.release_slot("other")
    assert group.statistics() == idle(group)


async def test_release_slot_of_a_key_with_nothing_running_is_a_no_op() -> None:
    group = make_group(cooldown=5)
    group.release_slot("k")
    assert group.get_cooldown_remaining("k") == 0.0
    assert group.statistics() == idle(group)


async def test_release_slot_records_the_end_for_the_cooldown() -> None:
    group = make_group(max_concurrent=1, cooldown=3)
    assert group.get_cooldown_remaining("k") == 0.0
    assert group.acquire_slot("k")
    await asyncio.sleep(1)
    group.release_slot("k")
    assert group.get_cooldown_remaining("k") == 3.0
    assert not group.can_run("k")
    assert not group.acquire_slot("k")
    await asyncio.sleep(2)
    assert group.get_cooldown_remaining("k") == 1.0
    assert group.statistics().tracked_keys == 1
    await asyncio.sleep(1)
    assert group.get_cooldown_remaining("k") == 0.0
    assert group.can_run("k")
    assert group.statistics() == idle(group)


async def test_get_rate_limit_delay_counts_down_to_the_oldest_start_leaving_the_window() -> None:
    group = make_group(rate_limit=RateLimit(max_per_window=2, window=10))
    assert group.get_rate_limit_delay("k") == 0.0
    assert group.acquire_slot("k")
    group.release_slot("k")
    assert group.get_rate_limit_delay("k") == 0.0
    await asyncio.sleep(4)
    assert group.acquire_slot("k")
    group.release_slot("k")
    assert group.get_rate_limit_delay("k") == 6.0
    assert not group.can_run("k") and not group.acquire_slot("k")
    await asyncio.sleep(6)
    assert group.get_rate_limit_delay("k") == 0.0
    assert group.can_run("k")
    assert group.statistics().tracked_keys == 1  # the start at t=4 is still in the window
    await asyncio.sleep(4)
    assert group.statistics() == idle(group)


async def test_a_running_start_counts_in_the_rate_window() -> None:
    group = make_group(rate_limit=RateLimit(max_per_window=1, window=2))
    assert group.acquire_slot("k")
    assert group.get_rate_limit_delay("k") == 2.0
    await asyncio.sleep(5)
    assert group.get_rate_limit_delay("k") == 0.0
    assert group.can_run("k")  # the run still holds its slot, but its start left the window
    assert group.statistics().tracked_keys == 1
    group.release_slot("k")
    assert group.statistics() == idle(group)


async def test_can_run_is_false_while_any_constraint_blocks() -> None:
    group = make_group(
        max_concurrent=1, cooldown=1, rate_limit=RateLimit(max_per_window=2, window=4)
    )
    assert group.can_run("k")
    assert group.acquire_slot("k")
    assert not group.can_run("k")  # cap
    group.release_slot("k")
    assert not group.can_run("k")  # cooldown
    await asyncio.sleep(1)
    assert group.can_run("k")
    assert group.acquire_slot("k")
    group.release_slot("k")
    await asyncio.sleep(1)
    assert group.get_cooldown_remaining("k") == 0.0
    assert not group.can_run("k")  # window: two starts within the last 4 s
    assert group.get_rate_limit_delay("k") == 2.0
    await asyncio.sleep(2)
    assert group.can_run("k")


async def test_reset_forgets_counts_cooldowns_and_windows() -> None:
    group = make_group(
        max_concurrent=1, cooldown=10, rate_limit=RateLimit(max_per_window=1, window=10)
    )
    assert group.acquire_slot("a")
    assert group.acquire_slot("b")
    group.release_slot("b")
    assert not group.can_run("a") and not group.can_run("b")
    group.reset()
    assert group.get_running_count("a") == 0
    assert group.get_cooldown_remaining("b") == 0.0
    assert group.get_rate_limit_delay("b") == 0.0
    assert group.can_run("a") and group.can_run("b")
    assert group.statistics() == idle(group)


async def test_reset_re_offers_waiting_triggers() -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    assert group.acquire_slot("k")  # held outside the manager
    waiting = spawn(manager.trigger_task(t, "a"))
    await settle()
    assert gates.started == [] and group.statistics().waiting == 1
    group.reset()
    await gates.wait_started("a")
    gates.finish("a")
    assert await waiting == "a"
    assert group.statistics() == idle(group)


async def test_reset_while_a_run_holds_a_slot_forgets_it() -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    group.reset()
    assert group.get_running_count("k") == 0
    assert group.statistics() == idle(group)
    second = spawn(manager.trigger_task(t, "b"))  # the forgotten slot does not block it
    await gates.wait_started("b")
    gates.finish("a")
    assert await first == "a"
    # The first run's end gives back nothing: the slot it held was forgotten.
    assert group.get_running_count("k") == 1
    third = spawn(manager.trigger_task(t, "c"))
    await settle()
    assert gates.started == ["a", "b"]
    gates.finish("b")
    await gates.wait_started("c")
    gates.finish("c")
    assert list(await asyncio.gather(second, third)) == ["b", "c"]
    assert group.statistics() == idle(group)


def test_a_group_starts_afresh_in_each_event_loop() -> None:
    group = make_group(max_concurrent=1, cooldown=100)

    async def hold() -> None:
        assert group.acquire_slot("k")
        assert group.acquire_slot("other")
        group.release_slot("other")  # a cooldown timer on this loop
        assert group.statistics().tracked_keys == 2

    async def fresh() -> None:
        assert group.can_run("k") and group.can_run("other")
        assert group.statistics() == idle(group)
        manager = manager_with(group)
        assert await manager.trigger_task(Task(task_function=lambda: "ran")) == "ran"

    asyncio.run(hold())
    asyncio.run(fresh())


def test_groups_can_be_removed_outside_an_event_loop() -> None:
    manager = manager_with(make_group(name="a"), make_group(name="b"))
    manager.remove_constraint_group("a")
    assert [g.name for g in manager.constraint_groups] == ["b"]


async def test_slots_taken_through_the_group_block_triggers_and_release_wakes_them() -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    assert group.acquire_slot("k")
    waiting = spawn(manager.trigger_task(t, "a"))
    await settle()
    assert gates.started == []
    group.release_slot("k")
    await gates.wait_started("a")
    assert group.get_running_count("k") == 1
    gates.finish("a")
    assert await waiting == "a"
    assert group.statistics() == idle(group)


async def test_statistics_is_a_frozen_snapshot_of_ints() -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in ("a", "b", "c")]
    await settle()
    stats = group.statistics()
    assert isinstance(stats, ConstraintGroupStatistics)
    assert stats == ConstraintGroupStatistics(name="g", tracked_keys=1, running=1, waiting=2)
    assert all(type(v) is int for v in (stats.tracked_keys, stats.running, stats.waiting))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.running = 0  # type: ignore[misc]
    assert repr(group) == "<TaskConstraintGroup 'g' keys=1 running=1 waiting=2>"
    for x in ("a", "b", "c"):
        await gates.wait_started(x)
        assert stats.running == 1  # a snapshot: it does not change
        gates.finish(x)
    await asyncio.gather(*runs)
    assert group.statistics() == idle(group)


def test_inspection_outside_a_running_loop() -> None:
    group = make_group(max_concurrent=1, cooldown=1)
    assert group.can_run("k")
    assert group.acquire_slot("k")
    assert not group.acquire_slot("k")
    assert group.get_running_count("k") == 1
    group.release_slot("k")
    assert group.get_running_count("k") == 0
    group.reset()
    assert group.statistics() == idle(group)


# ---------------------------------------------------------------- keys and the None exemption


async def test_max_concurrent_is_per_key() -> None:
    group = make_group(max_concurrent=2, constraint_key_for_execution=first_char)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in ("a1", "a2", "a3", "b1", "b2", "b3")]
    await settle()
    assert gates.started == ["a1", "a2", "b1", "b2"]
    assert (group.get_running_count("a"), group.get_running_count("b")) == (2, 2)
    assert group.statistics() == ConstraintGroupStatistics(
        name="g", tracked_keys=2, running=4, waiting=2
    )
    gates.finish("b1")
    await gates.wait_started("b3")
    assert gates.started == ["a1", "a2", "b1", "b2", "b3"]
    for x in ("a1", "a2", "b2", "b3"):
        gates.finish(x)
    await gates.wait_started("a3")
    gates.finish("a3")
    assert await asyncio.gather(*runs) == ["a1", "a2", "a3", "b1", "b2", "b3"]
    assert gates.max_running == 4
    assert group.statistics() == idle(group)


async def test_the_key_depends_on_the_input() -> None:
    group = make_group(max_concurrent=1, constraint_key_for_execution=lambda task, x: f"user-{x}")
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in (1, 2, 1)]
    await settle()
    assert gates.started == [1, 2]
    assert group.get_running_count("user-1") == group.get_running_count("user-2") == 1
    gates.finish(1)
    gates.finish(2)
    await settle()
    assert gates.started == [1, 2, 1]
    gates.finish(1)
    assert await asyncio.gather(*runs) == [1, 2, 1]


async def test_the_key_depends_on_the_task() -> None:
    group = make_group(
        max_concurrent=1, constraint_key_for_execution=lambda task, x: task.data["k"]
    )
    manager = manager_with(group)
    gates = Gates()
    t1 = Task(name="t1", task_function=gates.function, data={"k": "one"})
    t2 = Task(name="t2", task_function=gates.function, data={"k": "two"})
    t3 = Task(name="t3", task_function=gates.function, data={"k": "one"})
    runs = [spawn(manager.trigger_task(t, x)) for t, x in ((t1, "a"), (t2, "b"), (t3, "c"))]
    await settle()
    assert gates.started == ["a", "b"]
    gates.finish("a")
    gates.finish("b")
    await gates.wait_started("c")
    gates.finish("c")
    await asyncio.gather(*runs)


async def test_a_none_key_exempts_the_trigger_from_the_group() -> None:
    def key(task: Task[Any, Any], x: Any) -> str | None:
        return None if x.startswith("free") else "k"

    group = make_group(max_concurrent=1, cooldown=100, constraint_key_for_execution=key)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    blocker = spawn(manager.trigger_task(t, "a1"))
    await gates.wait_started("a1")
    free = [spawn(manager.trigger_task(t, f"free{i}")) for i in range(3)]
    await settle()
    # The exempt runs start next to the run that holds the key's only slot.
    assert gates.started == ["a1", "free0", "free1", "free2"]
    assert group.statistics() == ConstraintGroupStatistics(
        name="g", tracked_keys=1, running=1, waiting=0
    )
    for i in range(3):
        gates.finish(f"free{i}")
    assert await asyncio.gather(*free) == ["free0", "free1", "free2"]
    # The exempt runs left no cooldown behind them either.
    assert await manager.trigger_task(Task(name="u", task_function=lambda: "u"), "free3") == "u"
    gates.finish("a1")
    await blocker
    assert asyncio.get_running_loop().time() == 0.0
    assert group.get_cooldown_remaining("k") == 100.0


async def test_a_key_exempt_in_one_group_is_still_constrained_by_another() -> None:
    exempting = make_group(
        name="exempting", max_concurrent=1, constraint_key_for_execution=lambda t, x: None
    )
    limiting = make_group(name="limiting", max_concurrent=1)
    manager = manager_with(exempting, limiting)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in ("a", "b")]
    await settle()
    assert gates.started == ["a"]
    assert exempting.statistics() == idle(exempting)
    assert limiting.statistics().waiting == 1
    gates.finish("a")
    await gates.wait_started("b")
    gates.finish("b")
    await asyncio.gather(*runs)


# -------------------------------------------------------------------- several groups at once


async def test_slots_are_taken_in_every_group_at_once_or_in_none() -> None:
    per_user = make_group(name="user", max_concurrent=1, constraint_key_for_execution=first_char)
    per_api = make_group(
        name="api", max_concurrent=1, constraint_key_for_execution=lambda t, x: "api"
    )
    manager = manager_with(per_user, per_api)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a1"))
    await gates.wait_started("a1")
    # b1's user key is free but the api key is not: it must not hold a user slot while waiting.
    second = spawn(manager.trigger_task(t, "b1"))
    await settle()
    assert per_user.get_running_count("b") == 0
    assert per_user.can_run("b")
    assert (per_user.statistics().waiting, per_api.statistics().waiting) == (1, 1)
    gates.finish("a1")
    await gates.wait_started("b1")
    assert per_user.get_running_count("b") == 1 and per_api.get_running_count("api") == 1
    assert per_user.get_running_count("a") == 0
    gates.finish("b1")
    await asyncio.gather(first, second)
    assert per_user.statistics() == idle(per_user)
    assert per_api.statistics() == idle(per_api)


async def test_group_waiting_counts_triggers_blocked_by_another_group() -> None:
    loose = make_group(name="loose", constraint_key_for_execution=first_char)
    tight = make_group(name="tight", max_concurrent=1)
    manager = manager_with(loose, tight)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in ("a1", "b1", "c1")]
    await settle()
    assert loose.statistics() == ConstraintGroupStatistics(
        name="loose", tracked_keys=3, running=1, waiting=2
    )
    assert tight.statistics() == ConstraintGroupStatistics(
        name="tight", tracked_keys=1, running=1, waiting=2
    )
    for x in ("a1", "b1", "c1"):
        await gates.wait_started(x)
        gates.finish(x)
    await asyncio.gather(*runs)
    assert loose.statistics() == idle(loose)
    assert tight.statistics() == idle(tight)


async def test_groups_apply_in_the_order_they_were_added() -> None:
    calls: list[str] = []

    def key_of(name: str) -> Callable[[Task[Any, Any], Any], str]:
        def key(task: Task[Any, Any], input: Any) -> str:
            calls.append(f"key:{name}")
            return "k"

        return key

    def check_of(name: str) -> Callable[[Task[Any, Any], Any], bool]:
        def check(task: Task[Any, Any], input: Any) -> bool:
            calls.append(f"check:{name}")
            return True

        return check

    groups = [
        make_group(name=n, constraint_key_for_execution=key_of(n), should_execute=check_of(n))
        for n in ("first", "second", "third")
    ]
    manager = manager_with(*groups)
    assert manager.constraint_groups == tuple(groups)
    t = Task(name="t", task_function=lambda: "done")
    assert await manager.trigger_task(t) == "done"
    assert calls == [
        "key:first",
        "key:second",
        "key:third",
        "check:first",
        "check:second",
        "check:third",
    ]


async def test_groups_can_be_added_and_removed_at_run_time() -> None:
    manager = TaskManager()
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    assert manager.constraint_groups == ()
    cap = make_group(name="cap", max_concurrent=1)
    manager.add_constraint_group(cap)
    first = spawn(manager.trigger_task(t, "a"))
    second = spawn(manager.trigger_task(t, "b"))
    await settle()
    assert gates.started == ["a"]
    # Removing the only group that blocks "b" lets it start at once.
    manager.remove_constraint_group("cap")
    assert manager.constraint_groups == ()
    await gates.wait_started("b")
    # A group added now applies to the triggers that come after.
    late = make_group(name="late", max_concurrent=1)
    manager.add_constraint_group(late)
    third = spawn(manager.trigger_task(t, "c"))
    fourth = spawn(manager.trigger_task(t, "d"))
    await settle()
    assert gates.started == ["a", "b", "c"]
    for x in "abc":
        gates.finish(x)
    await gates.wait_started("d")
    gates.finish("d")
    assert list(await asyncio.gather(first, second, third, fourth)) == ["a", "b", "c", "d"]
    assert cap.statistics() == idle(cap)
    assert late.statistics() == idle(late)


async def test_removing_a_group_re_offers_waiters_in_priority_order() -> None:
    cap = make_group(name="cap", max_concurrent=1)
    pair = make_group(name="pair", max_concurrent=2, constraint_key_for_execution=lambda t, x: "p")
    manager = manager_with(cap, pair)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, "a"))]
    await settle()
    runs += [
        spawn(manager.trigger_task_constrained(t, x, priority=p))
        for x, p in (("low", 0), ("high", 5), ("mid", 1))
    ]
    await settle()
    manager.remove_constraint_group("cap")
    await settle()
    # "pair" still allows two at once: "a" and the best waiter.
    assert gates.started == ["a", "high"]
    gates.finish("a")
    await gates.wait_started("mid")
    gates.finish("high")
    await gates.wait_started("low")
    gates.finish("mid")
    gates.finish("low")
    await asyncio.gather(*runs)
    assert cap.statistics() == idle(cap)
    assert pair.statistics() == idle(pair)


def test_group_names_are_unique_and_removal_needs_a_known_name() -> None:
    manager = manager_with(make_group(name="g"))
    with pytest.raises(ValueError, match=r"'g' is already added"):
        manager.add_constraint_group(make_group(name="g"))
    with pytest.raises(KeyError, match=r"'nope'"):
        manager.remove_constraint_group("nope")
    with pytest.raises(TypeError, match="add_constraint_group takes a TaskConstraintGroup"):
        manager.add_constraint_group("g")  # type: ignore[arg-type]


async def test_a_removed_group_can_be_added_again() -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    manager.remove_constraint_group("g")
    manager.add_constraint_group(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in "ab"]
    await settle()
    assert gates.started == ["a"]
    gates.finish("a")
    await gates.wait_started("b")
    gates.finish("b")
    await asyncio.gather(*runs)
    assert group.statistics() == idle(group)


async def test_removing_and_re_adding_a_group_keeps_its_cap() -> None:
    """A run that started while its group was removed still counts for the group's key (it
    is a run of that key); when the group is added again its cap holds, and every slot is
    given back exactly once."""
    outer = make_group(name="outer", max_concurrent=2)
    inner = make_group(name="inner", max_concurrent=1, constraint_key_for_execution=first_char)
    manager = manager_with(outer, inner)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in ("a1", "x1")]
    await settle()
    runs.append(spawn(manager.trigger_task(t, "a2")))  # blocked by "outer" (and "inner")
    await settle()
    assert gates.started == ["a1", "x1"]
    manager.remove_constraint_group("outer")
    gates.finish("a1")
    await gates.wait_started("a2")  # started with no "outer" in force
    manager.add_constraint_group(outer)
    assert outer.get_running_count("k") == 2  # x1 and a2
    runs.append(spawn(manager.trigger_task(t, "b1")))
    await settle()
    assert gates.started == ["a1", "x1", "a2"]
    gates.finish("a2")
    await gates.wait_started("b1")
    assert outer.get_running_count("k") == 2  # x1 and b1
    runs.append(spawn(manager.trigger_task(t, "c1")))
    await settle()
    assert gates.started == ["a1", "x1", "a2", "b1"]  # c1 waits: outer's key is full
    assert gates.max_running == 2
    gates.finish("b1")
    await gates.wait_started("c1")
    gates.finish("x1")
    gates.finish("c1")
    await asyncio.gather(*runs)
    assert outer.statistics() == idle(outer)
    assert inner.statistics() == idle(inner)


async def test_a_group_added_to_another_manager_is_rejected_naming_that_manager() -> None:
    """A group constrains one manager at a time: adding it to a second one fails, and it
    keeps constraining the first."""
    group = make_group(max_concurrent=1)
    first = manager_with(group)
    second = TaskManager()
    with pytest.raises(
        ValueError,
        match=(
            r"^constraint group 'g' is already added to another TaskManager, <TaskManager "
            r".*>; a group constrains one manager at a time: remove it there first "
            r"\(remove_constraint_group\('g'\)\)$"
        ),
    ):
        second.add_constraint_group(group)
    assert second.constraint_groups == ()
    with pytest.raises(KeyError, match="'g'"):
        second.remove_constraint_group("g")
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(first.trigger_task(t, x)) for x in "ab"]
    await settle()
    assert gates.started == ["a"]  # the cap of the first manager's group still holds
    gates.finish("a")
    await gates.wait_started("b")
    gates.finish("b")
    await asyncio.gather(*runs)


async def test_removing_a_group_frees_it_for_another_manager() -> None:
    group = make_group(max_concurrent=1)
    first = manager_with(group)
    first.remove_constraint_group("g")
    second = manager_with(group)
    assert second.constraint_groups == (group,)
    with pytest.raises(ValueError, match="already added to another TaskManager"):
        first.add_constraint_group(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(second.trigger_task(t, x)) for x in "ab"]
    runs.append(spawn(first.trigger_task(t, "free")))  # the first manager has no group now
    await settle()
    assert gates.started == ["a", "free"]
    for x in ("a", "free"):
        gates.finish(x)
    await gates.wait_started("b")
    gates.finish("b")
    await asyncio.gather(*runs)
    assert group.statistics() == idle(group)


def test_a_group_whose_manager_is_gone_is_free_for_another() -> None:
    group = make_group()
    first = manager_with(group)
    del first
    gc.collect()
    second = manager_with(group)
    assert second.constraint_groups == (group,)


async def test_a_trigger_is_neither_held_up_nor_resolved_by_a_group_moved_to_another_manager() -> (
    None
):
    """ "w" waits in the first manager and claims the key of "g" (share-latest). Once "g" is
    removed there and added to a second manager, it no longer applies to "w": a run of the
    second manager neither blocks "w" nor hands it its result."""
    first_only = make_group(
        name="h",
        max_concurrent=1,
        constraint_key_for_execution=lambda t, x: "k" if x in "aw" else None,
    )
    moving = make_group(
        name="g",
        max_concurrent=1,
        result_sharing="share-latest",
        constraint_key_for_execution=lambda t, x: "k" if x in "wr" else None,
    )
    first = manager_with(first_only, moving)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    a = spawn(first.trigger_task(t, "a"))
    w = spawn(first.trigger_task(t, "w"))  # waits for "a" (group "h")
    await settle()
    first.remove_constraint_group("g")
    second = manager_with(moving)
    r = spawn(second.trigger_task(t, "r"))  # holds the key of "g" in the second manager
    await settle()
    assert gates.started == ["a", "r"]
    gates.finish("a")
    await gates.wait_started("w")  # not held up by "r"
    gates.finish("r")
    await settle()
    assert not w.done()  # not resolved with the result of "r"
    gates.finish("w")
    assert [await a, await w, await r] == ["a", "w", "r"]
    await first.stop(timeout=1)
    await second.stop(timeout=1)


# ------------------------------------------------------------------------------ cooldown


async def test_cooldown_delays_the_next_start_of_the_key_exactly() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(max_concurrent=1, cooldown=2.5, constraint_key_for_execution=first_char)
    manager = manager_with(group)
    starts: list[tuple[str, float]] = []

    async def work(x: str) -> str:
        starts.append((x, loop.time()))
        await asyncio.sleep(1)
        return x

    t = Task(name="t", task_function=work)
    async with asyncio.timeout(60):
        results = await asyncio.gather(
            *(manager.trigger_task(t, x) for x in ("a1", "a2", "a3", "b1"))
        )
    assert results == ["a1", "a2", "a3", "b1"]
    # Each "a" run ends 1 s after it starts; the next "a" starts 2.5 s after that end.
    assert starts == [("a1", 0.0), ("b1", 0.0), ("a2", 3.5), ("a3", 7.0)]
    assert loop.time() == 8.0
    assert group.get_cooldown_remaining("a") == 2.5
    await asyncio.sleep(2.5)
    assert group.statistics() == idle(group)


async def test_cooldown_counts_from_the_end_of_a_failed_run_too() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(max_concurrent=1, cooldown=2)
    manager = manager_with(group)
    starts: list[float] = []

    async def work(x: str) -> str:
        starts.append(loop.time())
        await asyncio.sleep(1)
        if x == "fail":
            raise ValueError("boom")
        return x

    t = Task(name="t", task_function=work)
    failing = spawn(manager.trigger_task(t, "fail"))
    ok = spawn(manager.trigger_task(t, "ok"))
    with pytest.raises(ValueError, match="boom"):
        await failing
    assert await ok == "ok"
    assert starts == [0.0, 3.0]


async def test_cooldown_with_several_runs_at_once_counts_from_the_latest_end() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(max_concurrent=2, cooldown=1)
    manager = manager_with(group)
    starts: list[tuple[float, float]] = []

    async def work(duration: float) -> None:
        starts.append((duration, loop.time()))
        await asyncio.sleep(duration)

    t = Task(name="t", task_function=work)
    async with asyncio.timeout(60):
        await asyncio.gather(*(manager.trigger_task(t, d) for d in (2.0, 3.0, 0.5)))
    # The 2 s run ends at 2; the cooldown of the key then runs to 3, when the third starts
    # (the 3 s run still holds the other slot).
    assert starts == [(2.0, 0.0), (3.0, 0.0), (0.5, 3.0)]


async def test_a_trigger_during_an_idle_cooldown_waits_for_it() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(cooldown=4)
    manager = manager_with(group)
    t = Task(name="t", task_function=lambda: loop.time())
    assert await manager.trigger_task(t) == 0.0
    await asyncio.sleep(1)
    assert group.statistics().tracked_keys == 1
    assert await manager.trigger_task(t) == 4.0
    await asyncio.sleep(3.5)
    assert group.statistics().tracked_keys == 1
    await asyncio.sleep(0.5)
    assert group.statistics() == idle(group)


# ---------------------------------------------------------------------------- rate limit


async def test_rate_limit_bursts_up_to_the_cap_then_waits_for_the_oldest_to_leave() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(rate_limit=RateLimit(max_per_window=3, window=10))
    manager = manager_with(group)
    starts: list[tuple[int, float]] = []

    def work(x: int) -> int:
        starts.append((x, loop.time()))
        return x

    t = Task(name="t", task_function=work)
    async with asyncio.timeout(100):
        results = await asyncio.gather(*(manager.trigger_task(t, x) for x in range(7)))
    assert results == list(range(7))
    assert starts == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 10.0), (4, 10.0), (5, 10.0), (6, 20.0)]
    await asyncio.sleep(10)
    assert group.statistics() == idle(group)


async def test_rate_limit_is_a_sliding_window() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(rate_limit=RateLimit(max_per_window=2, window=5))
    manager = manager_with(group)
    t = Task(name="t", task_function=lambda: loop.time())
    assert await manager.trigger_task(t) == 0.0
    await asyncio.sleep(2)
    assert await manager.trigger_task(t) == 2.0
    await asyncio.sleep(1)
    # Two starts (t=0, t=2) inside the last 5 s: the next waits for t=0 to leave, at t=5,
    # and the one after that for t=2 to leave, at t=7.
    async with asyncio.timeout(60):
        later = await asyncio.gather(manager.trigger_task(t), manager.trigger_task(t))
    assert list(later) == [5.0, 7.0]


async def test_rate_limit_counts_running_and_finished_starts() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(rate_limit=RateLimit(max_per_window=2, window=3))
    manager = manager_with(group)
    starts: list[float] = []

    async def work(duration: float) -> None:
        starts.append(loop.time())
        await asyncio.sleep(duration)

    t = Task(name="t", task_function=work)
    async with asyncio.timeout(60):
        # The first run is still running at t=3; the second ended at t=1. Both count.
        await asyncio.gather(*(manager.trigger_task(t, d) for d in (10.0, 1.0, 1.0, 1.0)))
    assert starts == [0.0, 0.0, 3.0, 3.0]


async def test_rate_limit_is_per_key() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(
        rate_limit=RateLimit(max_per_window=1, window=4), constraint_key_for_execution=first_char
    )
    manager = manager_with(group)
    starts: dict[str, float] = {}

    def work(x: str) -> None:
        starts[x] = loop.time()

    t = Task(name="t", task_function=work)
    async with asyncio.timeout(60):
        await asyncio.gather(*(manager.trigger_task(t, x) for x in ("a1", "b1", "a2", "b2", "c1")))
    assert starts == {"a1": 0.0, "b1": 0.0, "c1": 0.0, "a2": 4.0, "b2": 4.0}


async def test_cooldown_and_rate_limit_together_wait_for_the_later_of_the_two() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(cooldown=1, rate_limit=RateLimit(max_per_window=2, window=6))
    manager = manager_with(group)
    t = Task(name="t", task_function=lambda: loop.time())
    async with asyncio.timeout(60):
        starts = await asyncio.gather(*(manager.trigger_task(t) for _ in range(4)))
    # 0; cooldown -> 1; window full (0, 1) until 6; then cooldown of the run at 6 -> 7.
    assert starts == [0.0, 1.0, 6.0, 7.0]


# ------------------------------------------------- exact boundaries of windows and cooldowns


def assert_at_most_per_window(starts: list[float], cap: int, window: float) -> None:
    """No ``cap + 1`` starts inside any half-open window of ``window`` seconds, counted in
    ticks of the virtual clock (a microsecond), where instants are exact."""
    ticks = sorted(round(s * 1_000_000) for s in starts)
    length = round(window * 1_000_000)
    for i in range(cap, len(ticks)):
        assert ticks[i] - ticks[i - cap] >= length, (starts, i)


@pytest.mark.parametrize(
    ("offset", "cap", "window"),
    [(0.0, 1, 0.1), (0.05, 1, 0.1), (0.0, 1, 0.3), (0.05, 2, 1.0), (1.0, 3, 0.7), (7.0, 1, 0.3)],
)
async def test_rate_limited_starts_come_exactly_one_window_apart(
    offset: float, cap: int, window: float
) -> None:
    """Each batch of ``cap`` starts at the very instant the previous batch leaves the
    window: never earlier (no burst), never later."""
    loop = asyncio.get_running_loop()
    group = make_group(rate_limit=RateLimit(max_per_window=cap, window=window))
    manager = manager_with(group)
    await asyncio.sleep(offset)
    t = Task(name="t", task_function=lambda x: loop.time())
    async with asyncio.timeout(100):
        starts = await asyncio.gather(*(manager.trigger_task(t, x) for x in range(40)))
    expected = [offset + (i // cap) * window for i in range(40)]
    assert starts == [pytest.approx(e, abs=1e-9) for e in expected]
    assert_at_most_per_window([s for s in starts if s is not None], cap, window)


async def test_a_start_leaves_the_rate_window_at_the_exact_end_of_the_window(
    record: Record,
) -> None:
    """A start at 0.2 with a 0.1 s window: at 0.3 on the virtual clock the key is free, for
    the inspection methods and for a trigger, which starts without waiting."""
    loop = asyncio.get_running_loop()
    group = make_group(rate_limit=RateLimit(max_per_window=1, window=0.1))
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    await asyncio.sleep(0.2)
    runs = [spawn(manager.trigger_task(t, "a"))]  # keeps running: the key keeps its state
    await gates.wait_started("a")
    await asyncio.sleep(0.099)
    assert not group.can_run("k")
    assert group.get_rate_limit_delay("k") == pytest.approx(0.001)
    await asyncio.sleep(0.001)
    assert loop.time() == 0.3  # 0.2 + 0.1 on the virtual clock: the end itself
    assert group.can_run("k")
    assert group.get_rate_limit_delay("k") == 0.0
    runs.append(spawn(manager.trigger_task(t, "b")))
    await gates.wait_started("b")
    assert gates.start_times == {"a": 0.2, "b": 0.3}
    assert "queued" not in event_types(events)  # free at that instant: it did not wait
    gates.finish("a")
    gates.finish("b")
    await asyncio.gather(*runs)


async def test_a_cooldown_ends_at_its_exact_end(record: Record) -> None:
    """A run ends at 0.2 with a 0.1 s cooldown (another run keeps the key busy): at 0.3 the
    key is free, for the inspection methods and for a trigger."""
    loop = asyncio.get_running_loop()
    group = make_group(max_concurrent=2, cooldown=0.1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    runs = [spawn(manager.trigger_task(t, x)) for x in ("busy", "a")]
    await gates.wait_started("a")
    await asyncio.sleep(0.2)
    gates.finish("a")
    await runs[1]
    await asyncio.sleep(0.099)
    assert not group.can_run("k")
    assert group.get_cooldown_remaining("k") == pytest.approx(0.001)
    await asyncio.sleep(0.001)
    assert loop.time() == 0.3
    assert group.can_run("k")
    assert group.get_cooldown_remaining("k") == 0.0
    runs.append(spawn(manager.trigger_task(t, "b")))
    await gates.wait_started("b")
    assert gates.start_times["b"] == 0.3
    assert "queued" not in event_types(events)
    gates.finish("busy")
    gates.finish("b")
    await asyncio.gather(*runs)


async def test_cooldowns_space_starts_exactly_at_non_binary_instants() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(max_concurrent=1, cooldown=0.1)
    manager = manager_with(group)
    await asyncio.sleep(0.05)
    t = Task(name="t", task_function=lambda x: loop.time())
    async with asyncio.timeout(100):
        starts = await asyncio.gather(*(manager.trigger_task(t, x) for x in range(40)))
    assert starts == [pytest.approx(0.05 + i * 0.1, abs=1e-9) for i in range(40)]


# ------------------------------------------------------------ starts that never ran


class NeverRan:
    SKIPPED = "should_execute says no"
    CHECK_RAISES = "should_execute raises"
    CANCELLED_IN_CHECK = "the caller is cancelled inside should_execute"


@pytest.mark.parametrize(
    "how", [NeverRan.SKIPPED, NeverRan.CHECK_RAISES, NeverRan.CANCELLED_IN_CHECK]
)
async def test_a_start_that_never_ran_gives_back_its_own_place_in_the_rate_window(
    how: str,
) -> None:
    """2 starts per 1.0 s. "a" takes its slot at 0 and, at 0.5, never runs after all; "b"
    started at 0.2 and still counts, so of "c" and "d" (at 0.6) only one fits before 1.2."""
    loop = asyncio.get_running_loop()
    verdict: asyncio.Future[bool] = loop.create_future()

    async def check(task: Task[Any, Any], x: str) -> bool:
        return await verdict if x == "a" else True

    group = make_group(rate_limit=RateLimit(max_per_window=2, window=1.0), should_execute=check)
    manager = manager_with(group)
    starts: dict[str, float] = {}

    def work(x: str) -> str:
        starts[x] = loop.time()
        return x

    t = Task(name="t", task_function=work)
    a = spawn(manager.trigger_task(t, "a"))
    await asyncio.sleep(0.2)
    assert await manager.trigger_task(t, "b") == "b"
    await asyncio.sleep(0.3)
    if how == NeverRan.SKIPPED:
        verdict.set_result(False)
        assert await a is None
    elif how == NeverRan.CHECK_RAISES:
        verdict.set_exception(RuntimeError("check failed"))
        with pytest.raises(RuntimeError, match="check failed"):
            await a
    else:
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
    await asyncio.sleep(0.1)
    async with asyncio.timeout(60):
        await asyncio.gather(manager.trigger_task(t, "c"), manager.trigger_task(t, "d"))
    assert starts == {"b": 0.2, "c": 0.6, "d": pytest.approx(1.2, abs=1e-9)}
    assert_at_most_per_window(list(starts.values()), 2, 1.0)
    await asyncio.sleep(1.0)
    assert group.statistics() == idle(group)


@pytest.mark.parametrize("shared", [False, True], ids=["none", "share-latest"])
async def test_a_run_counts_in_the_rate_window_from_the_instant_it_starts(shared: bool) -> None:
    """1 start per 1.0 s. "slow" takes its slot at 0 and its should_execute says yes at 2.0:
    that is when it starts, and its place in the window is held until then. So "early" (at
    1.2) waits: starting then, it would be followed by "slow" 0.8 s later; it starts at 3.0,
    one window after "slow" started (or, share-latest, gets the result of that run)."""
    loop = asyncio.get_running_loop()
    verdict: asyncio.Future[bool] = loop.create_future()

    async def check(task: Task[Any, Any], x: str) -> bool:
        return await verdict if x == "slow" else True

    group = make_group(
        rate_limit=RateLimit(max_per_window=1, window=1.0),
        should_execute=check,
        result_sharing="share-latest" if shared else "none",
    )
    manager = manager_with(group)
    starts: dict[str, float] = {}

    def work(x: str) -> str:
        starts[x] = loop.time()
        return x

    t = Task(name="t", task_function=work)
    slow = spawn(manager.trigger_task(t, "slow"))
    await asyncio.sleep(1.2)
    assert group.get_running_count("k") == 1
    assert not group.can_run("k")
    assert group.get_rate_limit_delay("k") == math.inf  # until "slow" starts or gives back
    loop.call_at(2.0, verdict.set_result, True)
    async with asyncio.timeout(60):
        # Shared: "early" waits for the key and gets the result of the run of "slow".
        assert await manager.trigger_task(t, "early") == ("slow" if shared else "early")
    assert await slow == "slow"
    assert starts == ({"slow": 2.0} if shared else {"slow": 2.0, "early": 3.0})
    assert group.get_rate_limit_delay("k") == 1.0  # the last start (2.0 or 3.0) counts
    assert_at_most_per_window(list(starts.values()), 1, 1.0)
    await asyncio.sleep(2.0)
    assert group.statistics() == idle(group)


async def test_a_woken_trigger_cancelled_before_it_runs_gives_back_its_window_place() -> None:
    """Woken at 0.5 (its slot taken then) and cancelled before it resumes: its start leaves
    the window, the next waiter takes its place at once, and the window holds exactly the
    starts that ran. (All three starts here fall at one instant, where they are alike.)"""
    loop = asyncio.get_running_loop()
    group = make_group(max_concurrent=1, rate_limit=RateLimit(max_per_window=2, window=1.0))
    manager = manager_with(group)
    t = Task(name="t", task_function=lambda x: loop.time())
    assert group.acquire_slot("k")  # a start at 0 through the group itself
    woken = spawn(manager.trigger_task(t, "woken"))
    after = spawn(manager.trigger_task(t, "after"))
    await settle()
    await asyncio.sleep(0.5)
    group.release_slot("k")  # hands the slot to "woken" at once
    woken.cancel()
    with pytest.raises(asyncio.CancelledError):
        await woken
    async with asyncio.timeout(60):
        assert await after == 0.5
    assert group.get_rate_limit_delay("k") == 0.5  # starts at 0 and 0.5: full until 1.0
    await asyncio.sleep(1.0)
    assert group.statistics() == idle(group)


# ---------------------------------------------------------------------------- share-latest


async def test_share_latest_resolves_the_waiters_with_the_result_without_running() -> None:
    group = make_group(
        max_concurrent=1, result_sharing="share-latest", constraint_key_for_execution=first_char
    )
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a1"))
    await gates.wait_started("a1")
    waiters = [spawn(manager.trigger_task(t, x)) for x in ("a2", "a3")]
    other_key = spawn(manager.trigger_task(t, "b1"))
    await settle()
    gates.finish("a1", "fresh")
    assert await first == "fresh"
    assert await asyncio.gather(*waiters) == ["fresh", "fresh"]
    assert gates.started == ["a1", "b1"]
    assert t.run_count == 2
    # A trigger that comes after the run ended runs on its own.
    later = spawn(manager.trigger_task(t, "a4"))
    await gates.wait_started("a4")
    gates.finish("a4")
    gates.finish("b1")
    assert list(await asyncio.gather(later, other_key)) == ["a4", "b1"]
    assert group.statistics() == idle(group)


async def test_share_latest_does_not_share_a_failure() -> None:
    group = make_group(max_concurrent=1, result_sharing="share-latest")
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    second = spawn(manager.trigger_task(t, "b"))
    await settle()
    gates.fail("a", ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        await first
    await gates.wait_started("b")  # it runs itself
    gates.finish("b")
    assert await second == "b"


async def test_share_latest_shares_with_waiters_blocked_by_time_too() -> None:
    group = make_group(cooldown=5, result_sharing="share-latest")
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    await asyncio.sleep(1)
    second = spawn(manager.trigger_task(t, "b"))  # max_concurrent is inf: b starts too
    await gates.wait_started("b")
    gates.finish("a")
    assert await first == "a"
    third = spawn(manager.trigger_task(t, "c"))  # waits for the cooldown
    await settle()
    assert gates.started == ["a", "b"]
    gates.finish("b", "from b")
    assert await second == "from b"
    assert await third == "from b"
    assert asyncio.get_running_loop().time() == 1.0


async def test_share_latest_applies_only_to_the_keys_of_its_group() -> None:
    sharing = make_group(name="sharing", max_concurrent=1, result_sharing="share-latest")
    plain = make_group(name="plain", max_concurrent=1, constraint_key_for_execution=first_char)
    manager = manager_with(plain, sharing)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a1"))
    await gates.wait_started("a1")
    second = spawn(manager.trigger_task(t, "b1"))  # waits on "sharing" only
    await settle()
    gates.finish("a1", "shared")
    assert list(await asyncio.gather(first, second)) == ["shared", "shared"]
    assert gates.started == ["a1"]
    assert sharing.statistics() == idle(sharing)
    assert plain.statistics() == idle(plain)


async def cancelled(task: asyncio.Task[Any]) -> None:
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(60):
            await task
    assert task.cancelled()


def only_this_task_left() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_share_latest_cancelling_the_running_caller_detaches_only_it(
    record: Record,
) -> None:
    """The caller whose trigger runs the shared run is cancelled: the run goes on for the
    triggers waiting to share it, and they get its result."""
    group = make_group(max_concurrent=1, result_sharing="share-latest")
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    waiters = [spawn(manager.trigger_task(t, x)) for x in ("b", "c")]
    await settle()
    first.cancel()
    await cancelled(first)
    await settle()
    assert gates.cancelled == [] and gates.running == {"a"}
    assert (group.get_running_count("k"), group.statistics().waiting) == (1, 2)
    assert manager.statistics().running == 1
    late = spawn(manager.trigger_task(t, "d"))  # the run is not being cancelled: it shares
    await settle()
    gates.finish("a", "fresh")
    async with asyncio.timeout(60):
        assert await asyncio.gather(*waiters, late) == ["fresh"] * 3
    assert gates.started == ["a"]
    # Each waiter that shared the result completes with a run of its own that never started.
    assert (
        event_types(events)
        == ["started", "queued", "queued", "queued", "completed"] + ["completed"] * 3
    )
    assert [e.run and e.run.started_at is None for e in events if e.type == "completed"] == [
        False,
        True,
        True,
        True,
    ]
    assert (t.run_count, t.error_count) == (1, 0)
    assert group.statistics() == idle(group)
    assert manager.statistics().running == 0
    only_this_task_left()


async def test_share_latest_run_is_cancelled_when_every_awaiter_is_cancelled(
    record: Record,
) -> None:
    group = make_group(max_concurrent=1, cooldown=1, result_sharing="share-latest")
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    waiters = [spawn(manager.trigger_task(t, x)) for x in ("b", "c")]
    await settle()
    first.cancel()
    await cancelled(first)
    waiters[0].cancel()
    await cancelled(waiters[0])
    await settle()
    assert gates.cancelled == []  # c still awaits the run
    waiters[1].cancel()
    await cancelled(waiters[1])
    await settle()
    assert gates.cancelled == ["a"]
    run_events = [e for e in events if e.type in ("started", "completed", "cancelled")]
    assert [(e.type, e.error) for e in run_events] == [
        ("started", None),
        ("cancelled", "cancelled while waiting"),
        ("cancelled", "cancelled while waiting"),
        ("cancelled", "cancelled"),
    ]
    assert (t.run_count, t.error_count, t.running) == (1, 0, False)
    # Its slot was given back once, with the cooldown of a run that ran.
    assert group.get_running_count("k") == 0
    assert group.get_cooldown_remaining("k") == 1.0
    assert manager.statistics() == dataclasses.replace(manager.statistics(), running=0, waiting=0)
    await asyncio.sleep(1)
    assert group.statistics() == idle(group)
    only_this_task_left()
    later = spawn(manager.trigger_task(t, "e"))
    await gates.wait_started("e")
    gates.finish("e")
    assert await later == "e"


async def test_share_latest_detached_run_that_fails_lets_its_waiters_run() -> None:
    group = make_group(max_concurrent=1, result_sharing="share-latest")
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    waiters = [spawn(manager.trigger_task(t, x)) for x in ("b", "c")]
    await settle()
    first.cancel()
    await cancelled(first)
    gates.fail("a", ValueError("boom"))
    await gates.wait_started("b")  # a failure is not shared: b runs, c shares b's result
    assert group.get_running_count("k") == 1
    gates.finish("b", "from b")
    async with asyncio.timeout(60):
        assert await asyncio.gather(*waiters) == ["from b", "from b"]
    assert gates.started == ["a", "b"]
    assert (t.run_count, t.error_count) == (2, 1)
    assert group.statistics() == idle(group)
    assert manager.statistics().running == 0
    only_this_task_left()


@pytest.mark.parametrize("sharer", [False, True])
@pytest.mark.parametrize("turns", [1, 2, 3])
async def test_share_latest_a_trigger_never_joins_a_run_being_cancelled(
    sharer: bool, turns: int
) -> None:
    """Every awaiter of the run has been cancelled (with ``sharer``, a waiter too, after
    the caller detached); ``turns`` loop turns later a new trigger runs on its own, even if
    the cancelled run's function swallows the cancellation and returns."""
    group = make_group(max_concurrent=1, result_sharing="share-latest")
    manager = manager_with(group)
    loop = asyncio.get_running_loop()
    starts: list[str] = []

    async def stubborn(x: str) -> str:
        starts.append(x)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # winds down over a loop turn, then returns anyway
        return f"result of {x}"

    t = Task(name="t", task_function=stubborn)
    first = spawn(manager.trigger_task(t, "a"))
    await asyncio.sleep(1)
    waiter = spawn(manager.trigger_task(t, "w")) if sharer else None
    await settle()
    first.cancel()
    if waiter is not None:
        await settle()
        waiter.cancel()
    for _ in range(turns):
        await asyncio.sleep(0)
    async with asyncio.timeout(60):
        assert await manager.trigger_task(t, "b") == "result of b"
    assert loop.time() == 11.0
    assert starts == ["a", "b"]
    for task in (first, waiter):
        if task is not None:
            await cancelled(task)
    assert group.statistics() == idle(group)
    only_this_task_left()


@pytest.mark.parametrize("drain", [True, False])
async def test_share_latest_stop_ends_a_detached_run(drain: bool) -> None:
    """``drain=True``: the run goes on for its waiter until the timeout cancels it.
    ``drain=False``: stop fails the waiter at once, so nobody awaits the run any more."""
    group = make_group(max_concurrent=1, result_sharing="share-latest")
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    waiter = spawn(manager.trigger_task(t, "b"))
    await settle()
    first.cancel()
    await cancelled(first)
    async with asyncio.timeout(60):
        await manager.stop(timeout=5, drain=drain)
    assert asyncio.get_running_loop().time() == (5.0 if drain else 0.0)
    assert gates.cancelled == ["a"]
    with pytest.raises(TaskManagerStoppedError):
        await waiter
    assert manager.statistics() == dataclasses.replace(manager.statistics(), running=0, waiting=0)
    assert group.statistics() == idle(group)
    only_this_task_left()


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="none")


async def test_share_latest_run_sees_its_callers_context_and_its_own_current_task() -> None:
    """A share-latest run goes in an asyncio task of its own: its function still sees the
    context variables its caller set, and ``asyncio.timeout`` inside it times out the run
    itself, also after its caller left."""
    group = make_group(max_concurrent=1, result_sharing="share-latest")
    manager = manager_with(group)

    async def work(x: str) -> str:
        try:
            async with asyncio.timeout(2):
                await asyncio.sleep(5)
        except TimeoutError:
            return f"{x} for {REQUEST_ID.get()}, timed out at {asyncio.get_running_loop().time()}"
        return "not timed out"

    t = Task(name="t", task_function=work)

    async def call(x: str, request_id: str) -> Any:
        REQUEST_ID.set(request_id)
        return await manager.trigger_task(t, x)

    first = spawn(call("a", "r1"))
    await asyncio.sleep(1)
    waiter = spawn(call("b", "r2"))
    await settle()
    first.cancel()
    await cancelled(first)
    async with asyncio.timeout(60):
        assert await waiter == "a for r1, timed out at 2.0"
    assert group.statistics() == idle(group)
    only_this_task_left()


async def test_share_latest_run_stopped_before_its_first_step_never_runs(record: Record) -> None:
    """``stop(timeout=1)`` runs out in the instant the trigger's ``should_execute`` lets it
    through: its run is cancelled before it started, and nothing is left behind."""

    async def check(task: Task[Any, Any], x: Any) -> bool:
        await asyncio.sleep(1)
        return True

    group = make_group(max_concurrent=1, result_sharing="share-latest", should_execute=check)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    caller = spawn(manager.trigger_task(t, "a"))
    await asyncio.sleep(0)
    async with asyncio.timeout(60):
        await manager.stop(timeout=1)
        with pytest.raises(TaskManagerStoppedError):
            await caller
    assert asyncio.get_running_loop().time() == 1.0
    assert event_types(events)[-1] == "cancelled"
    assert gates.started == [] or gates.cancelled == ["a"]
    assert manager.statistics() == dataclasses.replace(manager.statistics(), running=0, waiting=0)
    assert group.statistics() == idle(group)
    only_this_task_left()


# --------------------------------------------------------------------------- should_execute


async def test_should_execute_no_skips_the_run_and_returns_none(record: Record) -> None:
    group = make_group(should_execute=lambda task, x: x != "skip")
    manager = manager_with(group)
    calls: list[str] = []

    def work(x: str) -> str:
        calls.append(x)
        return x

    t = Task(name="t", task_function=work)
    events = record(t)
    assert await manager.trigger_task(t, "skip") is None
    assert calls == [] and t.run_count == 0
    assert event_types(events) == ["skipped"]
    assert events[0].task.name == "t"
    assert await manager.trigger_task(t, "go") == "go"
    assert event_types(events) == ["skipped", "started", "completed"]
    assert group.statistics() == idle(group)


async def test_async_should_execute() -> None:
    loop = asyncio.get_running_loop()

    async def check(task: Task[Any, Any], x: Any) -> bool:
        await asyncio.sleep(2)
        return bool(x)

    manager = manager_with(make_group(should_execute=check))
    t = Task(name="t", task_function=lambda x: (x, loop.time()))
    assert await manager.trigger_task(t, 0) is None
    assert loop.time() == 2.0
    assert await manager.trigger_task(t, 1) == (1, 4.0)


async def test_a_no_releases_the_slots_without_a_cooldown() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(max_concurrent=1, cooldown=10, should_execute=lambda task, x: x != "skip")
    manager = manager_with(group)
    t = Task(name="t", task_function=lambda x: loop.time())
    assert await manager.trigger_task(t, "skip") is None
    assert group.get_cooldown_remaining("k") == 0.0
    assert group.statistics() == idle(group)
    assert await manager.trigger_task(t, "run") == 0.0
    assert group.get_cooldown_remaining("k") == 10.0


async def test_a_no_hands_the_slot_to_the_next_waiter_at_once() -> None:
    decisions = {"a": True, "b": False, "c": True}

    async def check(task: Task[Any, Any], x: Any) -> bool:
        return decisions[x]

    group = make_group(max_concurrent=1, cooldown=3, should_execute=check)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, x)) for x in "abc"]
    await gates.wait_started("a")
    gates.finish("a")
    await gates.wait_started("c")
    # "b" was skipped at t=3 (after a's cooldown); "c" started right away, no second cooldown.
    assert gates.start_times == {"a": 0.0, "c": 3.0}
    gates.finish("c")
    assert await asyncio.gather(*runs) == ["a", None, "c"]


async def test_every_group_must_say_yes() -> None:
    seen: list[str] = []

    def yes(task: Task[Any, Any], x: Any) -> bool:
        seen.append("yes")
        return True

    def no(task: Task[Any, Any], x: Any) -> bool:
        seen.append("no")
        return False

    g1 = make_group(name="g1", should_execute=yes)
    g2 = make_group(name="g2", should_execute=no)
    manager = manager_with(g1, g2)
    t = Task(name="t", task_function=lambda: "ran")
    assert await manager.trigger_task(t) is None
    assert seen == ["yes", "no"]
    assert g1.statistics() == idle(g1) and g2.statistics() == idle(g2)


async def test_should_execute_is_asked_even_when_the_group_key_is_none() -> None:
    seen: list[Any] = []

    def check(task: Task[Any, Any], x: str) -> bool:
        seen.append(x)
        return x != "no"

    group = make_group(constraint_key_for_execution=lambda task, x: None, should_execute=check)
    manager = manager_with(group)
    t = Task(name="t", task_function=lambda x: x)
    assert await manager.trigger_task(t, "yes") == "yes"
    assert await manager.trigger_task(t, "no") is None
    assert seen == ["yes", "no"]
    assert group.statistics() == idle(group)


async def test_should_execute_is_checked_again_when_a_waiting_triggers_turn_comes() -> None:
    allowed = {"open": True}
    checked: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()

    def check(task: Task[Any, Any], x: Any) -> bool:
        checked.append((x, loop.time()))
        return allowed["open"]

    group = make_group(max_concurrent=1, should_execute=check)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    second = spawn(manager.trigger_task(t, "b"))
    await settle()
    allowed["open"] = False  # changes while "b" waits
    await asyncio.sleep(1)
    gates.finish("a")
    assert await first == "a"
    assert await second is None
    assert gates.started == ["a"]
    assert checked == [("a", 0.0), ("b", 1.0)]
    assert group.statistics() == idle(group)


# ---------------------------------------------------------------------- priority and order


async def test_waiting_triggers_start_by_priority_then_arrival() -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, "first"))]
    await settle()
    order = [
        ("p0-a", 0),
        ("p5-a", 5),
        ("p0-b", 0),
        ("p5-b", 5),
        ("neg", -3),
        ("p1", 1),
        ("p0-c", 0),
    ]
    runs += [spawn(manager.trigger_task_constrained(t, x, priority=p)) for x, p in order]
    await settle()
    expected = ["first", "p5-a", "p5-b", "p1", "p0-a", "p0-b", "p0-c", "neg"]
    for i, x in enumerate(expected):
        await gates.wait_started(x)
        assert gates.started == expected[: i + 1]
        gates.finish(x)
    await asyncio.gather(*runs)


async def test_trigger_and_trigger_by_name_use_priority_zero() -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    manager.add_task(t)
    runs = [spawn(manager.trigger_task(t, "first"))]
    await settle()
    runs.append(spawn(manager.trigger_task_constrained(t, "neg", priority=-1)))
    runs.append(spawn(manager.trigger_task(t, "plain")))
    runs.append(spawn(manager.trigger_task_by_name("t", "by-name")))
    runs.append(spawn(manager.trigger_task_constrained(t, "zero")))
    await settle()
    for x in ("first", "plain", "by-name", "zero", "neg"):
        await gates.wait_started(x)
        gates.finish(x)
    await asyncio.gather(*runs)
    assert gates.started == ["first", "plain", "by-name", "zero", "neg"]


async def test_a_waiter_moved_to_another_key_keeps_its_place_before_later_arrivals() -> None:
    """A trigger that waited on one key and then finds another blocked waits there before the
    triggers that came after it, though they queued on that key first."""

    def letter(task: Task[Any, Any], input: str) -> str | None:
        return None if input.startswith("-") else input[0]

    letters = make_group(name="letters", constraint_key_for_execution=letter, max_concurrent=1)
    cap = make_group(name="cap", max_concurrent=1)
    manager = manager_with(letters, cap)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    assert letters.acquire_slot("a")
    runs = [spawn(manager.trigger_task(t, "b0"))]  # holds the cap
    await gates.wait_started("b0")
    runs.append(spawn(manager.trigger_task(t, "a1")))  # waits for key "a"
    await settle()
    runs += [spawn(manager.trigger_task(t, x)) for x in ("-2", "-3")]  # wait for the cap
    await settle()
    letters.release_slot("a")  # "a1" now waits for the cap, first in its line
    await settle()
    assert gates.started == ["b0"]
    expected = ["b0", "a1", "-2", "-3"]
    for i, x in enumerate(expected):
        await gates.wait_started(x)
        assert gates.started == expected[: i + 1]
        gates.finish(x)
    assert await asyncio.gather(*runs) == expected
    assert letters.statistics() == idle(letters)
    assert cap.statistics() == idle(cap)


@pytest.mark.parametrize("bad", [1.5, "1", True, None])
async def test_priority_must_be_an_int(bad: Any) -> None:
    manager = manager_with(make_group())
    t = Task(name="t", task_function=lambda: None)
    with pytest.raises(TypeError, match=r"^priority must be an int"):
        await manager.trigger_task_constrained(t, priority=bad)
    assert t.run_count == 0


async def test_a_blocked_key_never_holds_up_a_free_one() -> None:
    group = make_group(max_concurrent=1, constraint_key_for_execution=first_char)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, "a1"))]
    await settle()
    runs.append(spawn(manager.trigger_task_constrained(t, "a2", priority=100)))
    runs.append(spawn(manager.trigger_task_constrained(t, "b1", priority=-100)))
    await settle()
    assert gates.started == ["a1", "b1"]
    for x in ("b1", "a1", "a2"):
        await gates.wait_started(x)
        gates.finish(x)
    await asyncio.gather(*runs)


async def test_a_trigger_blocked_in_one_group_does_not_hold_up_others_in_another() -> None:
    user = make_group(name="user", max_concurrent=1, constraint_key_for_execution=first_char)
    shared = make_group(
        name="shared", max_concurrent=2, constraint_key_for_execution=lambda t, x: "s"
    )
    manager = manager_with(user, shared)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, "a1"))]
    await settle()
    # a2 (high priority) is blocked by its user key; b1 fits both groups and starts.
    runs.append(spawn(manager.trigger_task_constrained(t, "a2", priority=9)))
    runs.append(spawn(manager.trigger_task(t, "b1")))
    await settle()
    assert gates.started == ["a1", "b1"]
    # Both "shared" slots are taken; when a1 ends, a2 (now free on its user key) gets its slot.
    runs.append(spawn(manager.trigger_task(t, "c1")))
    await settle()
    gates.finish("a1")
    await gates.wait_started("a2")
    assert gates.started == ["a1", "b1", "a2"]
    for x in ("a2", "b1"):
        gates.finish(x)
    await gates.wait_started("c1")
    gates.finish("c1")
    await asyncio.gather(*runs)
    assert user.statistics() == idle(user) and shared.statistics() == idle(shared)


async def test_a_time_blocked_trigger_does_not_hold_up_a_free_one() -> None:
    loop = asyncio.get_running_loop()
    group = make_group(cooldown=10, constraint_key_for_execution=first_char)
    manager = manager_with(group)
    t = Task(name="t", task_function=lambda x: (x, loop.time()))
    assert await manager.trigger_task(t, "a1") == ("a1", 0.0)
    waiting = spawn(manager.trigger_task_constrained(t, "a2", priority=5))
    await settle()
    assert await manager.trigger_task(t, "b1") == ("b1", 0.0)
    assert await waiting == ("a2", 10.0)


async def test_waiters_freed_by_time_in_the_same_instant_start_in_arrival_order() -> None:
    """B and C want the same two keys. B waits on the second (its run cap), C on the first
    (its cooldown); both cooldowns end at t=3, and the first key's timer fires first.
    C must not take the second key from under B, which arrived first."""
    first = make_group(
        name="first",
        max_concurrent=2,
        cooldown=2,
        constraint_key_for_execution=lambda t, x: None if x == "D" else "k",
    )
    second = make_group(
        name="second",
        max_concurrent=1,
        cooldown=1.5,
        constraint_key_for_execution=lambda t, x: None if x == "A" else "k",
    )
    manager = manager_with(first, second)
    loop = asyncio.get_running_loop()
    starts: dict[str, float] = {}

    async def work(x: str) -> str:
        starts[x] = loop.time()
        await asyncio.sleep({"A": 1.0, "D": 1.5}.get(x, 5.0))
        return x

    t = Task(name="t", task_function=work)
    runs = [spawn(manager.trigger_task(t, "A")), spawn(manager.trigger_task(t, "D"))]
    await asyncio.sleep(0.5)
    runs.append(spawn(manager.trigger_task(t, "B")))  # blocked by "second" (D runs)
    await asyncio.sleep(0.7)
    runs.append(spawn(manager.trigger_task(t, "C")))  # blocked by "first" (A's cooldown)
    async with asyncio.timeout(60):
        await asyncio.gather(*runs)
    # B runs 3-8; then C waits for both cooldowns: 8 + 2 in "first", 8 + 1.5 in "second".
    assert starts == {"A": 0.0, "D": 0.0, "B": 3.0, "C": 10.0}


@pytest.mark.realtime
async def test_a_newcomer_after_a_busy_stretch_does_not_jump_a_time_blocked_waiter() -> None:
    """On a real clock a newcomer's first step can run after a waiter's cooldown ended but
    before the key's timer (ready callbacks run before timers that came due meanwhile): it
    must queue behind the waiter instead of taking the freed key."""
    group = make_group(max_concurrent=1, cooldown=0.3)
    manager = manager_with(group)
    starts: list[str] = []

    def work(x: str) -> str:
        starts.append(x)
        return x

    t = Task(name="t", task_function=work)
    assert await manager.trigger_task(t, "first") == "first"
    waiter = spawn(manager.trigger_task(t, "waiter"))
    await settle()
    assert group.statistics().waiting == 1
    newcomer = spawn(manager.trigger_task(t, "newcomer"))  # its first step is queued now
    time.sleep(0.35)  # noqa: ASYNC251 - the loop is busy past the end of the cooldown
    async with asyncio.timeout(5):
        results = list(await asyncio.gather(waiter, newcomer))
    assert results == ["waiter", "newcomer"]
    assert starts == ["first", "waiter", "newcomer"]


# ------------------------------------------------------------------------------ events


async def test_queued_is_emitted_only_for_a_trigger_that_waits(record: Record) -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    assert event_types(events) == ["started"]
    second = spawn(manager.trigger_task(t, "b"))
    await settle()
    assert event_types(events) == ["started", "queued"]
    assert events[1].task.status == "running"  # a snapshot: "a" is running
    gates.finish("a")
    await gates.wait_started("b")
    gates.finish("b")
    await asyncio.gather(first, second)
    assert event_types(events) == ["started", "queued", "completed", "started", "completed"]


# ----------------------------------------------------------------- cancelling a waiting trigger


async def test_cancelling_a_waiting_trigger_removes_it_and_emits_cancelled(record: Record) -> None:
    group = make_group(max_concurrent=1)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    doomed = spawn(manager.trigger_task(t, "b"))
    third = spawn(manager.trigger_task(t, "c"))
    await settle()
    assert group.statistics().waiting == 2
    assert manager.statistics().waiting == 2
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert group.statistics().waiting == 1
    assert manager.statistics().waiting == 1
    assert event_types(events) == ["started", "queued", "queued", "cancelled"]
    assert events[-1].error
    gates.finish("a")
    await gates.wait_started("c")
    assert gates.started == ["a", "c"]
    gates.finish("c")
    await asyncio.gather(first, third)
    assert t.run_count == 2 and t.error_count == 0
    assert group.statistics() == idle(group)


async def test_cancelling_a_time_blocked_trigger_drops_the_key_when_the_cooldown_ends() -> None:
    group = make_group(cooldown=5)
    manager = manager_with(group)
    t = Task(name="t", task_function=lambda: None)
    await manager.trigger_task(t)
    waiting = spawn(manager.trigger_task(t))
    await asyncio.sleep(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert group.statistics().waiting == 0
    assert t.run_count == 1
    await asyncio.sleep(4)
    assert group.statistics() == idle(group)


# ------------------------------------------------------------ slots released on every end


class EndKind:
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    CHECK_RAISES = "should_execute raises"


@pytest.mark.parametrize(
    "end",
    [EndKind.SUCCESS, EndKind.ERROR, EndKind.TIMEOUT, EndKind.CANCELLED, EndKind.CHECK_RAISES],
)
async def test_slots_are_released_whatever_the_end(end: str) -> None:
    loop = asyncio.get_running_loop()

    async def check(task: Task[Any, Any], x: Any) -> bool:
        if x == "first" and end == EndKind.CHECK_RAISES:
            await asyncio.sleep(1)
            raise RuntimeError("check failed")
        return True

    group = make_group(max_concurrent=1, should_execute=check)
    other = make_group(
        name="other", max_concurrent=1, constraint_key_for_execution=lambda t, x: "o"
    )
    manager = manager_with(group, other)

    async def work(x: str) -> str:
        if x == "first":
            await asyncio.sleep(1)
            if end == EndKind.ERROR:
                raise ValueError("boom")
            await asyncio.sleep(4)
        return f"{x}@{loop.time()}"

    t = Task(name="t", task_function=work, timeout=2 if end == EndKind.TIMEOUT else None)
    first = spawn(manager.trigger_task(t, "first"))
    second = spawn(manager.trigger_task(t, "second"))
    await settle()
    assert manager.statistics().waiting == 1
    assert group.statistics().running == other.statistics().running == 1
    if end == EndKind.CANCELLED:
        await asyncio.sleep(3)
        first.cancel()
    if end == EndKind.SUCCESS:
        assert await first == "first@5.0"
    elif end == EndKind.ERROR:
        with pytest.raises(ValueError, match="boom"):
            await first
    elif end == EndKind.TIMEOUT:
        with pytest.raises(TaskTimeoutError):
            await first
    elif end == EndKind.CANCELLED:
        with pytest.raises(asyncio.CancelledError):
            await first
    else:
        with pytest.raises(RuntimeError, match="check failed"):
            await first
    end_time = {
        EndKind.SUCCESS: 5.0,
        EndKind.ERROR: 1.0,
        EndKind.TIMEOUT: 2.0,
        EndKind.CANCELLED: 3.0,
        EndKind.CHECK_RAISES: 1.0,
    }[end]
    assert await second == f"second@{end_time}"
    assert manager.statistics().running == manager.statistics().waiting == 0
    assert group.statistics() == idle(group)
    assert other.statistics() == idle(other)


# ----------------------------------------------------- key functions and checks that raise


async def test_a_raising_key_function_fails_only_that_trigger(record: Record) -> None:
    def key(task: Task[Any, Any], x: Any) -> str:
        if x == "bad":
            raise LookupError("no key for bad")
        return "k"

    first = make_group(
        name="first", max_concurrent=1, constraint_key_for_execution=lambda t, x: "f"
    )
    raising = make_group(name="raising", max_concurrent=1, constraint_key_for_execution=key)
    manager = manager_with(first, raising)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    with pytest.raises(LookupError, match="no key for bad"):
        await manager.trigger_task(t, "bad")
    assert event_types(events) == ["failed"]
    assert events[0].error == "no key for bad"
    assert (t.run_count, t.error_count) == (0, 0)
    assert first.statistics() == idle(first)  # the key it took in "first" is dropped
    assert gates.started == []
    good = spawn(manager.trigger_task(t, "good"))
    await gates.wait_started("good")
    gates.finish("good")
    assert await good == "good"


class Halt(BaseException):
    """A BaseException that is neither an Exception nor a cancellation."""


@pytest.mark.parametrize("error_type", [Halt, GeneratorExit])
@pytest.mark.parametrize("raiser", ["key function", "should_execute", "async should_execute"])
async def test_a_key_function_or_check_raising_a_base_exception_is_recorded_and_released(
    record: Record, error_type: type[BaseException], raiser: str
) -> None:
    """As for an Exception: a failed event, nothing held, then the error propagates."""

    def hostile(task: Task[Any, Any], x: Any) -> Any:
        raise error_type("hostile")

    async def async_hostile(task: Task[Any, Any], x: Any) -> bool:
        raise error_type("hostile")

    first = make_group(
        name="first", max_concurrent=1, cooldown=5, constraint_key_for_execution=lambda t, x: "f"
    )
    if raiser == "key function":
        second = make_group(name="second", constraint_key_for_execution=hostile)
    else:
        check = hostile if raiser == "should_execute" else async_hostile
        second = make_group(name="second", should_execute=check)
    manager = manager_with(first, second)
    t = Task(name="t", task_function=lambda: "ran")
    events = record(t)
    with pytest.raises(error_type):
        await manager.trigger_task(t)
    assert [(e.type, e.error) for e in events] == [("failed", "hostile")]
    assert (t.run_count, t.error_count) == (0, 0)
    # The key it took in "first" is dropped: no slot, no cooldown, no state kept.
    assert first.statistics() == idle(first)
    assert second.statistics() == idle(second)
    assert manager.statistics().running == manager.statistics().waiting == 0


async def test_a_raising_key_function_of_a_waiting_peer_does_not_disturb_the_queue() -> None:
    def key(task: Task[Any, Any], x: Any) -> str:
        if x == "bad":
            raise LookupError("bad")
        return "k"

    group = make_group(max_concurrent=1, constraint_key_for_execution=key)
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    runs = [spawn(manager.trigger_task(t, "a")), spawn(manager.trigger_task(t, "b"))]
    await settle()
    with pytest.raises(LookupError):
        await manager.trigger_task(t, "bad")
    assert group.statistics() == ConstraintGroupStatistics(
        name="g", tracked_keys=1, running=1, waiting=1
    )
    gates.finish("a")
    await gates.wait_started("b")
    gates.finish("b")
    await asyncio.gather(*runs)


async def test_a_key_of_the_wrong_type_fails_the_trigger() -> None:
    manager = manager_with(make_group(name="ids", constraint_key_for_execution=lambda t, x: 1))
    t = Task(name="t", task_function=lambda: None)
    with pytest.raises(TypeError, match="must return a str or None, not 1"):
        await manager.trigger_task(t)
    assert t.run_count == 0


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_raising_should_execute_fails_the_trigger_and_releases_its_slots(
    record: Record, is_async: bool
) -> None:
    def sync_check(task: Task[Any, Any], x: Any) -> bool:
        if x == "bad":
            raise PermissionError("denied")
        return True

    async def async_check(task: Task[Any, Any], x: Any) -> bool:
        await asyncio.sleep(1)
        return sync_check(task, x)

    group = make_group(
        max_concurrent=1, cooldown=3, should_execute=async_check if is_async else sync_check
    )
    manager = manager_with(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    events = record(t)
    first = spawn(manager.trigger_task(t, "a"))
    await gates.wait_started("a")
    bad = spawn(manager.trigger_task(t, "bad"))
    good = spawn(manager.trigger_task(t, "good"))
    await settle()
    gates.finish("a")
    assert await first == "a"
    with pytest.raises(PermissionError, match="denied"):
        await bad
    failed = [event for event in events if event.type == "failed"]
    assert len(failed) == 1 and failed[0].error == "denied"
    await gates.wait_started("good")
    # "bad" had its turn when a's cooldown ended (t=3); it never ran, so no cooldown was
    # recorded for it: "good" is checked and starts right after.
    delay = 1.0 if is_async else 0.0
    assert gates.start_times == {"a": delay, "good": delay + 3.0 + 2 * delay}
    assert group.get_running_count("k") == 1
    gates.finish("good")
    assert await good == "good"
    assert t.run_count == 2
    assert t.error_count == 0  # error_count is for runs; "bad" never ran
    assert event_types(events) == [
        "started",
        "queued",
        "queued",
        "completed",
        "failed",
        "started",
        "completed",
    ]
    await asyncio.sleep(3)
    assert group.statistics() == idle(group)


# ----------------------------------------------------------------- no state for idle keys


async def test_no_state_is_kept_for_keys_at_quiescence() -> None:
    group = make_group(max_concurrent=2, constraint_key_for_execution=lambda t, x: f"key-{x % 50}")
    manager = manager_with(group)

    async def work(x: int) -> int:
        await asyncio.sleep(0.5)
        return x

    t = Task(name="t", task_function=work)
    async with asyncio.timeout(60):
        results = await asyncio.gather(*(manager.trigger_task(t, x) for x in range(500)))
    assert results == list(range(500))
    assert group.statistics() == idle(group)
    assert asyncio.get_running_loop().time() == 2.5  # 10 per key, 2 at a time, 0.5 s each


async def test_state_is_dropped_exactly_when_the_cooldown_and_window_run_out() -> None:
    cooling = make_group(name="cooling", cooldown=3)
    windowed = make_group(name="windowed", rate_limit=RateLimit(max_per_window=5, window=7))
    manager = manager_with(cooling, windowed)
    t = Task(name="t", task_function=lambda: None)
    await asyncio.sleep(1)
    await manager.trigger_task(t)
    await asyncio.sleep(2.5)
    assert cooling.statistics().tracked_keys == 1
    await asyncio.sleep(0.5)
    assert cooling.statistics() == idle(cooling)
    assert windowed.statistics().tracked_keys == 1
    await asyncio.sleep(3.5)
    assert windowed.statistics().tracked_keys == 1
    await asyncio.sleep(0.5)
    assert windowed.statistics() == idle(windowed)
