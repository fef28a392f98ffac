"""What each workload is: id, name, sizes per mode, baseline and target.

This module is read by the parent process, which never imports taskbuffer itself; the code of
the workloads is in :mod:`benchmarks.workloads`. Sizes of the ``full`` mode are those of
``BENCHMARKS.md``; ``quick`` and ``smoke`` shrink them (the table says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

__all__ = ("MODES", "SPECS", "Mode", "Params", "Spec", "spec_by_id", "warmup_params")

Mode: TypeAlias = Literal["full", "quick", "smoke"]
Params: TypeAlias = dict[str, int]

MODES: tuple[Mode, ...] = ("full", "quick", "smoke")


@dataclass(frozen=True, kw_only=True)
class Spec:
    """One workload of ``BENCHMARKS.md``.

    :param baseline: what the baseline process runs, or ``None`` when there is none (then only
        the taskbuffer side runs).
    :param sizes: the parameters of each mode; ``full`` are the sizes of ``BENCHMARKS.md``.
    :param targets: the numeric targets of the issue, read by :mod:`benchmarks.report`.
    :param target_text: the same, for the table.
    :param max_reps: a cap on repetitions (S1 is slow by nature: its ticks are its samples).
    :param warmup: run a tenth-size warm-up iteration before the measured one.
    :param fixed: parameters a warm-up keeps as they are (the others are divided by 10).
    """

    id: str
    name: str
    what: str
    baseline: str | None
    sizes: Mapping[Mode, Params]
    targets: Mapping[str, float] = field(default_factory=dict)
    target_text: str = ""
    max_reps: int | None = None
    warmup: bool = True
    fixed: frozenset[str] = frozenset()


def _sizes(full: Params, quick: Params, smoke: Params) -> dict[Mode, Params]:
    return {"full": full, "quick": quick, "smoke": smoke}


def _n(full: int, quick: int, smoke: int) -> dict[Mode, Params]:
    return _sizes({"n": full}, {"n": quick}, {"n": smoke})


SPECS: tuple[Spec, ...] = (
    Spec(
        id="W1",
        name="seq_trigger",
        what="n sequential awaited task.trigger(i) of a task returning i + 1",
        baseline="await fn(i)",
        sizes=_n(50_000, 10_000, 300),
        targets={"ratio": 12.0},
        target_text="<= 12x",
    ),
    Spec(
        id="W2",
        name="concurrent_trigger",
        what="n triggers started at once, gathered",
        baseline="gather of the bare coroutines",
        sizes=_n(50_000, 3_000, 300),
        targets={"ratio": 1.3},
        target_text="<= 1.3x",
    ),
    Spec(
        id="W3",
        name="buffered_burst",
        what="buffered task, buffer_max=5, function yields once; n triggers at once",
        baseline="minimal coalescing buffer, joiners await the run's future",
        sizes=_n(20_000, 2_000, 200),
        targets={"ratio": 10.0},
        target_text="runs == 5, <= 10x",
    ),
    Spec(
        id="W4",
        name="chain10",
        what="Taskchain of 10 trivial tasks; n sequential triggers",
        baseline="10 sequential awaits",
        sizes=_n(5_000, 500, 50),
        targets={"ratio": 12.0},
        target_text="<= 12x",
    ),
    Spec(
        id="W5",
        name="parallel10",
        what="Taskparallel of 10 trivial tasks; n sequential triggers",
        baseline="gather of 10",
        sizes=_n(5_000, 500, 50),
        targets={"ratio": 1.2},
        target_text="<= 1.2x",
    ),
    Spec(
        id="W6",
        name="manager_by_name",
        what="manager with 100 tasks, no groups; n sequential trigger_task_by_name",
        baseline="W1's baseline (await fn(i))",
        sizes=_sizes(
            {"n": 50_000, "tasks": 100}, {"n": 10_000, "tasks": 100}, {"n": 300, "tasks": 100}
        ),
        targets={"ratio": 15.0},
        target_text="<= 15x W1 base",
        fixed=frozenset({"tasks"}),
    ),
    Spec(
        id="C1",
        name="global_cap",
        what="one group, constant key, max_concurrent=10; n triggers at once, fn yields once",
        baseline="asyncio.Semaphore(10)",
        sizes=_n(100_000, 3_000, 500),
        targets={"ratio": 1.5},
        target_text="<= 1.5x",
    ),
    Spec(
        id="C2",
        name="key_mutex",
        what="keys str(i % 1000), max 1 per key; n triggers at once, fn yields once",
        baseline="dict of asyncio.Lock",
        sizes=_n(100_000, 3_000, 500),
        targets={"ratio": 1.5},
        target_text="<= 1.5x",
    ),
    Spec(
        id="C3",
        name="stacked",
        what="C1 + C2 + a group exempting even inputs and capping odd ones at 50",
        baseline="nested lock / Semaphore(50) / Semaphore(10)",
        sizes=_n(100_000, 3_000, 500),
        targets={"ratio": 1.5},
        target_text="<= 1.5x",
    ),
    Spec(
        id="C4",
        name="backlog_scaling",
        what="one key, max 1; K queued then drained (fn yields once)",
        baseline="asyncio.Semaphore(1)",
        sizes=_sizes(
            {"k1": 1_000, "k2": 10_000, "k3": 100_000, "volume": 100_000},
            {"k1": 100, "k2": 1_000, "k3": 3_000, "volume": 3_000},
            {"k1": 10, "k2": 100, "k3": 1_000, "volume": 1_000},
        ),
        targets={"scaling": 1.3, "vs_baseline": 1.2},
        target_text="ratio <= 1.3, <= 1.2x base ratio",
    ),
    Spec(
        id="C5",
        name="memory",
        what="bytes per trigger waiting behind a max-1 key (tracemalloc)",
        baseline="the same with asyncio.Semaphore(1)",
        sizes=_n(100_000, 3_000, 500),
        targets={"ratio": 1.2},
        target_text="<= 1.2x bytes",
    ),
    Spec(
        id="C6",
        name="cooldown_keys",
        what="keys str(i % keys), max 1 per key, cooldown 0.01 s; n triggers at once",
        baseline=None,
        sizes=_sizes(
            {"keys": 10_000, "n": 100_000},
            {"keys": 500, "n": 3_000},
            {"keys": 50, "n": 500},
        ),
        target_text="zero state after",
    ),
    Spec(
        id="E1",
        name="events",
        what="W1 with the task in a manager and one subscriber on task_subject",
        baseline="W1 in a manager without subscriber",
        sizes=_n(50_000, 10_000, 300),
        targets={"added_us": 1.5},
        target_text="<= 1.5 µs added",
    ),
    Spec(
        id="E2",
        name="event_run",
        what="E1 with a subscriber that reads event.run (progress, input) on every event",
        baseline="E1's subscriber, which does not read it",
        sizes=_n(50_000, 10_000, 300),
        targets={"added_us": 3.0},
        target_text="<= 3 µs added",
    ),
    Spec(
        id="S1",
        name="cron_jitter",
        what="6-field every-second schedule: lateness of each run's start",
        baseline=None,
        sizes=_sizes({"ticks": 20}, {"ticks": 3}, {"ticks": 1}),
        target_text="(report)",
        max_reps=1,
        warmup=False,
    ),
    Spec(
        id="S2",
        name="schedule_at_scaling",
        what=(
            "schedule_task_at of one task with K one-off runs already pending, and firing K due"
            " runs of one task; K = k1 / k2 / k3"
        ),
        baseline=None,
        sizes=_sizes(
            {"k1": 100, "k2": 1_000, "k3": 10_000, "calls": 2_000},
            {"k1": 100, "k2": 1_000, "k3": 10_000, "calls": 1_000},
            {"k1": 10, "k2": 100, "k3": 1_000, "calls": 100},
        ),
        targets={"scaling": 1.5},
        target_text="ratio <= 1.5 (calls and firings)",
    ),
    Spec(
        id="D1",
        name="dashboard_load",
        what=(
            "W1 (yielding every 50 triggers) with one dashboard client connected while 1,000"
            " events/s flow, against none connected; then a client that stops reading"
        ),
        baseline=None,
        sizes=_sizes({"n": 50_000, "stall": 30}, {"n": 10_000, "stall": 5}, {"n": 300, "stall": 1}),
        targets={"ratio": 1.1, "stalled_bytes": 1_000_000},
        target_text="<= 1.1x, stalled < 1 MB",
        warmup=False,
        max_reps=1,
    ),
    Spec(
        id="V1",
        name="services_scaling",
        what="start + stop of n services in a random dependency DAG: cost per service by n",
        baseline=None,
        sizes=_sizes(
            {"n1": 100, "n2": 1_000, "volume": 10_000},
            {"n1": 100, "n2": 1_000, "volume": 3_000},
            {"n1": 10, "n2": 100, "volume": 200},
        ),
        targets={"scaling": 1.5},
        target_text="ratio <= 1.5",
    ),
    Spec(
        id="J1",
        name="jobs_throughput",
        what="n trivial jobs enqueued, then worked by one manager (worker) process; jobs/s, "
        "SQLite and PostgreSQL",
        baseline="bare SQL loop: claim 10 due jobs per statement, complete them in one commit",
        sizes=_n(10_000, 2_000, 200),
        targets={"ratio_min": 0.67},
        target_text=">= 0.67x",
        # A pair takes ~8 s. One pair's ratio swings with the disk's fsync latency (two pairs
        # in a row gave 0.68 and 0.48 on SQLite): the median of five pairs, like the others.
        max_reps=5,
        warmup=False,
    ),
    Spec(
        id="J2",
        name="job_pickup",
        what="idle worker in another process: ms from enqueue commit to run start, "
        "jobs gap_ms apart; PostgreSQL (LISTEN/NOTIFY) and SQLite",
        baseline=None,
        sizes=_sizes(
            {"jobs": 200, "gap_ms": 20}, {"jobs": 100, "gap_ms": 20}, {"jobs": 10, "gap_ms": 20}
        ),
        targets={"median_ms": 3.0, "p99_ms": 10.0},
        target_text="PG median <= 3 ms, p99 <= 10 ms",
        max_reps=1,
        warmup=False,
    ),
    Spec(
        id="J3",
        name="enqueue_rate",
        what="single awaited manager.enqueue one by one, then batch jobs by store.enqueue_many "
        "(1,000 per call); jobs/s",
        baseline="bare INSERT: one row per commit, then 1,000 rows per statement",
        sizes=_sizes(
            {"single": 1_000, "batch": 10_000},
            {"single": 300, "batch": 3_000},
            {"single": 30, "batch": 300},
        ),
        target_text="(report)",
        max_reps=1,
        warmup=False,
    ),
)


def spec_by_id(workload_id: str) -> Spec:
    """The spec of ``workload_id`` (case-insensitive).

    :raises KeyError: no such workload.
    """
    wanted = workload_id.strip().upper()
    for spec in SPECS:
        if spec.id == wanted:
            return spec
    raise KeyError(workload_id)


def warmup_params(spec: Spec, params: Params) -> Params:
    """The parameters of the warm-up iteration: a tenth of each size (at least 1)."""
    return {k: v if k in spec.fixed else max(1, v // 10) for k, v in params.items()}
