"""Helpers for the TaskManager / TaskConstraintGroup tests (not a test module).

``Gates`` gives a task function whose runs block until the test finishes or fails them, so a
test decides exactly when each run ends. ``settle()`` runs the loop until nothing more is ready
at the current instant, without moving (virtual) time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from taskbuffer import ConstraintGroupStatistics, TaskConstraintGroup, TaskEvent

__all__ = ("Gates", "event_types", "idle", "settle")


async def settle() -> None:
    """Run every callback that is ready or becomes ready at the current loop instant.

    It returns once the loop's ready queue is empty when this coroutine resumes, so
    everything the test set in motion has run as far as it can without time passing.
    Virtual time does not move.
    """
    loop = asyncio.get_running_loop()
    ready = loop._ready  # type: ignore[attr-defined]
    for _ in range(10_000):
        await asyncio.sleep(0)
        if not ready:
            return
    raise AssertionError("the event loop never settled")


class Gates:
    """A task function (``gates.function``) whose run for input ``x`` waits for the test.

    Inputs must be hashable and unique per run within a test. ``finish(x)`` makes the run of
    ``x`` return ``x`` (or ``value``), ``fail(x, error)`` makes it raise.
    """

    def __init__(self) -> None:
        self.futures: dict[Hashable, asyncio.Future[Any]] = {}
        self.started: list[Hashable] = []
        self.start_times: dict[Hashable, float] = {}
        self.running: set[Hashable] = set()
        self.max_running = 0
        self.cancelled: list[Hashable] = []
        self._started_events: dict[Hashable, asyncio.Event] = {}

    async def function(self, x: Hashable) -> Any:
        loop = asyncio.get_running_loop()
        future = self.futures[x] = loop.create_future()
        self.started.append(x)
        self.start_times[x] = loop.time()
        self.running.add(x)
        self.max_running = max(self.max_running, len(self.running))
        self._event(x).set()
        try:
            return await future
        except asyncio.CancelledError:
            self.cancelled.append(x)
            raise
        finally:
            self.running.discard(x)

    def _event(self, x: Hashable) -> asyncio.Event:
        event = self._started_events.get(x)
        if event is None:
            event = self._started_events[x] = asyncio.Event()
        return event

    async def wait_started(self, x: Hashable) -> None:
        async with asyncio.timeout(60):
            await self._event(x).wait()

    def finish(self, x: Hashable, value: Any = None) -> None:
        self.futures[x].set_result(x if value is None else value)

    def fail(self, x: Hashable, error: BaseException) -> None:
        self.futures[x].set_exception(error)


def event_types(events: list[TaskEvent]) -> list[str]:
    return [event.type for event in events]


def idle(group: TaskConstraintGroup) -> ConstraintGroupStatistics:
    """The statistics a group must show when it holds no state at all."""
    return ConstraintGroupStatistics(name=group.name, tracked_keys=0, running=0, waiting=0)
