"""The PostgreSQL job store's connections: a pool that survives server restarts, and LISTEN.

:class:`PostgresLink` runs each operation on a pooled connection and, when it fails because the
server went away (stopped, restarted, crashed, network cut), runs it again on a fresh
connection with backoff until the server is back or ``reconnect_timeout`` passes; the first
failure and the recovery are logged. Operations must therefore be safe to repeat (the store's
are: it chooses job ids itself, and a finish that already committed reports itself applied).

It also holds one connection that LISTENs on the store's channel; when that connection is
lost it reconnects the same way, and tells the store each time it starts or stops listening
(the store polls more often meanwhile, and wakes its subscribers once it listens again, for
whatever was committed in between).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import asyncpg
import asyncpg.pool

__all__ = ("Connection", "PostgresLink", "asyncpg_dsn", "lost_connection", "shown_dsn")

logger = logging.getLogger("taskbuffer")

R = TypeVar("R")
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)

POOL_SIZE = 5
"""Connections of a store's own pool, the listening one included."""
RETRY_FIRST, RETRY_MAX = 0.05, 1.0  # seconds between two tries after a lost connection

_TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}
"""Settings of the connections of a pool the store makes. The store's statements are
prepared once per connection and run many times with new parameters: planned once (the
claim's many CTEs took as long to plan as to run), re-planned when the table's statistics
change (ANALYZE invalidates cached plans)."""


def asyncpg_dsn(dsn: str) -> str:
    """``dsn`` as asyncpg reads it (SQLAlchemy's ``postgresql+driver://`` prefix dropped)."""
    if dsn.startswith("postgresql+"):
        return "postgresql://" + dsn.split("://", 1)[1]
    return dsn


def shown_dsn(dsn: str | None) -> str:
    """How messages name a store's database: its URL without a password (``None``: a pool)."""
    if dsn is None:
        return "(a given asyncpg pool)"
    head, at, tail = dsn.rpartition("@")
    if not at:
        return repr(dsn)
    scheme, _, user = head.partition("://")
    return repr(f"{scheme}://{user.split(':', 1)[0]}@{tail}")  # never show a password


def lost_connection(error: BaseException) -> bool:
    """Whether ``error`` says the server or the connection went away (worth retrying)."""
    if isinstance(error, _TRANSIENT):
        return True
    return isinstance(error, asyncpg.InterfaceError) and "connection is closed" in str(error)


async def _keep_session(_connection: Any) -> None:
    """Reset nothing when a connection goes back to the store's pool.

    asyncpg's default reset costs a round trip per release (``RESET ALL``, ``UNLISTEN *``...),
    one more per store operation; the store's statements leave no session state behind (no
    SET, no cursor, no advisory lock past a transaction, LISTEN only on the listener, which
    UNLISTENs before it lets go), and asyncpg still rolls back an open transaction itself.
    """


class PostgresLink:
    """A pool (made from ``dsn`` or given) bound to the loop that opened it, and a listener.

    :param prepare: run once on a connection, in a transaction, when the link opens (the
        store creates or checks its schema there).
    :param on_notify: called with each notification's payload on ``channel``.
    :param on_listening: called with True when the listener starts, False when it stops.
    """

    def __init__(
        self,
        *,
        dsn: str | None,
        pool: asyncpg.Pool[asyncpg.Record] | None,
        channel: str,
        reconnect_timeout: float | None,
        prepare: Callable[[Connection], Awaitable[None]],
        on_notify: Callable[[str], None],
        on_listening: Callable[[bool], None],
        name: Callable[[], str],
    ) -> None:
        self._dsn = dsn
        self._given_pool = pool
        self._channel = channel
        self._reconnect_timeout = reconnect_timeout
        self._prepare = prepare
        self._on_notify = on_notify
        self._on_listening = on_listening
        self._store_name = name
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open_lock: asyncio.Lock | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._opened_once = False
        self._outage: float | None = None  # loop time of the first failure of an outage

    @property
    def is_open(self) -> bool:
        """Whether the link has a pool (on some loop)."""
        return self._pool is not None

    async def open(self) -> None:
        """Make the pool (unless given), run ``prepare`` and start listening. Idempotent."""
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return
        if self._open_lock is None or self._loop is not loop:
            self._drop_foreign_loop()
            self._open_lock, self._loop = asyncio.Lock(), loop
        async with self._open_lock:
            if self._pool is not None:
                return
            pool = self._given_pool or await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=POOL_SIZE,
                reset=_keep_session,
                server_settings=SERVER_SETTINGS,
            )
            try:
                async with pool.acquire() as connection, connection.transaction():
                    await self._prepare(connection)
            except BaseException:
                if self._given_pool is None:
                    await pool.close()
                raise
            self._pool, self._opened_once = pool, True
            self._listen_task = loop.create_task(self._listen_forever())

    def _drop_foreign_loop(self) -> None:
        """Forget a pool made on another (finished) loop: it cannot be used or closed here."""
        pool, self._pool = self._pool, None
        if pool is not None and pool is not self._given_pool:
            pool.terminate()
        self._listen_task = None

    async def close(self) -> None:
        """Stop listening and close the pool made here (a given pool stays open)."""
        task, self._listen_task = self._listen_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None and pool is not self._given_pool:
            await pool.close()

    async def run(self, operation: Callable[[Connection], Awaitable[R]]) -> R:
        """Run ``operation`` on a pooled connection, again while the server is away."""
        await self.open()
        loop = asyncio.get_running_loop()
        delay = RETRY_FIRST
        while True:
            pool = self._pool
            if pool is None:
                raise RuntimeError(f"job store {self._store_name()} was closed")
            try:
                async with pool.acquire() as connection:
                    result = await operation(connection)
            except Exception as error:
                if not lost_connection(error) or self._gave_up(loop.time()):
                    raise
                if self._outage is None:
                    self._outage = loop.time()
                    logger.warning(
                        "job store %s: connection lost (%r); retrying", self._store_name(), error
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._outage is not None:
                logger.warning(
                    "job store %s: reconnected after %.1f s",
                    self._store_name(),
                    loop.time() - self._outage,
                )
                self._outage = None
            return result

    def _gave_up(self, now: float) -> bool:
        if not self._opened_once:
            return True
        if self._outage is None or self._reconnect_timeout is None:
            return False
        return now - self._outage >= self._reconnect_timeout

    async def _listen_forever(self) -> None:
        """Hold a LISTENing connection; after losing it, connect again."""
        delay = RETRY_FIRST
        while (pool := self._pool) is not None:
            try:
                await self._listen(pool)
                delay = RETRY_FIRST
            except Exception as error:
                if not lost_connection(error):
                    logger.exception("job store %s: LISTEN failed; polling", self._store_name())
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _listen(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        """LISTEN on one connection until it is lost."""
        lost = asyncio.Event()

        def on_lost(_connection: Any) -> None:
            lost.set()

        def on_notification(_connection: Any, _pid: int, _channel: str, payload: object) -> None:
            self._on_notify(str(payload))

        async with pool.acquire() as connection:
            connection.add_termination_listener(on_lost)
            try:
                await connection.add_listener(self._channel, on_notification)
                self._on_listening(True)
                await lost.wait()
            finally:
                self._on_listening(False)
                # a lost connection has left the pool's hands already: nothing to undo on it
                if not lost.is_set():
                    connection.remove_termination_listener(on_lost)
                    await connection.remove_listener(self._channel, on_notification)
