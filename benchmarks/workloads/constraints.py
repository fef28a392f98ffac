"""C1-C6: triggers through constraint groups, against asyncio's own primitives.

The task function is the same on both sides: it yields once (so that triggers really contend)
and counts what is in flight, so each workload can check that its caps held.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from taskbuffer import Task, TaskConstraintGroup, TaskManager

from ..measure import Outcome, Stopwatch
from ..specs import Params

__all__ = (
    "c1_baseline",
    "c1_taskbuffer",
    "c2_baseline",
    "c2_taskbuffer",
    "c3_baseline",
    "c3_taskbuffer",
    "c4_baseline",
    "c4_taskbuffer",
    "c5_baseline",
    "c5_taskbuffer",
    "c6_taskbuffer",
)

KEYS = 1000  # C2, C3: keys str(i % 1000)
GLOBAL_CAP = 10  # C1, C3
ODD_CAP = 50  # C3
COOLDOWN = 0.01  # C6, seconds

AsyncFn = Callable[[int], Coroutine[Any, Any, int]]


class Probe:
    """What the task function saw: peaks of runs in flight, overall, per key, for odd inputs."""

    __slots__ = ("inflight", "keyed", "key_violations", "odd", "odd_peak", "peak")

    def __init__(self, keys: int = KEYS) -> None:
        self.inflight = 0
        self.peak = 0
        self.keyed = [0] * keys
        self.key_violations = 0
        self.odd = 0
        self.odd_peak = 0


def global_probe() -> tuple[AsyncFn, Probe]:
    """A function that yields once and tracks the peak of runs in flight (C1, C4, C5)."""
    probe = Probe(0)

    async def fn(x: int) -> int:
        probe.inflight += 1
        if probe.inflight > probe.peak:
            probe.peak = probe.inflight
        await asyncio.sleep(0)
        probe.inflight -= 1
        return x + 1

    return fn, probe


def keyed_probe(keys: int = KEYS) -> tuple[AsyncFn, Probe]:
    """A function that yields once and counts runs of one key overlapping (C2)."""
    probe = Probe(keys)
    keyed = probe.keyed

    async def fn(x: int) -> int:
        slot = x % keys
        keyed[slot] += 1
        if keyed[slot] > 1:
            probe.key_violations += 1
        await asyncio.sleep(0)
        keyed[slot] -= 1
        return x + 1

    return fn, probe


def stacked_probe() -> tuple[AsyncFn, Probe]:
    """C3's function: tracks the global peak, per-key overlaps and the peak of odd inputs."""
    probe = Probe(KEYS)
    keyed = probe.keyed

    async def fn(x: int) -> int:
        slot = x % KEYS
        odd = x & 1
        probe.inflight += 1
        if probe.inflight > probe.peak:
            probe.peak = probe.inflight
        keyed[slot] += 1
        if keyed[slot] > 1:
            probe.key_violations += 1
        if odd:
            probe.odd += 1
            if probe.odd > probe.odd_peak:
                probe.odd_peak = probe.odd
        await asyncio.sleep(0)
        probe.inflight -= 1
        keyed[slot] -= 1
        if odd:
            probe.odd -= 1
        return x + 1

    return fn, probe


def _constant_key(_task: Task[Any, Any], _input: Any) -> str:
    return "all"


def _mod_key(_task: Task[Any, Any], x: int) -> str:
    return str(x % KEYS)


def _odd_key(_task: Task[Any, Any], x: int) -> str | None:
    return "odd" if x & 1 else None


def _manager(fn: AsyncFn, *groups: TaskConstraintGroup) -> tuple[TaskManager, Task[int]]:
    manager = TaskManager()
    for group in groups:
        manager.add_constraint_group(group)
    task = Task(task_function=fn, name="work")
    manager.add_task(task)
    return manager, task


def _gather_outcome(watch: Stopwatch, n: int, results: list[Any]) -> Outcome:
    out = Outcome()
    out.metrics["us_per_op"] = watch.us_per(n)
    out.info["n"] = n
    out.check("results", results == list(range(1, n + 1)), "results[i] == i + 1")
    return out


def _check_no_state(out: Outcome, *groups: TaskConstraintGroup) -> None:
    for group in groups:
        stats = group.statistics()
        out.check(
            f"group {group.name!r} empty after",
            stats.tracked_keys == 0 and stats.running == 0 and stats.waiting == 0,
            repr(stats),
        )


# ----------------------------------------------------------------------------- C1 global_cap


