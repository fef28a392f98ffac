"""Taskchain and Taskparallel: sequences, fan-outs, and what their failures look like.

Run it with ``python examples/chain_and_parallel.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from taskbuffer import Task, Taskchain, TaskChainError, Taskparallel, TaskParallelError


async def fetch(url: str) -> str:
    await asyncio.sleep(0.01)
    return f"<html>{url}</html>"


def parse(html: str) -> int:
    if not html.startswith("<html>"):
        raise ValueError(f"not HTML: {html[:30]!r}")
    return len(html)


async def store(size: int) -> str:
    await asyncio.sleep(0.01)
    return f"stored {size} bytes"


fetch_task = Task(task_function=fetch, name="fetch")
parse_task = Task(task_function=parse, name="parse")
store_task = Task(task_function=store, name="store")

# A chain passes each task's result on as the next task's input.
etl = Taskchain(name="etl", task_array=[fetch_task, parse_task, store_task])


def resizer(width: int) -> Callable[[str], Awaitable[str]]:
    async def resize(image: str) -> str:
        await asyncio.sleep(0.05)  # the three sizes are made at the same time
        stem, _, ext = image.rpartition(".")
        return f"{stem}-{width}px.{ext}"

    return resize


# A parallel group triggers every task with the same input at once.
thumbnails = Taskparallel(
    name="thumbnails",
    task_array=[
        Task(task_function=resizer(64), name="small"),
        Task(task_function=resizer(256), name="medium"),
        Task(task_function=resizer(1024), name="large"),
    ],
)


def check_disk(path: str) -> str:
    raise OSError(f"disk full while writing {path}")


def check_quota(path: str) -> str:
    raise PermissionError(f"quota exceeded for {path}")


def check_name(path: str) -> str:
    return f"{path} is a valid name"


checks = Taskparallel(
    name="checks",
    task_array=[
        Task(task_function=check_disk, name="disk"),
        Task(task_function=check_quota, name="quota"),
        Task(task_function=check_name, name="name"),
    ],
)


async def main() -> None:
    print("chain:", await etl.trigger("https://example.org"))

    # A failing task stops the chain; TaskChainError says where, __cause__ says why.
    local_file = Task(task_function=lambda path: f"contents of {path}", name="read-file")
    broken = Taskchain(name="local-etl", task_array=[local_file, parse_task, store_task])
    try:
        await broken.trigger("notes.txt")
    except TaskChainError as error:
        print(f"TaskChainError: {error}")
        print(f"  chain_name={error.chain_name!r} task_name={error.task_name!r}")
        print(f"  task_index={error.task_index} cause={error.__cause__!r}")

    loop = asyncio.get_running_loop()
    started = loop.time()
    sizes = await thumbnails.trigger("photo.jpg")
    print(f"parallel: {sizes} in {loop.time() - started:.2f}s (not 0.15s)")

    # Every task runs to its end; then all failures arrive together.
    try:
        await checks.trigger("/var/data/report.csv")
    except TaskParallelError as group:
        print(f"TaskParallelError: {group}")
        for failure in group.exceptions:
            print(f"  {type(failure).__name__}: {failure}")

    # TaskParallelError is an ExceptionGroup, so except* can pick out one kind of failure.
    try:
        await checks.trigger("/tmp/out.csv")
    except* PermissionError as quota_errors:
        print(f"quota problems only: {[str(e) for e in quota_errors.exceptions]}")
    except* OSError:
        print("other OS errors handled separately")


if __name__ == "__main__":
    asyncio.run(main())
