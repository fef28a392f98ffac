"""A coordinator on Redis: each cron tick runs on at most one of the managers sharing it.

Install with ``pip install 'taskbuffer[redis]'``. Every manager that schedules the same task
computes the same tick instants, so a tick is named by ``(task name, scheduled instant)``. A
manager runs a tick only after claiming it in Redis; see :class:`RedisDistributedCoordinator`
for what the claim guarantees and under which assumptions.
"""

from __future__ import annotations

import math

try:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "taskbuffer.distributed.redis needs the redis package; install it with: "
        "pip install 'taskbuffer[redis]'"
    ) from exc

from .._validation import check_seconds
from . import AbstractDistributedCoordinator, DistributedTaskRequest, DistributedTaskRequestResult

__all__ = ("RedisDistributedCoordinator",)

# One claim, atomic (a script runs alone on the server): refuse a tick that is too old or too
# far ahead by the server's clock (a mark raised that far would refuse every manager's ticks
# until the server's clock reached it) or at or below the task's high-water mark, else raise
# the mark to it and record who claimed it.
#   KEYS[1] the tick's key, KEYS[2] the task's high-water mark
#   ARGV[1] the tick's instant (ms), ARGV[2] the claimant, ARGV[3] claim_ttl (ms),
#   ARGV[4] max_tick_age (ms), or -1 for no bound
_CLAIM = """
local instant = tonumber(ARGV[1])
local max_age = tonumber(ARGV[4])
if max_age >= 0 then
    local now = redis.call('TIME')
    local age = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - instant
    if age > max_age then
        return {'old', age}
    end
    if -age > max_age then
        return {'ahead', -age}
    end
end
local mark = redis.call('GET', KEYS[2])
if mark and instant <= tonumber(mark) then
    local holder = redis.call('GET', KEYS[1])
    if holder then
        return {'taken', holder}
    end
    return {'passed', mark}
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {'won', ARGV[2]}
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDistributedCoordinator(AbstractDistributedCoordinator):
    """Lets at most one manager run each cron tick, by an atomic claim in Redis.

    A claim is one Lua script, so it is atomic. It refuses the tick when the tick's instant
    is more than ``max_tick_age`` seconds before or after the Redis server's clock, or at or
    below the task's **high-water mark** (the latest instant claimed for that task name, one key per
    task name, kept without expiry); otherwise it raises the mark to the tick and wins it.
    The tick's own key (``<prefix>:tick:<task>:<ms>``, kept ``claim_ttl`` seconds) only
    records who claimed it, for the refusal's reason.

    What holds, whatever the pauses of the managers (SIGSTOP, GC, a suspended VM) and however
    their requests interleave:

    * **At most once, while Redis keeps its writes.** A tick runs on at most one manager:
      once a tick is claimed, every claim of it or of an earlier tick of the task is refused,
      however late it comes. This does not depend on ``claim_ttl`` or on clocks.
    * **After Redis lost writes** (``FLUSHALL``, a restart without persistence, a failover to
      a replica that had not received them), a tick can run a second time only if another
      claim for it reaches Redis less than ``max_tick_age`` after its instant, by the Redis
      server's clock. A manager paused longer than that before claiming is refused. With
      ``max_tick_age=None`` there is no such bound.
    * **Liveness.** A tick runs when some manager's claim reaches Redis at most
      ``max_tick_age`` after the tick (server clock) and before any claim of a later tick of
      the task. A tick claimed by a manager that then stops or dies before running it does not
      run: this is at most once, not at least once. A run coalescing ticks missed while a
      loop was blocked (or the process paused) is offered as the oldest of them, so past
      ``max_tick_age`` it is refused and the schedule goes on with the next tick. The mark
      is never more than ``max_tick_age`` ahead of the server's clock, so a host whose clock
      runs far ahead cannot hold the other managers' ticks off for longer than that.

    Assumptions: every manager scheduling a task under one name computes the same instants
    (same cron string and time zone); each host's clock is within ``max_tick_age`` of the
    Redis server's, minus the usual delay from a tick to its claim (a host whose clock lags
    or runs ahead further has all its claims refused); the managers share one Redis primary,
    version 5 or later (not a cluster of independent shards). A host clock that runs ahead,
    within that, makes that host claim ticks early, never twice.

    :param url: where Redis is, e.g. ``"redis://localhost:6379/0"`` (ignored with ``client``).
    :param client: an existing ``redis.asyncio.Redis`` to use instead; it is not closed on
        ``stop()``.
    :param key_prefix: the prefix of every key written.
    :param claim_ttl: seconds a tick's claim record and a request's status are kept.
    :param max_tick_age: seconds after its instant (by the Redis server's clock) past which a
        tick is refused, and seconds before its instant before which it is refused;
        ``None`` or ``math.inf`` for no bound. It must exceed the clock skew
        between the hosts and Redis plus the longest delay you accept between a tick and its
        run (a loop blocked past it, a slow coordinator); a tick that late is not run anywhere.
    :raises ValueError: ``claim_ttl`` or ``max_tick_age`` is not a positive number of
        seconds, or ``key_prefix`` is empty.
    """

    def __init__(
        self,
        *,
        url: str = "redis://localhost:6379/0",
        client: Redis | None = None,
        key_prefix: str = "taskbuffer",
        claim_ttl: float = 300.0,
        max_tick_age: float | None = 60.0,
    ) -> None:
        check_seconds("claim_ttl", claim_ttl, positive=True)
        check_seconds("max_tick_age", max_tick_age, positive=True, infinite=True, none=True)
        if not key_prefix:
            raise ValueError("key_prefix must be a non-empty string")
        self.url = url
        self.key_prefix = key_prefix
        self.claim_ttl = float(claim_ttl)
        self.max_tick_age = (
            None if max_tick_age is None or max_tick_age == math.inf else float(max_tick_age)
        )
        self._given_client = client
        self._client: Redis | None = client
        self._claim: AsyncScript | None = None
        self._starts = 0  # start() calls not yet matched by a stop(): managers sharing it

    def __repr__(self) -> str:
        return f"<RedisDistributedCoordinator url={self.url!r} prefix={self.key_prefix!r}>"

    def _redis(self) -> Redis:
        if self._client is None:
            # Created on first use inside the running loop: the connection pool binds to it.
            self._client = Redis.from_url(self.url)
        return self._client

    def tick_key(self, request: DistributedTaskRequest) -> str:
        """The key that names a tick: the task and its scheduled instant (ms precision)."""
        return f"{self.key_prefix}:tick:{request.task_name}:{_milliseconds(request)}"

    def mark_key(self, task_name: str) -> str:
        """The key of a task's high-water mark: the latest instant (ms) claimed for it."""
        return f"{self.key_prefix}:mark:{task_name}"

    async def start(self) -> None:
        """Connect and check that Redis answers.

        Several managers may share the coordinator: each ``start()`` that returned is
        matched by a ``stop()``, and only the last of those closes the connection.
        """
        await self._redis().ping()
        self._starts += 1

    async def stop(self) -> None:
        """Close the connection this coordinator opened (a given client stays open), unless
        a ``start()`` is not matched by a ``stop()`` yet (another manager still uses it)."""
        if self._starts > 1:
            self._starts -= 1
            return
        self._starts = 0
        client, self._client = self._client, self._given_client
        if client is not None and client is not self._given_client:
            await client.aclose()

    async def fire_distributed_task_request(
        self, request: DistributedTaskRequest
    ) -> DistributedTaskRequestResult:
        """Claim the tick; ``should_trigger`` is true only if this claim won it."""
        client = self._redis()
        if self._claim is None:
            self._claim = client.register_script(_CLAIM)  # EVALSHA, loaded again if missing
        max_age = -1 if self.max_tick_age is None else math.ceil(self.max_tick_age * 1000)
        outcome, detail = await self._claim(
            keys=[self.tick_key(request), self.mark_key(request.task_name)],
            args=[
                _milliseconds(request),
                f"{request.submitter_id}:{request.request_response_id}",
                max(1, round(self.claim_ttl * 1000)),
                max_age,
            ],
            client=client,
        )
        outcome = _text(outcome)
        if outcome == "won":
            reason = "claimed the tick"
        elif outcome == "taken":
            reason = f"another manager claimed this tick ({_text(detail)})"
        elif outcome == "passed":
            reason = (
                f"a tick at or after this one was claimed (the task's high-water mark is "
                f"{int(_text(detail)) / 1000:.3f})"
            )
        elif outcome == "ahead":
            reason = (
                f"the tick is {int(_text(detail)) / 1000:.3f} s ahead of the Redis server's "
                f"clock, beyond max_tick_age ({self.max_tick_age:g} s)"
            )
        else:
            reason = (
                f"the tick is {int(_text(detail)) / 1000:.3f} s old by the Redis server's "
                f"clock, beyond max_tick_age ({self.max_tick_age:g} s)"
            )
        won = outcome == "won"
        return DistributedTaskRequestResult(
            submitter_id=request.submitter_id,
            request_response_id=request.request_response_id,
            considered=True,
            rank=0 if won else 1,
            reason=reason,
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


def _milliseconds(request: DistributedTaskRequest) -> int:
    return round(request.task_execution_time * 1000)
