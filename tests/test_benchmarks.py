"""The benchmarks still run: a smoke-size run of two workloads, and the script entry point.

CI runs only this; the full benchmarks (``python -m benchmarks``) take minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("id", "name", "taskbuffer", "baseline", "ratio", "target", "verdict", "correct")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_smoke_run_prints_the_table_and_passes(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = _run("-m", "benchmarks", "--smoke", "--only", "W1,C2", "--json", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("id "))
    assert header.split()[: len(HEADER)] == list(HEADER)
    assert "FAIL!" not in done.stdout and "ERROR!" not in done.stdout
    data = json.loads(results.read_text(encoding="utf-8"))
    assert data["correct"] is True
    assert [row["id"] for row in data["rows"]] == ["W1", "C2"]
    assert all(row["correct"] == "ok" for row in data["rows"])
    assert data["meta"]["mode"] == "smoke"


def test_d1_dashboard_load_runs_at_smoke_size(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = _run("-m", "benchmarks", "--smoke", "--only", "D1", "--json", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads(results.read_text(encoding="utf-8"))["rows"]
    assert (row["id"], row["correct"]) == ("D1", "ok")


def test_script_entry_point_and_bad_ids() -> None:
    done = _run("benchmarks/run.py", "--help")
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--only" in done.stdout
    bad = _run("benchmarks/run.py", "--only", "W1,Z9")
    assert bad.returncode == 2
    assert "unknown workload 'Z9'" in bad.stderr
