"""J2's worker process: ``python -m benchmarks.workloads.jobs_worker URL``.

A manager on the store at URL with one task, ``stamp``, whose result is the wall-clock instant
its run started. It prints ``ready`` once started and works jobs until its stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import time

from taskbuffer import Task, TaskManager

__all__ = ("main", "stamp")


async def stamp(_input: object) -> float:
    """The instant this run started (``time.time()``), as the job's result."""
    return time.time()


async def main(url: str) -> None:
    """Work ``stamp`` jobs of the store at ``url`` until stdin closes."""
    manager = TaskManager(job_store=url)
    manager.add_task(Task(task_function=stamp, name="stamp"))
    await manager.start()
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
    finally:
        await manager.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
