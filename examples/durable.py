"""Durable jobs on SQLite: enqueue, work, and survive a worker killed in the middle of a job.

Jobs are written to a SQLite file before they run, so they outlive the process that asked for
them and the process running them. Here a worker process is ``kill -9``ed while it runs a
job; the job's lease (1 s here) runs out, another worker claims it again, and the audit
trail shows both attempts. No server is needed. Run it with ``python examples/durable.py``;
it exits on its own after a few seconds.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from taskbuffer import Task, TaskManager
from taskbuffer.jobs import SQLiteJobStore

LEASE = 1.0  # seconds a claim holds a job without renewal (the default is 30)


def build(path: Path, *, worker_id: str, hang: bool = False) -> TaskManager:
    """A manager on the job file at ``path`` with the ``render`` task; ``hang``: every run
    hangs (the process that will be killed)."""

    async def render(report: str) -> str:
        if hang:
            print(f"{worker_id}: rendering {report} ...", flush=True)
            await asyncio.sleep(3600)
        await asyncio.sleep(0.05)  # stands in for real work
        return f"{report}.pdf"

    manager = TaskManager(
        job_store=SQLiteJobStore(path, lease=LEASE), job_concurrency=4, worker_id=worker_id
    )
    manager.add_task(Task(task_function=render, name="render"))
    return manager


async def child(path: Path) -> None:
    """The worker that gets killed: it claims the job and hangs in it."""
    async with build(path, worker_id="doomed-worker", hang=True):
        await asyncio.sleep(3600)


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "jobs.db"
        manager = build(path, worker_id="main-worker")

        # 1. Enqueue and work: a job is committed before enqueue() returns.
        async with manager:
            jobs = [await manager.enqueue("render", f"report-{n}") for n in range(3)]
            results = [await manager.job_result(job.id, timeout=10) for job in jobs]
        print(f"worked {len(results)} jobs: {results}")

        # 2. Enqueued while no worker runs: it waits in the file.
        job = await manager.enqueue("render", "quarterly")
        print(f"enqueued {job.task_name}({job.input!r}): {job.status}")

        # 3. Another process claims it and dies in the middle of it (kill -9).
        worker = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", str(path), stdout=asyncio.subprocess.PIPE
        )
        assert worker.stdout is not None
        async with asyncio.timeout(30):
            print((await worker.stdout.readline()).decode(), end="")
        worker.kill()
        await worker.wait()
        job_now = await manager.get_job(job.id)
        assert job_now is not None
        print(f"killed the worker; the job is still {job_now.status} until its lease runs out")

        # 4. A worker that starts claims it again once the lease has run out, and finishes it.
        async with manager:
            result = await manager.job_result(job.id, timeout=30)
        print(f"recovered: {result}")
        for attempt in await manager.get_job_attempts(job.id):
            print(f"  attempt {attempt.attempt}: {attempt.worker_id} -> {attempt.outcome}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(child(Path(sys.argv[2])))
    else:
        asyncio.run(main())