async def c1_taskbuffer(p: Params) -> Outcome:
    """C1: ``n`` triggers at once through one group, constant key, ``max_concurrent=10``."""
    n = p["n"]
    fn, probe = global_probe()
    group = TaskConstraintGroup(
        name="cap", constraint_key_for_execution=_constant_key, max_concurrent=GLOBAL_CAP
    )
    manager, task = _manager(fn, group)
    with Stopwatch() as watch:
        results = await asyncio.gather(*[manager.trigger_task(task, i) for i in range(n)])
    out = _gather_outcome(watch, n, results)
    out.info["peak_in_flight"] = probe.peak
    out.check("in flight <= 10", probe.peak <= GLOBAL_CAP, f"peak {probe.peak}")
    _check_no_state(out, group)
    return out


async def c1_baseline(p: Params) -> Outcome:
    """C1 baseline: ``asyncio.Semaphore(10)``."""
    n = p["n"]
    fn, probe = global_probe()
    semaphore = asyncio.Semaphore(GLOBAL_CAP)

    async def guarded(x: int) -> int:
        async with semaphore:
            return await fn(x)

    with Stopwatch() as watch:
        results = await asyncio.gather(*[guarded(i) for i in range(n)])
    out = _gather_outcome(watch, n, results)
    out.info["peak_in_flight"] = probe.peak
    out.check("in flight <= 10", probe.peak <= GLOBAL_CAP, f"peak {probe.peak}")
    return out


# ------------------------------------------------------------------------------ C2 key_mutex


async def c2_taskbuffer(p: Params) -> Outcome:
    """C2: ``n`` triggers at once, keys ``str(i % 1000)``, one run per key at a time."""
    n = p["n"]
    fn, probe = keyed_probe()
    group = TaskConstraintGroup(
        name="mutex", constraint_key_for_execution=_mod_key, max_concurrent=1
    )
    manager, task = _manager(fn, group)
    with Stopwatch() as watch:
        results = await asyncio.gather(*[manager.trigger_task(task, i) for i in range(n)])
    out = _gather_outcome(watch, n, results)
    out.check("max 1 per key", probe.key_violations == 0, f"{probe.key_violations} overlaps")
    _check_no_state(out, group)
    return out


def _lock_table() -> Callable[[str], asyncio.Lock]:
    locks: dict[str, asyncio.Lock] = {}

    def lock_for(key: str) -> asyncio.Lock:
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        return lock

    return lock_for


async def c2_baseline(p: Params) -> Outcome:
    """C2 baseline: a dict of ``asyncio.Lock``, one per key."""
    n = p["n"]
    fn, probe = keyed_probe()
    lock_for = _lock_table()

    async def guarded(x: int) -> int:
        async with lock_for(str(x % KEYS)):
            return await fn(x)

    with Stopwatch() as watch:
        results = await asyncio.gather(*[guarded(i) for i in range(n)])
    out = _gather_outcome(watch, n, results)
    out.check("max 1 per key", probe.key_violations == 0, f"{probe.key_violations} overlaps")
    return out


# -------------------------------------------------------------------------------- C3 stacked


def _check_stacked(out: Outcome, probe: Probe) -> None:
    out.info["peak_in_flight"] = probe.peak
    out.info["peak_odd_in_flight"] = probe.odd_peak
    out.check("in flight <= 10", probe.peak <= GLOBAL_CAP, f"peak {probe.peak}")
    out.check("max 1 per key", probe.key_violations == 0, f"{probe.key_violations} overlaps")
    out.check("odd in flight <= 50", probe.odd_peak <= ODD_CAP, f"peak {probe.odd_peak}")


async def c3_taskbuffer(p: Params) -> Outcome:
    """C3: C1's cap, C2's per-key mutex and a cap of 50 on odd inputs (even ones exempt)."""
    n = p["n"]
    fn, probe = stacked_probe()
    groups = (
        TaskConstraintGroup(
            name="cap", constraint_key_for_execution=_constant_key, max_concurrent=GLOBAL_CAP
        ),
        TaskConstraintGroup(name="mutex", constraint_key_for_execution=_mod_key, max_concurrent=1),
        TaskConstraintGroup(
            name="odd", constraint_key_for_execution=_odd_key, max_concurrent=ODD_CAP
        ),
    )
    manager, task = _manager(fn, *groups)
    with Stopwatch() as watch:
        results = await asyncio.gather(*[manager.trigger_task(task, i) for i in range(n)])
    out = _gather_outcome(watch, n, results)
    _check_stacked(out, probe)
    _check_no_state(out, *groups)
    return out


