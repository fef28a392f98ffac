"""Testing code that uses taskbuffer on virtual time, with pytest-asyncio and looptime.

A test module, not a script: the README's "Testing your code" shows it, ``mypy --strict``
checks it with the other examples, and tests/test_docs.py runs it under pytest with the
pytest settings the README shows.
"""

import asyncio

import pytest

from taskbuffer import Task, TaskDebounced, TaskTimeoutError


@pytest.mark.looptime
async def test_retries_back_off() -> None:
    loop = asyncio.get_running_loop()
    attempts: list[float] = []

    def flaky() -> str:
        attempts.append(loop.time())
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    fetch = Task(task_function=flaky, retries=2, retry_delay=10.0, retry_backoff=3.0)
    assert await fetch.trigger() == "ok"
    assert [t - attempts[0] for t in attempts] == [0.0, 10.0, 40.0]  # 40 s, instantly


@pytest.mark.looptime
async def test_debounce_coalesces_a_burst() -> None:
    save = TaskDebounced(task_function=lambda text: text.upper(), debounce_time=5.0)
    results = await asyncio.gather(save.trigger("a"), save.trigger("ab"))
    assert list(results) == ["AB", "AB"]
    assert save.run_count == 1


@pytest.mark.looptime
async def test_timeout() -> None:
    slow = Task(task_function=lambda: asyncio.sleep(3600), name="slow", timeout=60.0)
    with pytest.raises(TaskTimeoutError, match="timed out after 60 s"):
        await slow.trigger()
