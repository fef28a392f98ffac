"""Quickstart: build a task, subscribe to its events, trigger it.

Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio

from taskbuffer import Task, TaskEvent, task


@task(name="greet")
async def greet(name: str) -> str:
    await asyncio.sleep(0.01)  # stands in for real async work
    return f"hello, {name}"


def shout(text: str) -> str:  # plain functions work too
    return text.upper()


loud = Task(task_function=shout, name="shout", labels={"kind": "demo"})


def log_event(event: TaskEvent) -> None:
    print(f"event: {event.task.name} {event.type} (status={event.task.status})")


async def main() -> None:
    greet.event_subject.subscribe(log_event)
    loud.event_subject.subscribe(log_event)

    greeting = await greet.trigger("world")  # typed: str
    print(greeting)
    print(await loud.trigger(greeting))

    print(f"greet ran {greet.run_count} time(s); status: {greet.get_metadata().status}")


if __name__ == "__main__":
    asyncio.run(main())
