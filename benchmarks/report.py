"""From process runs to the table: medians, paired ratios, targets, correctness.

Absolute figures are medians over the repetitions. A ratio is the median of the per-repetition
ratios taskbuffer / baseline, each taken from a pair of processes run one right after the other
(A B), which cancels most of the drift of a shared, noisy machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .harness import ProcessRun, WorkloadRun
from .specs import Mode, Params

__all__ = ("Row", "render_table", "summarise")

PASS, FAIL, NONE = "PASS", "FAIL", "-"
HEADER = ("id", "name", "taskbuffer", "baseline", "ratio", "target", "verdict", "correct", "notes")


@dataclass
class Row:
    """One line of the table, with the numbers behind it for the JSON."""

    id: str
    name: str
    taskbuffer: str = NONE
    baseline: str = NONE
    ratio: str = NONE
    target: str = NONE
    verdict: str = NONE
    correct: str = NONE
    notes: str = ""
    values: dict[str, float | None] = field(default_factory=dict)

    def cells(self) -> tuple[str, ...]:
        """The row's cells, in :data:`HEADER` order."""
        return (
            self.id,
            self.name,
            self.taskbuffer,
            self.baseline,
            self.ratio,
            self.target,
            self.verdict,
            self.correct,
            self.notes,
        )

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready values."""
        return {**dict(zip(HEADER, self.cells(), strict=True)), "values": self.values}


# ---------------------------------------------------------------------------------- numbers


def _median(runs: Sequence[ProcessRun], metric: str) -> float | None:
    values = [r.metrics[metric] for r in runs if r.status == "ok" and metric in r.metrics]
    return statistics.median(values) if values else None


def _paired(
    run: WorkloadRun,
    combine: Callable[[float, float], float],
    metric: str,
    base_metric: str | None = None,
) -> float | None:
    """The median over repetitions of ``combine(taskbuffer, baseline)``."""
    values = [
        combine(a.metrics[metric], b.metrics[base_metric or metric])
        for a, b in zip(run.taskbuffer, run.baseline, strict=False)
        if a.status == b.status == "ok"
        and metric in a.metrics
        and (base_metric or metric) in b.metrics
        and b.metrics[base_metric or metric] > 0
    ]
    return statistics.median(values) if values else None


def _ratio(a: float, b: float) -> float:
    return a / b


def _difference(a: float, b: float) -> float:
    return a - b


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return NONE
    return f"{value:,.{digits}f}{unit}"


def _verdict(ok: bool | None) -> str:
    return NONE if ok is None else (PASS if ok else FAIL)


def _at_most(value: float | None, limit: float | None) -> bool | None:
    if value is None or limit is None:
        return None
    return value <= limit


def _sizes(params: Params) -> str:
    return " ".join(f"{k}={v:,}" for k, v in params.items())


def _correct(run: WorkloadRun) -> str:
    if run.unavailable is not None:
        return "n/a"
    if any(r.status == "error" for r in (*run.taskbuffer, *run.baseline)):
        return "ERROR!"
    return "ok" if not run.failures() else "FAIL!"


def _base_row(run: WorkloadRun, mode: Mode, name: str | None = None) -> Row:
    spec = run.spec
    notes = _sizes(run.params)
    if mode != "full":
        notes += f" ({mode} size)"
    return Row(
        id=spec.id,
        name=name or spec.name,
        target=spec.target_text or NONE,
        correct=_correct(run),
        notes=notes,
    )


# ------------------------------------------------------------------------------- summaries


def _timed_row(run: WorkloadRun, mode: Mode) -> list[Row]:
    """A workload timed in µs/op against a baseline, with a target on the ratio."""
    row = _base_row(run, mode)
    a, b = _median(run.taskbuffer, "us_per_op"), _median(run.baseline, "us_per_op")
    ratio = _paired(run, _ratio, "us_per_op")
    row.taskbuffer, row.baseline = _fmt(a, " µs/op"), _fmt(b, " µs/op")
    row.ratio = _fmt(ratio, "x")
    row.verdict = _verdict(_at_most(ratio, run.spec.targets.get("ratio")))
    row.values = {"taskbuffer_us_per_op": a, "baseline_us_per_op": b, "ratio": ratio}
    if run.spec.id == "W6":
        row.notes += "; baseline = W1's"
    return [row]


def _w3_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    """W3: timed against its baseline like the others, and it must make exactly 5 runs."""
    [row] = _timed_row(run, mode)
    runs = sorted({int(r.metrics.get("runs", -1)) for r in run.taskbuffer if r.status == "ok"})
    ok_ratio = _at_most(row.values["ratio"], run.spec.targets.get("ratio"))
    row.verdict = _verdict(ok_ratio if runs == [5] else False)
    row.notes = f"runs={'/'.join(map(str, runs)) or '?'}; " + row.notes
    row.values["runs"] = float(runs[0]) if len(runs) == 1 else None
    return [row]


def _c4_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    rows = []
    names = ("k1", "k2", "k3")
    for name in names:
        k = run.params[name]
        row = _base_row(run, mode, f"{run.spec.name} K={k:,}")
        row.target = NONE
        metric = f"us_{name}"
        a, b = _median(run.taskbuffer, metric), _median(run.baseline, metric)
        ratio = _paired(run, _ratio, metric)
        row.taskbuffer, row.baseline = _fmt(a, " µs/trig"), _fmt(b, " µs/trig")
        row.ratio = _fmt(ratio, "x")
        row.notes = f"K={k:,}, {max(1, run.params['volume'] // k)} round(s)"
        row.values = {"taskbuffer_us": a, "baseline_us": b, "ratio": ratio}
        rows.append(row)

    def scaling(r: ProcessRun) -> float | None:
        small, large = r.metrics.get("us_k1"), r.metrics.get("us_k3")
        return large / small if r.status == "ok" and small and large is not None else None

    pairs = [
        (sa, sb)
        for sa, sb in (
            (scaling(a), scaling(b)) for a, b in zip(run.taskbuffer, run.baseline, strict=False)
        )
        if sa is not None and sb is not None
    ]
    tb_scaling = statistics.median(p[0] for p in pairs) if pairs else None
    base_scaling = statistics.median(p[1] for p in pairs) if pairs else None
    relative = statistics.median(p[0] / p[1] for p in pairs) if pairs else None
    k1, k3 = run.params["k1"], run.params["k3"]
    row = _base_row(run, mode, f"{run.spec.name} K={k3:,}:{k1:,}")
    row.taskbuffer, row.baseline = _fmt(tb_scaling), _fmt(base_scaling)
    row.ratio = _fmt(relative, "x")
    targets = run.spec.targets
    ok = _at_most(tb_scaling, targets.get("scaling"))
    ok_relative = _at_most(relative, targets.get("vs_baseline"))
    row.verdict = _verdict(None if ok is None or ok_relative is None else ok and ok_relative)
    row.notes = "per-trigger cost at the largest K / at the smallest K; ratio = ratio of ratios"
    row.values = {"taskbuffer_scaling": tb_scaling, "baseline_scaling": base_scaling}
    row.values["ratio_of_ratios"] = relative
    rows.append(row)
    return rows


def _c5_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    row = _base_row(run, mode)
    metric = "bytes_per_trigger"
    a, b = _median(run.taskbuffer, metric), _median(run.baseline, metric)
    ratio = _paired(run, _ratio, metric)
    row.taskbuffer, row.baseline = _fmt(a, " B", 0), _fmt(b, " B", 0)
    row.ratio = _fmt(ratio, "x")
    row.verdict = _verdict(_at_most(ratio, run.spec.targets.get("ratio")))
    row.notes = "per waiting trigger, asyncio task included; " + row.notes
    row.values = {"taskbuffer_bytes": a, "baseline_bytes": b, "ratio": ratio}
    return [row]


def _c6_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    row = _base_row(run, mode)
    a = _median(run.taskbuffer, "us_per_op")
    tracked = [r.metrics.get("tracked_keys") for r in run.taskbuffer if r.status == "ok"]
    row.taskbuffer = _fmt(a, " µs/op")
    row.verdict = _verdict(bool(tracked) and all(t == 0 for t in tracked))
    worst = max((t for t in tracked if t is not None), default=None)
    row.notes = (
        f"tracked_keys after = {NONE if worst is None else int(worst)}; max 1/key, "
        f"cooldown 0.01 s (in the time); " + row.notes
    )
    row.values = {"taskbuffer_us_per_op": a, "tracked_keys_max": worst}
    return [row]


def _e1_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    row = _base_row(run, mode)
    a, b = _median(run.taskbuffer, "us_per_op"), _median(run.baseline, "us_per_op")
    # Judged on the in-process paired difference (see e1_taskbuffer); the cross-process one
    # is kept in the JSON for comparison.
    added = _median(run.taskbuffer, "added_us")
    across = _paired(run, _difference, "us_per_op")
    reading = _paired(run, _difference, "us_per_op_reading", "us_per_op")
    row.taskbuffer, row.baseline = _fmt(a, " µs/op"), _fmt(b, " µs/op")
    row.ratio = _fmt(_paired(run, _ratio, "us_per_op"), "x")
    row.verdict = _verdict(_at_most(added, run.spec.targets.get("added_us")))
    row.notes = (
        f"added {_fmt(added, ' µs/trigger')} in paired passes (a subscriber that reads "
        f"event.task: {_fmt(reading, ' µs')}); " + row.notes
    )
    row.values = {"taskbuffer_us_per_op": a, "baseline_us_per_op": b, "added_us": added}
    row.values["added_us_across_processes"] = across
    row.values["added_us_reading_task"] = reading
    return [row]


def _e2_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    row = _base_row(run, mode)
    a, b = _median(run.taskbuffer, "us_per_op"), _median(run.baseline, "us_per_op")
    added = _median(run.taskbuffer, "added_us")  # paired passes in one process, as E1
    row.taskbuffer, row.baseline = _fmt(a, " µs/op"), _fmt(b, " µs/op")
    row.ratio = _fmt(_paired(run, _ratio, "us_per_op"), "x")
    row.verdict = _verdict(_at_most(added, run.spec.targets.get("added_us")))
    row.notes = f"added {_fmt(added, ' µs/trigger')} in paired passes; " + row.notes
    row.values = {"taskbuffer_us_per_op": a, "baseline_us_per_op": b, "added_us": added}
    return [row]


def _d1_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    """D1: W1 with a dashboard client against none, paired in one process; a stalled client."""
    row = _base_row(run, mode)
    a, b = _median(run.taskbuffer, "us_per_op"), _median(run.taskbuffer, "us_per_op_no_client")
    ratio = _median(run.taskbuffer, "ratio")
    stalled = _median(run.taskbuffer, "stalled_bytes")
    row.taskbuffer, row.baseline = _fmt(a, " µs/op"), _fmt(b, " µs/op")
    row.ratio = _fmt(ratio, "x")
    targets = run.spec.targets
    ok = _at_most(ratio, targets.get("ratio"))
    ok_stalled = _at_most(stalled, targets.get("stalled_bytes"))
    row.verdict = _verdict(None if ok is None or ok_stalled is None else ok and ok_stalled)
    row.notes = (
        f"baseline = no client, same process; a client stalled for the stall time: "
        f"{_fmt(None if stalled is None else stalled / 1024, ' KiB', 1)} traced growth; "
        + row.notes
    )
    row.values = {"with_client_us_per_op": a, "no_client_us_per_op": b, "ratio": ratio}
    row.values["stalled_bytes"] = stalled
    return [row]


def _s1_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    row = _base_row(run, mode)
    if run.unavailable is not None:
        row.taskbuffer = "not available"
        row.notes = run.unavailable
        return [row]
    ok_runs = [r for r in run.taskbuffer if r.status == "ok"]
    lateness = [x for r in ok_runs for x in r.info.get("lateness_ms", [])]
    median = statistics.median(lateness) if lateness else None
    worst = max(lateness) if lateness else None
    row.taskbuffer = f"median {_fmt(median, ' ms')}, max {_fmt(worst, ' ms')}"
    row.notes = f"{len(lateness)} tick(s) in {len(ok_runs)} process(es); " + row.notes
    row.values = {"median_ms": median, "max_ms": worst}
    return [row]


def _s2_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    rows = []
    names = ("k1", "k2", "k3")
    for name in names:
        k = run.params[name]
        row = _base_row(run, mode, f"{run.spec.name} K={k:,}")
        row.target = NONE
        call, fire = (
            _median(run.taskbuffer, f"us_call_{name}"),
            _median(run.taskbuffer, f"us_fire_{name}"),
        )
        row.taskbuffer = f"{_fmt(call, ' µs/call')}, {_fmt(fire, ' µs/fire')}"
        row.notes = f"K={k:,} runs of one task pending"
        row.values = {"us_per_call": call, "us_per_firing": fire}
        rows.append(row)
    call_scaling = _median(run.taskbuffer, "call_scaling")
    fire_scaling = _median(run.taskbuffer, "fire_scaling")
    k1, k3 = run.params["k1"], run.params["k3"]
    row = _base_row(run, mode, f"{run.spec.name} K={k3:,}:{k1:,}")
    row.taskbuffer = f"calls {_fmt(call_scaling)}, fires {_fmt(fire_scaling)}"
    limit = run.spec.targets.get("scaling")
    ok_call, ok_fire = _at_most(call_scaling, limit), _at_most(fire_scaling, limit)
    row.verdict = _verdict(None if ok_call is None or ok_fire is None else ok_call and ok_fire)
    row.notes = "cost per call and per firing at the largest K / at the smallest K (flat = 1.0)"
    row.values = {"call_scaling": call_scaling, "fire_scaling": fire_scaling}
    rows.append(row)
    return rows


def _v1_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    """V1: µs per service (start + stop) at each size, then the ratio largest : smallest."""
    rows = []
    for name in ("n1", "n2"):
        n = run.params[name]
        row = _base_row(run, mode, f"{run.spec.name} n={n:,}")
        row.target = NONE
        a = _median(run.taskbuffer, f"us_{name}")
        row.taskbuffer = _fmt(a, " µs/service")
        row.notes = f"n={n:,}, {max(1, run.params['volume'] // n)} round(s); start + stop"
        row.values = {"taskbuffer_us": a}
        rows.append(row)
    ratios = [
        r.metrics["us_n2"] / r.metrics["us_n1"]
        for r in run.taskbuffer
        if r.status == "ok" and r.metrics.get("us_n1") and "us_n2" in r.metrics
    ]
    scaling = statistics.median(ratios) if ratios else None
    n1, n2 = run.params["n1"], run.params["n2"]
    row = _base_row(run, mode, f"{run.spec.name} n={n2:,}:{n1:,}")
    row.taskbuffer = _fmt(scaling)
    row.verdict = _verdict(_at_most(scaling, run.spec.targets.get("scaling")))
    row.notes = "per-service cost at the largest n / at the smallest (flat = 1.0)"
    row.values = {"scaling": scaling}
    rows.append(row)
    return rows


def _at_least(value: float | None, limit: float | None) -> bool | None:
    if value is None or limit is None:
        return None
    return value >= limit


def _engines_missing(run: WorkloadRun, engine: str) -> str:
    why = next((r.info.get(f"{engine}_missing") for r in run.taskbuffer if r.status == "ok"), None)
    return f"{engine} not measured: {why}" if why else ""


def _rate_rows(
    run: WorkloadRun, mode: Mode, figures: Sequence[tuple[str, str]], limit: float | None
) -> list[Row]:
    """One row per (metric, label): jobs/s of both sides and their paired ratio (higher is
    better), judged against ``limit`` (at least) when there is one."""
    rows = []
    for metric, label in figures:
        row = _base_row(run, mode, f"{run.spec.name} {label}")
        if limit is None:
            row.target = NONE
        a, b = _median(run.taskbuffer, metric), _median(run.baseline, metric)
        ratio = _paired(run, _ratio, metric)
        row.taskbuffer, row.baseline = _fmt(a, " jobs/s", 0), _fmt(b, " jobs/s", 0)
        row.ratio = _fmt(ratio, "x")
        row.verdict = _verdict(_at_least(ratio, limit))
        missing = _engines_missing(run, label.split()[0])
        row.notes = missing or row.notes
        row.values = {"taskbuffer_jobs_per_s": a, "baseline_jobs_per_s": b, "ratio": ratio}
        rows.append(row)
    return rows


def _j1_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    figures = [(f"{e}_jobs_per_s", e) for e in ("sqlite", "postgres")]
    rows = _rate_rows(run, mode, figures, run.spec.targets.get("ratio_min"))
    for row in rows:
        if not row.notes.startswith(("sqlite not", "postgres not")):
            row.notes = "one worker, job_concurrency=10; " + row.notes
    return rows


def _j2_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    rows = []
    for engine in ("postgres", "sqlite"):
        row = _base_row(run, mode, f"{run.spec.name} {engine}")
        median = _median(run.taskbuffer, f"{engine}_median_ms")
        p99 = _median(run.taskbuffer, f"{engine}_p99_ms")
        row.taskbuffer = f"median {_fmt(median, ' ms')}, p99 {_fmt(p99, ' ms')}"
        targets = run.spec.targets
        if engine == "postgres":
            ok_median = _at_most(median, targets.get("median_ms"))
            ok_p99 = _at_most(p99, targets.get("p99_ms"))
            both = None if ok_median is None or ok_p99 is None else ok_median and ok_p99
            row.verdict = _verdict(both)
            row.notes = "LISTEN/NOTIFY; worker in another process; " + row.notes
        else:
            row.target = "(report)"
            row.notes = "data_version watch; worker in another process; " + row.notes
        row.notes = _engines_missing(run, engine) or row.notes
        row.values = {"median_ms": median, "p99_ms": p99}
        rows.append(row)
    return rows


def _j3_rows(run: WorkloadRun, mode: Mode) -> list[Row]:
    figures = [
        (f"{engine}_{kind}_per_s", f"{engine} {label}")
        for engine in ("sqlite", "postgres")
        for kind, label in (("single", "one by one"), ("batch", "enqueue_many"))
    ]
    return _rate_rows(run, mode, figures, None)


SUMMARIES: dict[str, Callable[[WorkloadRun, Mode], list[Row]]] = {
    "J1": _j1_rows,
    "J2": _j2_rows,
    "J3": _j3_rows,
    "W3": _w3_rows,
    "C4": _c4_rows,
    "C5": _c5_rows,
    "C6": _c6_rows,
    "E1": _e1_rows,
    "E2": _e2_rows,
    "D1": _d1_rows,
    "S1": _s1_rows,
    "S2": _s2_rows,
    "V1": _v1_rows,
}


def summarise(run: WorkloadRun, mode: Mode) -> list[Row]:
    """The table rows of one workload."""
    return SUMMARIES.get(run.spec.id, _timed_row)(run, mode)


def render_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned plain-text table, header first."""
    table = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(cells[i]) for cells in table) for i in range(len(HEADER) - 1)]
    numeric = {2, 3, 4}
    lines = []
    for n, cells in enumerate(table):
        parts = [
            cell.rjust(width) if i in numeric and n else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ]
        lines.append("  ".join([*parts, cells[-1]]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in [*widths, len(HEADER[-1])]))
    return "\n".join(lines)
