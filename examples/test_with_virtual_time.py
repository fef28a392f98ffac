"""Testing code that uses taskbuffer on virtual time, with pytest-asyncio and looptime.

A test module, not a script: the README's "Testing your code" shows it, ``mypy --strict``
checks it with the other examples, and tests/test_docs.py runs it under pytest with the
pytest settings the README shows.
"""

import asyncio

import pytest

from taskbuffer import Task, TaskDebounced, TaskEvent, TaskTimeoutError


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


@pytest.mark.looptime
async def test_each_run_reports_its_own_events() -> None:
    async def download(url: str) -> int:
        fetch.notify_step("connect")
        await asyncio.sleep(len(url))  # virtual seconds: the longer URL finishes last
        fetch.notify_step("read")
        return len(url)

    steps = [{"name": "connect", "percentage": 20}, {"name": "read", "percentage": 80}]
    fetch = Task(task_function=download, name="fetch", steps=steps)
    events: list[TaskEvent] = []
    fetch.event_subject.subscribe(events.append)
    assert list(await asyncio.gather(fetch.trigger("a.io"), fetch.trigger("bb.io"))) == [4, 5]

    def history(url: str) -> list[tuple[str, int]]:
        """The (type, progress) of one run's events, picked out by its input."""
        return [(e.type, e.run.progress) for e in events if e.run and e.run.input == url]

    assert history("bb.io") == [("started", 0), ("step", 10), ("step", 60), ("completed", 100)]
    finished = [e.run for e in events if e.type == "completed" and e.run]
    assert [run.input for run in finished] == ["a.io", "bb.io"]
    assert finished[0].run_id != finished[1].run_id