async def c3_baseline(p: Params) -> Outcome:
    """C3 baseline: per-key lock, then (odd inputs) a Semaphore(50), then a Semaphore(10).

    Acquired from the most specific to the most general, always in that order, so no trigger
    holds a global slot while it waits for its key.
    """
    n = p["n"]
    fn, probe = stacked_probe()
    lock_for = _lock_table()
    odd_semaphore = asyncio.Semaphore(ODD_CAP)
    semaphore = asyncio.Semaphore(GLOBAL_CAP)

    async def guarded(x: int) -> int:
        async with lock_for(str(x % KEYS)):
            if x & 1:
                async with odd_semaphore, semaphore:
                    return await fn(x)
            async with semaphore:
                return await fn(x)

    with Stopwatch() as watch:
        results = await asyncio.gather(*[guarded(i) for i in range(n)])
    out = _gather_outcome(watch, n, results)
    _check_stacked(out, probe)
    return out


# ------------------------------------------------------------------------ C4 backlog_scaling


async def _backlog(
    p: Params, make: Callable[[AsyncFn], Callable[[int], Awaitable[Any]]], out: Outcome
) -> list[Probe]:
    """Time ``K`` triggers queued on one key then drained, for each ``K`` of ``p``.

    A small ``K`` is repeated, back to back in one timed block, until about ``volume`` triggers
    went through: every ``K`` is timed over a similar amount of work.
    """
    probes = []
    for name in ("k1", "k2", "k3"):
        k = p[name]
        rounds = max(1, p["volume"] // k)
        fn, probe = global_probe()
        trigger = make(fn)
        expected = list(range(1, k + 1))
        ok = True
        with Stopwatch() as watch:
            for _ in range(rounds):
                results = await asyncio.gather(*[trigger(i) for i in range(k)])
                ok = ok and results == expected
        out.metrics[f"us_{name}"] = watch.us_per(k * rounds)
        out.info[name] = k
        out.info[f"rounds_{name}"] = rounds
        out.check(f"results (K={k})", ok, "results[i] == i + 1 in every round")
        out.check(f"in flight <= 1 (K={k})", probe.peak <= 1, f"peak {probe.peak}")
        probes.append(probe)
    return probes


async def c4_taskbuffer(p: Params) -> Outcome:
    """C4: one key, ``max_concurrent=1``; ``K`` triggers queued then drained."""
    out = Outcome()
    group = TaskConstraintGroup(
        name="one", constraint_key_for_execution=_constant_key, max_concurrent=1
    )
    manager = TaskManager()
    manager.add_constraint_group(group)

    def make(fn: AsyncFn) -> Callable[[int], Awaitable[Any]]:
        task = Task(task_function=fn, name=f"work{len(manager.task_map)}")
        manager.add_task(task)
        return lambda x: manager.trigger_task(task, x)

    await _backlog(p, make, out)
    _check_no_state(out, group)
    return out


async def c4_baseline(p: Params) -> Outcome:
    """C4 baseline: the same behind ``asyncio.Semaphore(1)``."""
    out = Outcome()

    def make(fn: AsyncFn) -> Callable[[int], Awaitable[Any]]:
        semaphore = asyncio.Semaphore(1)

        async def guarded(x: int) -> int:
            async with semaphore:
                return await fn(x)

        return guarded

    await _backlog(p, make, out)
    return out


# ---------------------------------------------------------------------------------- C5 memory


async def _settle(rounds: int = 3) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def _memory(
    p: Params,
    trigger: Callable[[int], Coroutine[Any, Any, Any]],
    waiting_count: Callable[[], int],
    gate: asyncio.Event,
    probe: Probe,
) -> Outcome:
    """Bytes per trigger waiting: a blocker holds the key, ``n`` triggers queue behind it.

    Everything allocated between "the blocker holds the key" and "all ``n`` wait" counts: the
    asyncio task per trigger (the same on both sides), its coroutine frames and whatever the
    waiting costs. ``alloc_top`` > 0 also records the top allocation sites.
    """
    n = p["n"]
    top = p.get("alloc_top", 0)
    out = Outcome()
    tracemalloc.start(8 if top else 1)
    try:
        blocker = asyncio.create_task(trigger(-1))
        await _settle()
        gc.collect()
        before_snapshot = tracemalloc.take_snapshot() if top else None
        before = tracemalloc.get_traced_memory()[0]
        waiting = [asyncio.create_task(trigger(i)) for i in range(n)]
        await _settle()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        if before_snapshot is not None:
            stats = tracemalloc.take_snapshot().compare_to(before_snapshot, "lineno")
            out.info["alloc_top"] = [
                f"{s.size_diff / n:8.1f} B/trigger {s.count_diff / n:6.2f} blocks/trigger  "
                f"{s.traceback[0].filename}:{s.traceback[0].lineno}"
                for s in stats[:top]
            ]
    finally:
        tracemalloc.stop()
    queued = waiting_count()
    gate.set()
    results = await asyncio.gather(*waiting)
    await blocker
    out.metrics["bytes_per_trigger"] = (after - before) / n
    out.info["n"] = n
    out.check_equal("triggers waiting when measured", queued, n)
    out.check("results", results == list(range(1, n + 1)), "results[i] == i + 1")
    out.check("in flight <= 1", probe.peak <= 1, f"peak {probe.peak}")
    return out


def gated_probe(gate: asyncio.Event) -> tuple[AsyncFn, Probe]:
    """A function that waits for ``gate`` on input -1 (the blocker) and tracks its peak."""
    probe = Probe(0)

    async def fn(x: int) -> int:
        probe.inflight += 1
        if probe.inflight > probe.peak:
            probe.peak = probe.inflight
        if x < 0:
            await gate.wait()
        probe.inflight -= 1
        return x + 1

    return fn, probe


async def c5_taskbuffer(p: Params) -> Outcome:
    """C5: ``n`` triggers waiting behind a ``max_concurrent=1`` key."""
    gate = asyncio.Event()
    fn, probe = gated_probe(gate)
    group = TaskConstraintGroup(
        name="one", constraint_key_for_execution=_constant_key, max_concurrent=1
    )
    manager, task = _manager(fn, group)
    out = await _memory(
        p,
        lambda x: manager.trigger_task(task, x),
        lambda: group.statistics().waiting,
        gate,
        probe,
    )
    _check_no_state(out, group)
    return out


async def c5_baseline(p: Params) -> Outcome:
    """C5 baseline: ``n`` coroutines waiting on an ``asyncio.Semaphore(1)``."""
    gate = asyncio.Event()
    fn, probe = gated_probe(gate)
    semaphore = asyncio.Semaphore(1)

    async def guarded(x: int) -> int:
        async with semaphore:
            return await fn(x)

    def waiting_count() -> int:
        waiters = getattr(semaphore, "_waiters", None)  # CPython's deque of waiting futures
        return len(waiters) if waiters is not None else -1

    return await _memory(p, guarded, waiting_count, gate, probe)


# --------------------------------------------------------------------------- C6 cooldown_keys


async def c6_taskbuffer(p: Params) -> Outcome:
    """C6: ``keys`` keys with a cooldown (and one run per key); ``n`` triggers at once.

    Afterwards, once the cooldowns have passed, the group must hold no state for any key.
    """
    n, keys = p["n"], p["keys"]
    loop = asyncio.get_running_loop()
    ends: list[float | None] = [None] * keys
    busy = [False] * keys
    early: list[float] = []
    overlaps = 0

    async def fn(x: int) -> int:
        nonlocal overlaps
        slot = x % keys
        last = ends[slot]
        if last is not None and loop.time() - last < COOLDOWN - 1e-3:
            early.append(loop.time() - last)
        if busy[slot]:
            overlaps += 1
        busy[slot] = True
        await asyncio.sleep(0)
        busy[slot] = False
        ends[slot] = loop.time()
        return x + 1

    group = TaskConstraintGroup(
        name="cooldown",
        constraint_key_for_execution=lambda _task, x: str(x % keys),
        max_concurrent=1,
        cooldown=COOLDOWN,
    )
    manager, task = _manager(fn, group)
    with Stopwatch() as watch:
        results = await asyncio.gather(*[manager.trigger_task(task, i) for i in range(n)])
    out = _gather_outcome(watch, n, results)
    out.info["keys"] = keys
    out.check("max 1 per key", overlaps == 0, f"{overlaps} overlaps")
    out.check(
        "cooldown kept between runs of a key",
        not early,
        f"{len(early)} early starts, shortest gap {min(early, default=0.0):.4f} s",
    )
    await asyncio.sleep(COOLDOWN * 3 + 0.05)
    stats = group.statistics()
    out.metrics["tracked_keys"] = stats.tracked_keys
    out.check_equal("tracked keys after the cooldowns", stats.tracked_keys, 0)
    _check_no_state(out, group)
    return out
