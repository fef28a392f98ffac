"""The application that the crash tests' worker processes run (not a test module).

Run as ``python -m taskbuffer worker _crash_app:build`` (or ``_crash_app:build_cron``) with
this directory on ``PYTHONPATH`` and its settings in the environment:

- ``CRASH_STORE``: the store URL; ``CRASH_LEASE``: its lease in seconds (default 2);
- ``CRASH_WORKER``: the worker id (the attempts' audit trail names it);
- ``CRASH_RUNS``: a directory where every run of a task function appends one line to the
  process's own file when it *starts* (``O_APPEND`` writes of one line: whole even when the
  process is killed), so the test counts how often each job's function ran.

``work`` runs ``{"i": index, "ms": milliseconds}`` (records ``index``, sleeps, returns the
index); ``tick`` is an every-second cron task that records the wall-clock instant it started.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from taskbuffer import Task, TaskManager
from taskbuffer.jobs import job_store_from_url

__all__ = ("build", "build_cron", "build_without_store")


class _Runs:
    """The append-only file of this process's runs."""

    def __init__(self) -> None:
        worker = os.environ["CRASH_WORKER"]
        path = Path(os.environ["CRASH_RUNS"]) / f"{worker}.{os.getpid()}.runs"
        self.worker = worker
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, text: str) -> None:
        os.write(self.fd, f"{text}\n".encode())


def _manager(concurrency: int = 8) -> TaskManager:
    store = job_store_from_url(
        os.environ["CRASH_STORE"], lease=float(os.environ.get("CRASH_LEASE", "2"))
    )
    return TaskManager(
        job_store=store, job_concurrency=concurrency, worker_id=os.environ["CRASH_WORKER"]
    )


def build() -> TaskManager:
    """A manager with the ``work`` task."""
    return _with_work(_manager())


def build_without_store() -> TaskManager:
    """A manager with the ``work`` task and no store (the command line's ``--store`` gives one)."""
    return _with_work(TaskManager(worker_id=os.environ["CRASH_WORKER"]))


def _with_work(manager: TaskManager) -> TaskManager:
    runs = _Runs()

    async def work(item: dict[str, Any]) -> int:
        runs.record(str(item["i"]))
        await asyncio.sleep(item["ms"] / 1000)
        index: int = item["i"]
        return index

    manager.add_task(Task(task_function=work, name="work"))
    return manager


def build_cron() -> TaskManager:
    """A manager with the every-second ``tick`` task scheduled."""
    runs = _Runs()

    async def tick() -> None:
        runs.record(f"{runs.worker} {time.time():.6f}")
        await asyncio.sleep(0.01)

    manager = _manager()
    manager.add_and_schedule_task(Task(task_function=tick, name="tick"), "* * * * * *")
    return manager
