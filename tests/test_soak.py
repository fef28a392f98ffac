"""Soak: a million triggers over a hundred thousand keys through three stacked constraint
groups stay correct and flat.

Every trigger settles with its own input as its result, no group keeps any per-key state
afterwards, no asyncio task is left, and a second identical pass, traced by ``tracemalloc``,
leaves less than 1 MB more memory allocated than before it.

The size can be overridden with ``TASKBUFFER_SOAK_TRIGGERS`` (e.g. for a quick local run);
CI runs the full size.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from typing import Any

import pytest

from taskbuffer import RateLimit, Task, TaskConstraintGroup, TaskManager

TRIGGERS = int(os.environ.get("TASKBUFFER_SOAK_TRIGGERS", 1_000_000))
KEYS = 100_000
BATCH = 10_000  # triggers in flight at once: memory stays bounded
RATE_KEYS = 3
RATE = RateLimit(max_per_window=5_000, window=1.0)
MAX_GROWTH = 1_000_000  # bytes


def per_key(task: Task[Any, Any], i: int) -> str:
    return f"k{i % KEYS}"


def per_shard(task: Task[Any, Any], i: int) -> str:
    return f"s{i % 64}"


def rate_limited(task: Task[Any, Any], i: int) -> str | None:
    # A quarter of the triggers share three rate-limited keys; the rest are exempt.
    return None if i % 4 else f"r{i % RATE_KEYS}"


async def echo(i: int) -> int:
    return i


def make_groups() -> list[TaskConstraintGroup]:
    return [
        TaskConstraintGroup(name="key", constraint_key_for_execution=per_key, max_concurrent=1),
        TaskConstraintGroup(name="shard", constraint_key_for_execution=per_shard, max_concurrent=8),
        TaskConstraintGroup(
            name="rate", constraint_key_for_execution=rate_limited, rate_limit=RATE
        ),
    ]


async def one_pass(
    manager: TaskManager, task: Task[int], groups: list[TaskConstraintGroup]
) -> None:
    for start in range(0, TRIGGERS, BATCH):
        async with asyncio.timeout(3600):
            results = await asyncio.gather(
                *(manager.trigger_task(task, i) for i in range(start, start + BATCH))
            )
        if results != list(range(start, start + BATCH)):
            raise AssertionError(f"wrong results in the batch starting at {start}")
        del results
    await asyncio.sleep(RATE.window)  # the last starts leave the rate windows
    for group in groups:
        stats = group.statistics()
        assert (stats.tracked_keys, stats.running, stats.waiting) == (0, 0, 0), stats
    manager_stats = manager.statistics()
    assert (manager_stats.running, manager_stats.waiting) == (0, 0)
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_a_million_triggers_stay_correct_and_flat(capsys: pytest.CaptureFixture[str]) -> None:
    loop = asyncio.get_running_loop()
    groups = make_groups()
    manager = TaskManager()
    for group in groups:
        manager.add_constraint_group(group)
    task = Task(name="echo", task_function=echo)

    began = time.perf_counter()
    await one_pass(manager, task, groups)
    first = time.perf_counter() - began
    # A quarter of the triggers share 3 rate-limited keys at 5,000 starts per second each.
    expected_virtual = (TRIGGERS // 4) / RATE_KEYS / RATE.max_per_window
    assert loop.time() >= expected_virtual - 2 * RATE.window

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        await one_pass(manager, task, groups)
        second = time.perf_counter() - began
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert task.run_count == 2 * TRIGGERS
    with capsys.disabled():
        print(
            f"\nsoak: {TRIGGERS:,} triggers/pass; first pass {first:.1f} s, "
            f"second (traced) {second:.1f} s; growth {growth:,} B; virtual {loop.time():.0f} s"
        )
    assert growth < MAX_GROWTH, f"the second pass grew traced memory by {growth:,} bytes"
