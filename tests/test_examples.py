"""The examples run on their own, and the README shows them as they are.

Every ``examples/*.py`` runs in a real subprocess on the real clock (this module does not use
virtual time). They all start at once, so the module takes about as long as the slowest one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realtime, pytest.mark.looptime(False)]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_TIMEOUT = 30.0  # seconds, per example; each one finishes in well under one

# What each example must print; an example not listed here only has to exit 0 quietly.
EXPECTED_OUTPUT: dict[str, list[str]] = {
    "quickstart.py": [
        "event: greet started (status=running)",
        "event: greet completed (status=completed)",
        "hello, world",
        "HELLO, WORLD",
        "greet ran 1 time(s); status: completed",
    ],
    "steps_progress.py": [
        "step -> download (25%)",
        "step -> verify (60%)",
        "step -> install (85%)",
        "completed (100%)",
        "progress after the run: 100%",
        "ValueError: unknown step 'reboot'; declared steps: 'download', 'verify', 'install'",
    ],
    "pipeline_runs.py": [
        "webhook-4 queued, blocked by group 'cap' key 'all'",
        "active: webhook-1 running 10%, webhook-2 running 10%, webhook-3 running 10%, "
        "webhook-4 waiting 0%, webhook-5 waiting 0%",
        "webhook-2 store   85%",
        "webhook-5 completed 100%",
        "stored: 5 webhooks by 5 distinct runs",
    ],
    "chain_and_parallel.py": [
        "chain: stored 32 bytes",
        "TaskChainError: chain 'local-etl' failed at task 'parse' (index 1)",
        "chain_name='local-etl' task_name='parse'",
        "task_index=1 cause=ValueError(",
        "parallel: ['photo-64px.jpg', 'photo-256px.jpg', 'photo-1024px.jpg']",
        "TaskParallelError: 2 of 3 tasks of parallel 'checks' failed",
        "PermissionError: quota exceeded for /var/data/report.csv",
        "quota problems only: ['quota exceeded for /tmp/out.csv']",
    ],
    "debounce_and_once.py": [
        "debounced: 10 triggers -> 1 run, saved ['taskbuffer']",
        "once: 4 triggers -> 1 run",
        "once, first try failed: database not ready yet (has_triggered=True)",
        "once, next try: connected on attempt 2",
        "once, cached: connected on attempt 2 (runs: 2)",
    ],
    "constraints.py": [
        "mutex+cap: 7 syncs, at most 1 per account and 3 overall",
        "rate limit: 8 calls, 4 in the first 0.2 s window",
        "cooldown: consecutive calls of one account >= 50 ms apart: True",
        "share-latest: 5 triggers, 1 refreshes, tokens: ['token-for-acme-1']",
        "should_execute: disabled account -> None; events seen: ['queued', 'skipped']",
        "spawn: 2 syncs, 2 audit entries written when stop() returned",
    ],
    "multi_tenant.py": [
        "acme has 3 tasks: ['acme-billing', 'acme-sales', 'acme-usage']",
        "12 reports; peak runs per tenant: {'acme': 2, 'globex': 2}",
        "acme stream: 6 completed events, all its own: True",
        "globex stream: 6 completed events, all its own: True",
        "acme-billing: runs=2 status=completed",
        "TaskManagerStatistics(tasks=6, running=0, waiting=0, scheduled=0)",
    ],
    "scheduling.py": [
        "scheduled: heartbeat (* * * * * *)",
        "scheduled: report (once)",
        "one-off run: hello",
        "3 ticks -> 3 runs between 2 managers",
    ],
    "showcase.py": [
        "fetch     retrying  feed dropped the connection (call 1)",
        "sentiment failed    task 'sentiment' timed out after 0.08 s",
        "store     step      index (90%)",
        "ingest    completed (100%)",
        "6 triggers -> 2 runs",
        "trigger batch-1 got: batch-1: stored 3 records",
        "trigger batch-6 got: batch-6: stored 3 records",
        "database: 6 rows, connected 1 time(s)",
        "best-effort tasks: ['sentiment']",
    ],
    "services.py": [
        "ingest: 3 messages via pool #1",
        "  database  unhealthy  service 'database' failed 2 health checks in a row; the last "
        "returned False",
        "  database  restarting service 'database' failed 2 health checks in a row",
        "  consumer  stopped\n  database  running\n  consumer  starting\n  consumer  running\n"
        "ingest: 3 messages via pool #2",
        "database restarts: 1; ServiceManagerStatistics(services=2, stopped=0, starting=0, "
        "running=2, unhealthy=0, restarting=0, stopping=0, failed=0)",
        "  consumer  stopped\n  database  stopping\n  database  stopped\n",
        "after stop: service 'consumer' is not available: the ServiceManager is stopped",
    ],
    "dashboard.py": [
        "dashboard on http://127.0.0.1:",
        "/ (Ctrl-C to stop)",
        " syncs finished: ",
        " jobs stored: ",
    ],
    "durable.py": [
        "worked 3 jobs: ['report-0.pdf', 'report-1.pdf', 'report-2.pdf']",
        "enqueued render('quarterly'): queued",
        "doomed-worker: rendering quarterly ...",
        "killed the worker; the job is still running until its lease runs out",
        "recovered: quarterly.pdf",
        "  attempt 1: doomed-worker -> lost\n  attempt 2: main-worker -> succeeded",
    ],
}

# Arguments for the examples that run until stopped.
EXAMPLE_ARGS: dict[str, list[str]] = {
    "dashboard.py": ["--seconds", "2", "--port", "0"],
}


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def example_names() -> list[str]:
    # examples/test_*.py are test modules (tests/test_docs.py runs them under pytest).
    return sorted(path.name for path in EXAMPLES.glob("*.py") if not path.name.startswith("test_"))


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    """Start every example at once, then collect each one's exit code and output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONIOENCODING"] = "utf-8"
    processes = {
        name: subprocess.Popen(
            # -W error: a warning in an example fails it, as it would fail the test suite.
            [sys.executable, "-W", "error", str(EXAMPLES / name), *EXAMPLE_ARGS.get(name, [])],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        for name in example_names()
    }
    results: dict[str, Outcome] = {}
    try:
        for name, process in processes.items():
            try:
                stdout, stderr = process.communicate(timeout=EXAMPLE_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                stderr += f"\n[test_examples: killed after {EXAMPLE_TIMEOUT:g} s]"
            results[name] = Outcome(process.returncode, stdout, stderr)
        yield results
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_there_are_examples() -> None:
    assert set(EXPECTED_OUTPUT) <= set(example_names()), "an expected example is missing"


@pytest.mark.parametrize("name", example_names())
def test_example_runs(name: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[name]
    report = f"--- stdout ---\n{outcome.stdout}\n--- stderr ---\n{outcome.stderr}"
    assert outcome.returncode == 0, f"{name} exited with {outcome.returncode}\n{report}"
    # Nothing on stderr: no warnings, no "exception was never retrieved", no logged errors.
    assert outcome.stderr == "", f"{name} wrote to stderr\n{report}"
    assert outcome.stdout.strip(), f"{name} printed nothing"
    for expected in EXPECTED_OUTPUT.get(name, []):
        assert expected in outcome.stdout, f"{name} did not print {expected!r}\n{report}"


# A README code block preceded by ``<!-- example: examples/NAME.py -->`` must be an excerpt
# of that file: one or more verbatim chunks, in file order, separated by lines "# ...".
_MARKED_BLOCK = re.compile(
    r"<!-- example: (?P<path>[\w./-]+) -->\s*\n```python\n(?P<code>.*?)\n```", re.DOTALL
)


def _readme_excerpts() -> list[tuple[str, str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(m["path"], m["code"]) for m in _MARKED_BLOCK.finditer(readme)]


def test_readme_shows_every_example() -> None:
    shown = {path for path, _ in _readme_excerpts()}
    assert {f"examples/{name}" for name in EXPECTED_OUTPUT} <= shown


@pytest.mark.parametrize(("path", "code"), _readme_excerpts())
def test_readme_snippet_matches_example(path: str, code: str) -> None:
    source = (ROOT / path).read_text(encoding="utf-8")
    position = 0
    for chunk in re.split(r"^# \.\.\.\n", code + "\n", flags=re.MULTILINE):
        if not chunk.strip():
            continue
        found = source.find(chunk, position)
        assert found >= 0, f"README snippet for {path} is not in the file:\n{chunk}"
        position = found + len(chunk)
