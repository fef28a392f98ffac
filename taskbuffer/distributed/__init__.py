"""Coordination of cron ticks across processes.

Before each cron tick a :class:`~taskbuffer.TaskManager` with a coordinator offers the tick to
it; the tick runs only where ``should_trigger`` comes back true, and the outcome is reported
with ``update_distributed_task_request``. Real coordinators live in opt-in modules
(``taskbuffer.distributed.redis``, installed with ``pip install 'taskbuffer[redis]'``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = (
    "AbstractDistributedCoordinator",
    "DistributedRequestStatus",
    "DistributedTaskRequest",
    "DistributedTaskRequestResult",
)

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
