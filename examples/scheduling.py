"""Scheduling: a cron job every second, a one-off run, and two managers sharing the ticks.

Two managers (standing in for two processes) schedule the same heartbeat; a shared
coordinator makes each tick run on exactly one of them. Run it with
``python examples/scheduling.py``; it exits on its own after three ticks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from taskbuffer import Task, TaskEvent, TaskManager
from taskbuffer.distributed import InMemoryDistributedCoordinator

TICKS = 3


async def main() -> None:
    # In production every process would use e.g. the Redis coordinator instead.
    coordinator = InMemoryDistributedCoordinator()
    ran_on: list[str] = []
    enough = asyncio.Event()

    def heartbeat_for(node: str) -> Task[None]:
        def beat() -> None:
            ran_on.append(node)
            if len(ran_on) == TICKS:
                enough.set()

        return Task(task_function=beat, name="heartbeat")

    def report(text: str) -> str:
        print(f"one-off run: {text}")
        return text

    def show_ticks(node: str) -> Callable[[TaskEvent], None]:
        def show(event: TaskEvent) -> None:
            if event.task.name == "heartbeat" and event.type == "started":
                late_ms = (event.timestamp % 1) * 1000  # its ticks are on whole seconds
                print(f"heartbeat tick ran on {node}, {late_ms:.1f} ms after its second")

        return show

    nodes = {
        name: TaskManager(distributed_coordinator=coordinator, timezone=UTC)
        for name in ("node-a", "node-b")
    }
    for name, manager in nodes.items():
        # Six fields, seconds first: every second.
        manager.add_and_schedule_task(heartbeat_for(name), "* * * * * *")
        manager.task_subject.subscribe(show_ticks(name))
    node_a = nodes["node-a"]
    node_a.add_task(Task(task_function=report, name="report"))
    node_a.schedule_task_at("report", datetime.now(UTC) + timedelta(seconds=1.5), input="hello")

    # Schedules are listed as soon as they are added, soonest first.
    for run in node_a.get_next_scheduled_runs():
        print(f"scheduled: {run['task_name']} ({run['schedule']})")

    async with nodes["node-a"], nodes["node-b"]:
        async with asyncio.timeout(10):
            await enough.wait()

    print(f"{TICKS} ticks -> {len(ran_on)} runs between {len(nodes)} managers")


if __name__ == "__main__":
    asyncio.run(main())
