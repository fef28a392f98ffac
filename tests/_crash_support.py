"""Worker processes for the crash tests and the command-line tests (not a test module).

:class:`Workers` starts ``python -m taskbuffer worker _crash_app:...`` processes (see
``_crash_app.py``) on one store, kills, stops and restarts them, and reads what their task
functions recorded. Everything here runs on the real clock: these are real OS processes.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

__all__ = ("ROOT", "TESTS", "Workers", "wait_until")

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


async def wait_until(
    condition: Callable[[], object], *, within: float, what: str, every: float = 0.05
) -> None:
    """Poll ``condition`` (a state of other processes: nothing here can signal us; it may be
    a coroutine function) until it holds; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        holds = condition()
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(every)


class Workers:
    """Worker processes of one store; each started worker gets a fresh worker id."""

    def __init__(
        self,
        directory: Path,
        store_url: str,
        *,
        lease: float,
        target: str = "_crash_app:build",
        concurrency: int = 8,
    ) -> None:
        self.directory = directory
        self.runs_dir = directory / "runs"
        self.runs_dir.mkdir(exist_ok=True)
        self.store_url = store_url
        self.lease = lease
        self.target = target
        self.concurrency = concurrency
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, worker_id: str, *extra: str) -> subprocess.Popen[bytes]:
        """Start ``taskbuffer worker`` as ``worker_id`` (``extra``: more arguments)."""
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")]),
            CRASH_STORE=self.store_url,
            CRASH_LEASE=str(self.lease),
            CRASH_WORKER=worker_id,
            CRASH_RUNS=str(self.runs_dir),
        )
        log_path = self.logs[worker_id] = self.directory / f"{worker_id}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskbuffer",
                    "worker",
                    self.target,
                    "--concurrency",
                    str(self.concurrency),
                    *extra,
                ],
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[worker_id] = process
        return process

    def log(self, worker_id: str) -> str:
        """What the worker printed (its log)."""
        return self.logs[worker_id].read_text(errors="replace")

    def started(self, worker_id: str) -> bool:
        """Whether the worker logged that it started."""
        return "started; working jobs" in self.log(worker_id)

    def kill(self, worker_id: str) -> float:
        """``kill -9`` the worker; returns the instant (epoch seconds)."""
        process = self.processes[worker_id]
        process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        process.wait(timeout=10)
        return killed_at

    def signal(self, worker_id: str, signum: int) -> None:
        self.processes[worker_id].send_signal(signum)

    async def stop_all(self, *, timeout: float = 30.0) -> dict[str, int]:  # noqa: ASYNC109
        """SIGTERM every live worker once it has started (its signal handlers are in
        place) and wait: their exit codes."""
        live = {wid: p for wid, p in self.processes.items() if p.poll() is None}
        for wid in live:
            await wait_until(lambda w=wid: self.started(w), within=timeout, what=f"{wid} to start")
        for process in live.values():
            process.send_signal(signal.SIGTERM)
        return {wid: process.wait(timeout=timeout) for wid, process in live.items()}

    def close(self) -> None:
        """Kill whatever still runs (a failed test)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    def run_lines(self) -> list[str]:
        """Every line the task functions recorded, all processes together."""
        lines: list[str] = []
        for path in self.runs_dir.glob("*.runs"):
            lines += path.read_text().splitlines()
        return lines

    def run_counts(self) -> Counter[int]:
        """How many times each job index's function started."""
        return Counter(int(line) for line in self.run_lines())
