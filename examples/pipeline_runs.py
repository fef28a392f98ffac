"""Runs: a webhook pipeline, three at a time, whose event log tells each run apart.

Five webhooks arrive at once; a constraint group lets three run concurrently. Every event
carries its run (``event.run``): its id, its input and its own progress, so the log reads
per webhook even though the runs interleave. ``current_run()`` gives the same run to any code
the pipeline calls, here a helper that tags what it stores.
"""

from __future__ import annotations

import asyncio

from taskbuffer import (
    RunInfo,
    Task,
    TaskConstraintGroup,
    TaskEvent,
    TaskManager,
    current_run,
)

STEPS = [
    {"name": "parse", "percentage": 20},
    {"name": "enrich", "percentage": 50},
    {"name": "store", "percentage": 30},
]
SIZES = {"webhook-1": 3, "webhook-2": 1, "webhook-3": 2, "webhook-4": 1, "webhook-5": 2}


def storage_tag() -> str:
    """Code the pipeline calls: it finds the run it belongs to without being passed it."""
    run = current_run()
    assert run is not None
    return f"{run.input}@{run.run_id[:8]}"


async def handle(webhook: str) -> str:
    pipeline.notify_step("parse")
    await asyncio.sleep(0.01)
    pipeline.notify_step("enrich")
    await asyncio.sleep(0.02 * SIZES[webhook])  # bigger payloads take longer
    pipeline.notify_step("store")
    return storage_tag()


pipeline = Task(task_function=handle, name="pipeline", steps=STEPS)


def label(run: RunInfo) -> str:
    return f"[{run.run_id[:8]}] {run.input:<9}"


def log(event: TaskEvent) -> None:
    run = event.run
    if run is None:
        return
    if event.type == "queued":
        group, key = run.blocked_by or ("?", "?")
        print(f"{label(run)} queued, blocked by group {group!r} key {key!r}")
    elif event.type == "step":
        print(f"{label(run)} {event.step_name:<6} {run.progress:>3}%")
    else:
        print(f"{label(run)} {event.type:<9} {run.progress:>3}%")


async def main() -> None:
    manager = TaskManager()
    manager.add_task(pipeline)
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="cap", max_concurrent=3, constraint_key_for_execution=lambda _task, _input: "all"
        )
    )
    manager.task_subject.subscribe(log)
    async with manager:
        runs = [manager.spawn(pipeline, webhook) for webhook in SIZES]
        await asyncio.sleep(0.005)
        active = manager.get_active_runs()
        print("active:", ", ".join(f"{r.input} {r.state} {r.progress}%" for r in active))
        stored = await asyncio.gather(*runs)
    run_ids = {tag.split("@")[1] for tag in stored if tag is not None}
    print(f"stored: {len(stored)} webhooks by {len(run_ids)} distinct runs")


if __name__ == "__main__":
    asyncio.run(main())
