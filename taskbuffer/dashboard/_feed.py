"""The live feed of one event-stream client: what changed since its last frame, bounded.

Each client subscribes to the manager's ``task_subject`` (and the services' subject) while its
stream is open. An event only records what it changed, coalesced: the latest snapshot of its
task, the latest state of its run, and a short tail of the events themselves. A frame, at most
every :data:`FRAME_INTERVAL` seconds, sends that and empties it. A client that stops reading
holds at most :data:`MAX_PENDING` task and run entries and :data:`EVENTS_PER_FRAME` events:
past that the entries are dropped and its next frame is a full snapshot instead (it is skipped
ahead to the latest state). Closing the stream disposes the subscriptions.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from ._state import event_entry, run_entry, task_entry

if TYPE_CHECKING:
    from reactivex.abc import DisposableBase

    from .._events import TaskEvent
    from .._metadata import TaskMetadata
    from .._run import RunInfo
    from .._service import ServiceEvent
    from ._state import DashboardState

__all__ = ("EVENTS_PER_FRAME", "FRAME_INTERVAL", "MAX_PENDING", "ClientFeed")

FRAME_INTERVAL = 0.1  # seconds between two frames of one client (at most ~10 a second)
EVENTS_PER_FRAME = 50  # the newest events a frame carries; older ones are counted as skipped
MAX_PENDING = 256  # task and run entries a client may hold before it is sent a full snapshot


class ClientFeed:
    """What one client has not been sent yet."""

    __slots__ = (
        "_subscriptions",
        "closed",
        "events",
        "resync",
        "runs",
        "services_changed",
        "skipped",
        "tasks",
        "wake",
    )

    def __init__(self) -> None:
        self.tasks: dict[str, TaskMetadata] = {}
        self.runs: dict[str, RunInfo] = {}
        self.events: deque[TaskEvent] = deque(maxlen=EVENTS_PER_FRAME)
        self.skipped = 0  # events not shown in the feed since the last frame
        self.resync = True  # the first frame is a full snapshot
        self.services_changed = False
        self.closed = False
        self.wake = asyncio.Event()
        self._subscriptions: list[DisposableBase] = []

    def __repr__(self) -> str:
        return (
            f"<ClientFeed tasks={len(self.tasks)} runs={len(self.runs)} "
            f"events={len(self.events)} resync={self.resync}>"
        )

    def open(self, state: DashboardState) -> None:
        """Subscribe to the manager's (and the services') events."""
        self._subscriptions.append(state.manager.task_subject.subscribe(self.on_event))
        if state.services is not None:
            self._subscriptions.append(state.services.service_subject.subscribe(self.on_service))

    def close(self) -> None:
        """Dispose the subscriptions and wake the stream so that it ends."""
        self.closed = True
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.dispose()
        self.clear()
        self.wake.set()

    def on_event(self, event: TaskEvent) -> None:
        if not self.resync:
            metadata = event.task
            self.tasks[metadata.name] = metadata
            run = event.run
            if run is not None:
                self.runs[run.run_id] = run
            if len(self.tasks) + len(self.runs) > MAX_PENDING:
                self.skip_ahead()
        if len(self.events) == EVENTS_PER_FRAME:
            self.skipped += 1
        self.events.append(event)
        self.wake.set()

    def on_service(self, _event: ServiceEvent) -> None:
        self.services_changed = True
        self.wake.set()

    def skip_ahead(self) -> None:
        """Drop what is pending: the next frame is a full snapshot."""
        self.resync = True
        self.tasks.clear()
        self.runs.clear()

    def clear(self) -> None:
        self.tasks.clear()
        self.runs.clear()
        self.events.clear()
        self.skipped = 0
        self.services_changed = False

    def take_update(self, state: DashboardState) -> dict[str, Any]:
        """The changes since the last frame, as JSON-ready values; empties the feed."""
        update: dict[str, Any] = {
            "statistics": state.statistics(),
            "tasks": [task_entry(metadata) for metadata in self.tasks.values()],
            "runs": [run_entry(run) for run in self.runs.values()],
            "groups": state.groups(),
            "schedules": state.schedules(),
            "events": [event_entry(event) for event in self.events],
            "skipped": self.skipped,
        }
        if self.services_changed:
            update["services"] = state.service_list()
        self.clear()
        return update

    async def take_snapshot(
        self, state: DashboardState, *, actions: bool, title: str
    ) -> dict[str, Any]:
        """A full snapshot; the feed starts again from it."""
        self.resync = False
        self.clear()
        return await state.snapshot(actions=actions, title=title)
