"""A coordinator on Redis: each cron tick runs on exactly one of the managers sharing it.

Install with ``pip install 'taskbuffer[redis]'``. Every manager that schedules the same task
computes the same tick instants, so a tick is named by ``(task name, scheduled instant)``. The
first manager to ``SET`` that name with ``NX`` wins the tick; the others are told not to run
it. The claim expires after ``claim_ttl`` seconds, which only has to outlast the clock skew
between the managers' hosts.
"""

from __future__ import annotations

import math

try:
    from redis.asyncio import Redis
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "taskbuffer.distributed.redis needs the redis package; install it with: "
        "pip install 'taskbuffer[redis]'"
    ) from exc

from .._validation import check_seconds
from . import AbstractDistributedCoordinator, DistributedTaskRequest, DistributedTaskRequestResult

__all__ = ("RedisDistributedCoordinator",)


class RedisDistributedCoordinator(AbstractDistributedCoordinator):
    """Lets one manager per tick run it, by a ``SET NX`` claim in Redis.

    :param url: where Redis is, e.g. ``"redis://localhost:6379/0"`` (ignored with ``client``).
    :param client: an existing ``redis.asyncio.Redis`` to use instead; it is not closed on
        ``stop()``.
    :param key_prefix: the prefix of every key written.
    :param claim_ttl: seconds a tick's claim and a request's status are kept.
    """

    def __init__(
        self,
        *,
        url: str = "redis://localhost:6379/0",
        client: Redis | None = None,
        key_prefix: str = "taskbuffer",
        claim_ttl: float = 300.0,
    ) -> None:
        check_seconds("claim_ttl", claim_ttl, positive=True)
        if not key_prefix:
            raise ValueError("key_prefix must be a non-empty string")
        self.url = url
        self.key_prefix = key_prefix
        self.claim_ttl = float(claim_ttl)
        self._given_client = client
        self._client: Redis | None = client

    def __repr__(self) -> str:
        return f"<RedisDistributedCoordinator url={self.url!r} prefix={self.key_prefix!r}>"

    def _redis(self) -> Redis:
        if self._client is None:
            # Created on first use inside the running loop: the connection pool binds to it.
            self._client = Redis.from_url(self.url)
        return self._client

    def tick_key(self, request: DistributedTaskRequest) -> str:
        """The key that names a tick: the task and its scheduled instant (ms precision)."""
        instant = round(request.task_execution_time * 1000)
        return f"{self.key_prefix}:tick:{request.task_name}:{instant}"

    async def start(self) -> None:
        """Connect and check that Redis answers."""
        await self._redis().ping()

    async def stop(self) -> None:
        """Close the connection this coordinator opened (a given client stays open)."""
        client, self._client = self._client, self._given_client
        if client is not None and client is not self._given_client:
            await client.aclose()

    async def fire_distributed_task_request(
        self, request: DistributedTaskRequest
    ) -> DistributedTaskRequestResult:
        """Claim the tick; ``should_trigger`` is true only for the manager that got it."""
        claimed = await self._redis().set(
            self.tick_key(request),
            f"{request.submitter_id}:{request.request_response_id}",
            nx=True,
            px=int(self.claim_ttl * 1000),
        )
        won = bool(claimed)
        return DistributedTaskRequestResult(
            submitter_id=request.submitter_id,
            request_response_id=request.request_response_id,
            considered=True,
            rank=0 if won else 1,
            reason="claimed the tick" if won else "another manager claimed this tick",
            should_trigger=won,
        )

    async def update_distributed_task_request(self, request: DistributedTaskRequest) -> None:
        """Record the request's outcome under ``<prefix>:request:<request_response_id>``."""
        key = f"{self.key_prefix}:request:{request.request_response_id}"
        client = self._redis()
        await client.hset(
            key,
            mapping={
                "submitter_id": request.submitter_id,
                "task_name": request.task_name,
                "task_execution_time": repr(request.task_execution_time),
                "status": request.status,
            },
        )
        await client.expire(key, math.ceil(self.claim_ttl))
