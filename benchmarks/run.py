"""The command line: ``python -m benchmarks`` or ``python benchmarks/run.py``.

Runs every workload of ``BENCHMARKS.md`` (or those of ``--only``) in fresh processes,
alternating each with its baseline, and prints one table. The exit code is 1 when a
correctness check failed or a measuring process crashed, whatever the performance verdicts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import ROOT, WorkloadRun, run_child, run_workload  # noqa: E402
from benchmarks.report import Row, render_table, summarise  # noqa: E402
from benchmarks.specs import SPECS, Mode, Spec, spec_by_id  # noqa: E402

__all__ = ("main",)

DEFAULT_REPS: dict[Mode, int] = {"full": 5, "quick": 3, "smoke": 1}
PROFILE_DEFAULT = 10


def _ids(text: str) -> list[Spec]:
    specs = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            spec = spec_by_id(part)
        except KeyError:
            known = ", ".join(s.id for s in SPECS)
            raise argparse.ArgumentTypeError(
                f"unknown workload {part.strip()!r}; known: {known}"
            ) from None
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise argparse.ArgumentTypeError("no workload given")
    return specs


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    ids = ", ".join(f"{s.id} {s.name}" for s in SPECS)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run taskbuffer's benchmarks (BENCHMARKS.md) and print one table.",
        epilog=f"workloads: {ids}",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="reduced sizes, 3 repetitions: under a minute"
    )
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes, 1 repetition: checks that it all runs"
    )
    parser.add_argument(
        "--reps", type=_positive, help="repetitions per side (default: 5; --quick 3; --smoke 1)"
    )
    parser.add_argument("--only", type=_ids, metavar="IDS", help="comma-separated ids, e.g. W1,C2")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--profile",
        type=_ids,
        metavar="IDS",
        help="instead of the table: run the taskbuffer side of these workloads once under "
        "cProfile and print the top functions by own time (C5 also gets allocation sites)",
    )
    parser.add_argument(
        "--top", type=_positive, default=PROFILE_DEFAULT, help="lines per profile (default 10)"
    )
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _profile(specs: list[Spec], mode: Mode, top: int) -> int:
    """Profile the taskbuffer side of each workload; C5 also gets its allocation sites.

    The allocation sites come from a second process without cProfile (which allocates too).
    """
    status = 0
    for spec in specs:
        params = dict(spec.sizes[mode])
        print(f"==== {spec.id} {spec.name} (taskbuffer side, {mode} size: {params}) ====")
        runs = [run_child(spec, "taskbuffer", params, profile=top)]
        print(runs[0].output.strip())
        print(f"metrics under cProfile: {runs[0].metrics}")
        if spec.id == "C5":
            runs.append(run_child(spec, "taskbuffer", params, alloc_top=top))
            print(f"top {top} allocation sites of the waiting triggers (tracemalloc, per trigger):")
            for line in runs[1].info.get("alloc_top", []):
                print("  " + line)
            print(f"metrics: {runs[1].metrics}")
        for failure in (f for run in runs for f in run.failures()):
            print(f"CORRECTNESS FAILURE: {failure}")
            status = 1
        print()
    return status


def source_digest() -> str:
    """A short hash of taskbuffer's sources, to tell whether they changed during a run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "taskbuffer").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_state() -> str:
    """``<commit>`` or ``<commit>+dirty`` (uncommitted changes under taskbuffer/)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "taskbuffer"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _meta(argv: list[str], mode: Mode, reps: int, started: float) -> dict[str, Any]:
    return {
        "command": " ".join(["python -m benchmarks", *argv]),
        "mode": mode,
        "reps": reps,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "taskbuffer_git": git_state(),
        "taskbuffer_sources": source_digest(),
    }


def _write_json(
    path: Path, meta: dict[str, Any], rows: list[Row], runs: list[WorkloadRun], ok: bool
) -> None:
    document = {
        "meta": meta,
        "correct": ok,
        "rows": [row.to_json() for row in rows],
        "failures": [f"{run.spec.id}: {f}" for run in runs for f in run.failures()],
        "workloads": [run.to_json() for run in runs],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; returns the exit code (1 if a correctness check failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    mode: Mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.profile:
        return _profile(args.profile, mode, args.top)
    reps: int = args.reps or DEFAULT_REPS[mode]
    specs: list[Spec] = args.only or list(SPECS)
    started = time.time()
    meta = _meta(argv, mode, reps, started)
    sizes = "BENCHMARKS.md sizes" if mode == "full" else f"{mode} sizes, reduced (see notes)"
    _log(f"running {len(specs)} workload(s), {reps} repetition(s) per side, {sizes}")

    runs: list[WorkloadRun] = []
    rows: list[Row] = []
    for spec in specs:
        run = run_workload(spec, mode, reps, _log)
        runs.append(run)
        rows.extend(summarise(run, mode))
    wall = time.time() - started
    meta["wall_s"] = round(wall, 1)
    sources_after = source_digest()
    meta["taskbuffer_sources_changed"] = sources_after != meta["taskbuffer_sources"]
    failures = [f"{run.spec.id} {run.spec.name}: {f}" for run in runs for f in run.failures()]

    print(
        f"taskbuffer benchmarks: {sizes}; {reps} repetition(s) per side, each in a fresh "
        f"process, A/B alternating"
    )
    print(
        f"Python {meta['python']} on {meta['platform']}, {meta['cpus']} CPUs, "
        f"load average at start {meta['load_average_at_start']:.2f}"
    )
    print(f"taskbuffer {meta['taskbuffer_git']}, sources {meta['taskbuffer_sources']}")
    print()
    print(render_table(rows))
    print()
    print(
        "ratio: median over repetitions of taskbuffer / baseline, each pair measured back to back"
    )
    print("verdict: against the targets of the performance issue (does not change the exit code)")
    print("correct: every correctness check in every process (a failure makes the exit code 1)")
    if mode != "full":
        print(f"note: {mode} sizes; the targets are set for the BENCHMARKS.md sizes")
    print(f"wall time: {wall:.1f} s")
    if meta["taskbuffer_sources_changed"]:
        print(
            f"WARNING: taskbuffer's sources changed during the run ({meta['taskbuffer_sources']}"
            f" -> {sources_after}): the figures mix versions"
        )
    if failures:
        print()
        print(f"!!! CORRECTNESS FAILURES ({len(failures)}) !!!")
        for failure in failures:
            print(f"  {failure}")
    if args.json is not None:
        _write_json(args.json, meta, rows, runs, not failures)
        print(f"results written to {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
