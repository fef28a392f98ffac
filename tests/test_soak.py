"""Soak: triggers over many keys through three stacked constraint groups stay correct and flat.

Every trigger settles with its own input as its result, no group keeps any per-key state
afterwards, no asyncio task is left, and a second identical pass, traced by ``tracemalloc``,
leaves traced memory no more than ``MAX_GROWTH`` above where the first pass left it.

The default size (20,000 triggers per pass, a few seconds) is part of the README's test
command. ``TASKBUFFER_SOAK_TRIGGERS`` sets another size; ``.ci/run`` runs a million triggers
per pass as a step of its own:

    TASKBUFFER_SOAK_TRIGGERS=1000000 python -m pytest tests/test_soak.py

The other sizes scale with it: ten triggers per key, and a rate limit of one start per 200
triggers per second, so that the rate-limited keys are held back for about 17 s of (virtual)
time whatever the size.

Why the growth bound catches a leak: the bound is ``min(1 MB, 2 B x triggers)`` (40 KB at the
default size). Anything kept per trigger costs at least one 8-byte pointer in the container
that keeps it (and usually an object of 16 B or more besides), so a pass that leaks anything
per trigger grows by at least 8 B x triggers, four times the bound. Both passes are traced,
so a flat pass measures a few hundred bytes (about 200 B at 10,000 triggers, 400 B at
40,000), far below the bound.
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

TRIGGERS = int(os.environ.get("TASKBUFFER_SOAK_TRIGGERS", 20_000))
KEYS = max(1, TRIGGERS // 10)
BATCH = min(10_000, TRIGGERS)  # triggers in flight at once: memory stays bounded
RATE_KEYS = 3
RATE = RateLimit(max_per_window=max(1, TRIGGERS // 200), window=1.0)
MAX_GROWTH = min(1_000_000, 2 * TRIGGERS)  # bytes; see the module docstring


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
        stop = min(start + BATCH, TRIGGERS)
        async with asyncio.timeout(3600):
            results = await asyncio.gather(
                *(manager.trigger_task(task, i) for i in range(start, stop))
            )
        if results != list(range(start, stop)):
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
async def test_many_triggers_stay_correct_and_flat(capsys: pytest.CaptureFixture[str]) -> None:
    loop = asyncio.get_running_loop()
    groups = make_groups()
    manager = TaskManager()
    for group in groups:
        manager.add_constraint_group(group)
    task = Task(name="echo", task_function=echo)

    # Both passes are traced, so a structure the second pass reallocates (a dict outgrowing
    # its table) counts as the difference in size, not as the whole new block.
    gc.collect()
    tracemalloc.start()
    try:
        began = time.perf_counter()
        await one_pass(manager, task, groups)
        first = time.perf_counter() - began
        # A quarter of the triggers share 3 rate-limited keys, held to RATE per key.
        expected_virtual = (TRIGGERS // 4) / RATE_KEYS / RATE.max_per_window
        assert loop.time() >= expected_virtual - 2 * RATE.window
        gc.collect()
        settled = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        await one_pass(manager, task, groups)
        second = time.perf_counter() - began
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - settled
    finally:
        tracemalloc.stop()
    assert task.run_count == 2 * TRIGGERS
    with capsys.disabled():
        print(
            f"\nsoak: {TRIGGERS:,} triggers/pass (traced); first pass {first:.1f} s, "
            f"second {second:.1f} s; growth {growth:,} B (bound {MAX_GROWTH:,} B); "
            f"virtual {loop.time():.0f} s"
        )
    assert growth < MAX_GROWTH, f"the second pass grew traced memory by {growth:,} bytes"
