"""Runs workloads in fresh processes, alternating each with its baseline (A B A B ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .child import RESULT_MARKER
from .specs import Mode, Params, Spec

__all__ = ("ROOT", "ProcessRun", "WorkloadRun", "run_child", "run_workload")

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 1800.0  # seconds; a full-size run of the slowest workload takes well under a minute


@dataclass
class ProcessRun:
    """One side of one workload, measured once in its own process."""

    side: str
    rep: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    process: dict[str, Any] = field(default_factory=dict)
    output: str = ""

    @property
    def ok(self) -> bool:
        """Measured, and every check held."""
        return self.status == "ok" and all(c["ok"] for c in self.checks)

    def failures(self) -> list[str]:
        """What went wrong, one line each (empty when nothing did)."""
        if self.status == "error":
            return [f"{self.side} rep {self.rep + 1}: crashed: {self.note.strip()}"]
        return [
            f"{self.side} rep {self.rep + 1}: {c['name']}"
            + (f": {c['detail']}" if c["detail"] else "")
            for c in self.checks
            if not c["ok"]
        ]

    def to_json(self) -> dict[str, Any]:
        """The run as JSON-ready values (without the captured output)."""
        return {
            "side": self.side,
            "rep": self.rep,
            "status": self.status,
            "note": self.note,
            "metrics": self.metrics,
            "info": self.info,
            "checks": self.checks,
            "process": self.process,
        }


@dataclass
class WorkloadRun:
    """All the processes of one workload: its taskbuffer side and its baseline side."""

    spec: Spec
    params: Params
    taskbuffer: list[ProcessRun] = field(default_factory=list)
    baseline: list[ProcessRun] = field(default_factory=list)

    @property
    def unavailable(self) -> str | None:
        """Why the workload could not run on this build, or ``None``."""
        for run in self.taskbuffer:
            if run.status == "unavailable":
                return run.note
        return None

    def failures(self) -> list[str]:
        """Every failed check and crash, of both sides."""
        return [f for run in (*self.taskbuffer, *self.baseline) for f in run.failures()]

    def to_json(self) -> dict[str, Any]:
        """The workload's runs as JSON-ready values."""
        return {
            "id": self.spec.id,
            "name": self.spec.name,
            "params": self.params,
            "baseline": self.spec.baseline,
            "runs": [r.to_json() for r in (*self.taskbuffer, *self.baseline)],
        }


def run_child(
    spec: Spec,
    side: str,
    params: Params,
    rep: int = 0,
    *,
    warmup: bool = True,
    profile: int = 0,
    alloc_top: int = 0,
    timeout: float = CHILD_TIMEOUT,
) -> ProcessRun:
    """Measure one side of one workload in a fresh ``python -m benchmarks.child`` process."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.child",
        spec.id,
        side,
        "--params",
        json.dumps(params),
    ]
    if not warmup:
        command.append("--no-warmup")
    if profile:
        command += ["--profile", str(profile)]
    if alloc_top:
        command += ["--alloc-top", str(alloc_top)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProcessRun(side, rep, "error", note=f"timed out after {timeout:.0f} s")
    lines = done.stdout.splitlines()
    results = [line for line in lines if line.startswith(RESULT_MARKER)]
    output = "\n".join(line for line in lines if not line.startswith(RESULT_MARKER))
    if not results:
        note = f"exit code {done.returncode}, no result; stderr:\n{done.stderr[-4000:]}"
        return ProcessRun(side, rep, "error", note=note, output=output)
    data = json.loads(results[-1][len(RESULT_MARKER) :])
    return ProcessRun(
        side=side,
        rep=rep,
        status=data["status"],
        metrics=data["metrics"],
        info=data["info"],
        checks=data["checks"],
        note=data["note"],
        process=data["process"],
        output=output,
    )


def run_workload(
    spec: Spec, mode: Mode, reps: int, progress: Callable[[str], None] | None = None
) -> WorkloadRun:
    """Run ``spec`` ``reps`` times, alternating its taskbuffer side with its baseline.

    A workload that turns out to be unavailable (S1 without cron) stops after the first try.
    """
    params = dict(spec.sizes[mode])
    run = WorkloadRun(spec, params)
    reps = min(reps, spec.max_reps or reps)
    for rep in range(reps):
        a = run_child(spec, "taskbuffer", params, rep)
        run.taskbuffer.append(a)
        if a.status == "unavailable":
            if progress is not None:
                progress(f"{spec.id} {spec.name}: not available ({a.note})")
            break
        b = run_child(spec, "baseline", params, rep) if spec.baseline is not None else None
        if b is not None:
            run.baseline.append(b)
        if progress is not None:
            line = f"{spec.id} {spec.name} rep {rep + 1}/{reps}: A {_brief(a)}"
            if b is not None:
                line += f" | B {_brief(b)}"
            progress(line)
    return run


def _brief(run: ProcessRun) -> str:
    if run.status != "ok":
        return run.status.upper()
    figures = ", ".join(f"{k}={v:.4g}" for k, v in run.metrics.items())
    return figures + ("" if run.ok else "  CHECK FAILED")
