"""One measuring process: ``python -m benchmarks.child ID SIDE --params JSON``.

It runs a tenth-size warm-up iteration of the workload (unless ``--no-warmup``), then the
measured iteration, both in one event loop, and prints the outcome as one JSON line prefixed
with :data:`RESULT_MARKER` on stdout. A crash is reported the same way (status ``error``, with
the traceback) and exits 1. ``--profile N`` runs the measured iteration under cProfile and
prints its top ``N`` functions by own time first; ``--alloc-top N`` makes a memory
workload (C5) record its top ``N`` allocation sites.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import resource
import sys
import time
import traceback
from typing import Any

from .measure import Check, Outcome
from .specs import Params, spec_by_id, warmup_params

__all__ = ("RESULT_MARKER", "main")

RESULT_MARKER = "@@benchmark-result@@ "


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child", description=__doc__)
    parser.add_argument("workload", help="workload id, e.g. W1")
    parser.add_argument("side", choices=("taskbuffer", "baseline"))
    parser.add_argument("--params", required=True, help="JSON object of int sizes")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up iteration")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print the top N functions by own time"
    )
    parser.add_argument(
        "--alloc-top",
        type=int,
        default=0,
        metavar="N",
        help="(memory workloads) also record the top N allocation sites of the measured iteration",
    )
    return parser.parse_args(argv)


async def _run(
    workload: str, side: str, params: Params, warmup: bool, profile: int, alloc_top: int
) -> Outcome:
    from .workloads import IMPLEMENTATIONS  # imports taskbuffer: only in the child

    implementation = IMPLEMENTATIONS[workload]
    run = implementation.taskbuffer if side == "taskbuffer" else implementation.baseline
    if run is None:
        raise ValueError(f"workload {workload} has no baseline")
    spec = spec_by_id(workload)
    warm_checks: list[Check] = []
    if warmup and spec.warmup:
        warm = await run(warmup_params(spec, params))
        if warm.status != "ok":
            return warm
        warm_checks = [Check(f"warm-up: {c.name}", c.ok, c.detail) for c in warm.checks]
    if alloc_top:
        params = {**params, "alloc_top": alloc_top}
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            outcome = await run(params)
        finally:
            profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(profile)
        print(text.getvalue())
    else:
        outcome = await run(params)
    outcome.checks[:0] = warm_checks
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Run one side of one workload and print its outcome; returns the exit code."""
    args = _parse(argv)
    params: Params = {str(k): int(v) for k, v in json.loads(args.params).items()}
    started = time.perf_counter()
    try:
        outcome = asyncio.run(
            _run(args.workload, args.side, params, not args.no_warmup, args.profile, args.alloc_top)
        )
    except Exception:
        outcome = Outcome(status="error", note=traceback.format_exc())
    result: dict[str, Any] = outcome.to_json()
    result["process"] = {
        "wall_s": time.perf_counter() - started,
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "python": sys.version.split()[0],
    }
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 1 if outcome.status == "error" else 0


if __name__ == "__main__":
    raise SystemExit(main())
