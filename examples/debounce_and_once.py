"""TaskDebounced and TaskOnce: coalescing a burst of triggers, and sharing one run.

Run it with ``python examples/debounce_and_once.py``.
"""

from __future__ import annotations

import asyncio
import itertools

from taskbuffer import TaskDebounced, TaskOnce

saved: list[str] = []


async def save_draft(text: str) -> int:
    await asyncio.sleep(0.01)
    saved.append(text)
    return len(saved)


# Keystrokes less than 100 ms apart coalesce into one save, with the latest text.
autosave = TaskDebounced(task_function=save_draft, name="autosave", debounce_time=0.1)


async def load_config() -> dict[str, str]:
    print("  loading config (expensive, happens once)")
    await asyncio.sleep(0.05)
    return {"region": "eu-west", "tier": "gold"}


config = TaskOnce(task_function=load_config, name="config")

attempts = itertools.count(1)


async def connect() -> str:
    attempt = next(attempts)
    await asyncio.sleep(0.01)
    if attempt == 1:
        raise ConnectionError("database not ready yet")
    return f"connected on attempt {attempt}"


connection = TaskOnce(task_function=connect, name="connection")


async def main() -> None:
    # A burst of ten keystrokes, 10 ms apart: one save after the burst goes quiet.
    word = "taskbuffer"
    keystrokes: list[asyncio.Task[int]] = []
    for i in range(1, len(word) + 1):
        keystrokes.append(asyncio.create_task(autosave.trigger(word[:i])))
        await asyncio.sleep(0.01)
    results = await asyncio.gather(*keystrokes)
    print(f"debounced: {len(keystrokes)} triggers -> {autosave.run_count} run, saved {saved!r}")
    print(f"  every trigger got the same result: {set(results)}")

    # Concurrent triggers share the first run; later triggers get the cached result.
    first = await asyncio.gather(config.trigger(), config.trigger(), config.trigger())
    again = await config.trigger()
    print(f"once: 4 triggers -> {config.run_count} run, cached result {again}")
    assert all(result is again for result in first)

    # A failed run is not cached: its waiters get the error, the next trigger tries again.
    try:
        await connection.trigger()
    except ConnectionError as error:
        print(f"once, first try failed: {error} (has_triggered={connection.has_triggered})")
    print(f"once, next try: {await connection.trigger()}")
    print(f"once, cached: {await connection.trigger()} (runs: {connection.run_count})")


if __name__ == "__main__":
    asyncio.run(main())
