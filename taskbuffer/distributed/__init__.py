"""Coordination of cron ticks across processes.

Before each cron tick a :class:`~taskbuffer.TaskManager` with a coordinator offers the tick to
it: a :class:`DistributedTaskRequest` whose ``task_execution_time`` is the tick's scheduled
instant, the same on every manager with the same schedule. The tick runs only where
``should_trigger`` comes back true, and the outcome (``succeeded`` or ``failed``) is reported
with ``update_distributed_task_request``. A coordinator that raises, or does not answer within
``COORDINATOR_TIMEOUT`` seconds, makes the tick not run on that manager (a ``skipped`` event
says why). Cron ticks only: one-off runs (``schedule_task_at``) are not offered.

:class:`InMemoryDistributedCoordinator` coordinates managers that share it in one event loop
(tests, several managers in one process). Coordinators across processes live in opt-in modules
(``taskbuffer.distributed.redis``, installed with ``pip install 'taskbuffer[redis]'``).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = (
    "COORDINATOR_TIMEOUT",
    "AbstractDistributedCoordinator",
    "DistributedRequestStatus",
    "DistributedTaskRequest",
    "DistributedTaskRequestResult",
    "InMemoryDistributedCoordinator",
)

COORDINATOR_TIMEOUT = 10.0
"""Seconds a manager waits for each coordinator call of a tick before giving the tick up."""

DistributedRequestStatus: TypeAlias = Literal["requesting", "rejected", "succeeded", "failed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class DistributedTaskRequest:
    """A manager's request to run one tick of a task. Times are epoch seconds."""

    submitter_id: str
    request_response_id: str
    task_name: str
    task_version: str | None
    task_execution_time: float
    task_execution_timeout: float | None
    task_execution_parallel: int
    status: DistributedRequestStatus


@dataclass(frozen=True, kw_only=True, slots=True)
class DistributedTaskRequestResult:
    """The coordinator's answer: whether this submitter should run the tick."""

    submitter_id: str
    request_response_id: str
    considered: bool
    rank: int
    reason: str
    should_trigger: bool


class AbstractDistributedCoordinator(abc.ABC):
    """Decides which of several managers runs a cron tick. Every method is ``async``."""

    @abc.abstractmethod
    async def fire_distributed_task_request(
        self, request: DistributedTaskRequest
    ) -> DistributedTaskRequestResult:
        """Offer a tick; the answer says whether the submitter should run it."""

    @abc.abstractmethod
    async def update_distributed_task_request(self, request: DistributedTaskRequest) -> None:
        """Report what became of a tick (``status`` ``succeeded`` or ``failed``)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called by ``TaskManager.start()``."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Called by ``TaskManager.stop()``."""


class InMemoryDistributedCoordinator(AbstractDistributedCoordinator):
    """Lets the managers sharing it run each cron tick once between them, within one loop.

    A tick is named by its task name and scheduled instant. The first
    ``task_execution_parallel`` requests for a tick are told to run it (``rank`` counts the
    requests in order of arrival); later ones are not. Ticks are remembered for
    :attr:`retention` seconds of schedule time before the newest tick; a tick older than
    the ticks already forgotten is refused, never given out again, however late it is asked
    for.
    """

    retention: float = 3600.0

    def __init__(self) -> None:
        # (task name, instant) -> submitter ids in order of arrival.
        self._ticks: dict[tuple[str, float], list[str]] = {}
        self._newest = -math.inf
        self._forgotten = -math.inf  # ticks before this instant may have been forgotten
        self._prune_at = 1024

    def __repr__(self) -> str:
        return f"<InMemoryDistributedCoordinator ticks={len(self._ticks)}>"

    async def fire_distributed_task_request(
        self, request: DistributedTaskRequest
    ) -> DistributedTaskRequestResult:
        """Record the request; ``should_trigger`` for the first ``parallel`` per tick."""
        key = (request.task_name, request.task_execution_time)
        submitters = self._ticks.get(key)
        if submitters is None and request.task_execution_time < self._forgotten:
            return DistributedTaskRequestResult(
                submitter_id=request.submitter_id,
                request_response_id=request.request_response_id,
                considered=True,
                rank=1,
                reason=f"the tick is older than the coordinator's retention ({self.retention:g} s)",
                should_trigger=False,
            )
        if submitters is None:
            submitters = self._ticks[key] = []
            self._newest = max(self._newest, request.task_execution_time)
            if len(self._ticks) >= self._prune_at:
                self._prune()
        rank = len(submitters)
        submitters.append(request.submitter_id)
        should_trigger = rank < max(request.task_execution_parallel, 1)
        return DistributedTaskRequestResult(
            submitter_id=request.submitter_id,
            request_response_id=request.request_response_id,
            considered=True,
            rank=rank,
            reason=(
                "claimed the tick"
                if should_trigger
                else f"another manager claimed this tick ({submitters[0]})"
            ),
            should_trigger=should_trigger,
        )

    async def update_distributed_task_request(self, request: DistributedTaskRequest) -> None:
        """Nothing to record: the claim alone decides the tick."""

    def _prune(self) -> None:
        cutoff = self._newest - self.retention
        self._forgotten = max(self._forgotten, cutoff)
        self._ticks = {key: ids for key, ids in self._ticks.items() if key[1] >= cutoff}
        self._prune_at = max(1024, 2 * len(self._ticks))
