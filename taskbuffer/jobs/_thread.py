"""One dedicated thread per store that owns a blocking connection.

The event loop never blocks on the database: a coroutine hands a function to the thread and
awaits a future that the thread resolves through ``loop.call_soon_threadsafe``. Calls run one
at a time in submission order, which is what a single SQLite connection needs. While idle the
thread may run a *watch* function every ``watch_interval`` seconds (the SQLite store uses it
to notice commits of other processes).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ("ConnectionThread", "settle_from_thread")

C = TypeVar("C")
R = TypeVar("R")

_STOP = object()


class ConnectionThread(Generic[C]):
    """A thread holding the connection that ``connect()`` returns, running calls on it.

    :param connect: opens the connection (runs on the thread; an error fails every call).
    :param disconnect: closes it when the thread stops.
    :param watch: called on the thread with the connection when idle for ``watch_interval``
        seconds while ``watching()`` is true.
    """

    def __init__(
        self,
        *,
        name: str,
        connect: Callable[[], C],
        disconnect: Callable[[C], None],
        watch: Callable[[C], None],
        watching: Callable[[], bool],
        watch_interval: float,
    ) -> None:
        self._connect = connect
        self._disconnect = disconnect
        self._watch = watch
        self._watching = watching
        self._watch_interval = watch_interval
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._error: BaseException | None = None
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True until :meth:`stop` has run."""
        return self._thread.is_alive()

    async def call(self, function: Callable[[C], R]) -> R:
        """Run ``function(connection)`` on the thread and return what it returns."""
        return await self.submit(function)

    def submit(self, function: Callable[[C], R]) -> asyncio.Future[R]:
        """Queue ``function(connection)`` on the thread now; the future that it resolves
        (cancelling the future leaves the call to run, its outcome dropped)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put((function, future.get_loop(), future))
        return future

    async def stop(self) -> None:
        """Close the connection and end the thread (after the calls already submitted)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((_STOP, loop, done))
        await done
        # The thread has closed the connection and only returns now: joined, so that no
        # thread of the store outlives close() (a moment's wait at most; bounded anyway).
        self._thread.join(timeout=1.0)

    def _main(self) -> None:
        try:
            connection: C | None = self._connect()
        except BaseException as error:  # handed to every caller below
            self._error = error
            connection = None
        while True:
            try:
                timeout = self._watch_interval if self._watching() else None
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                if connection is not None:
                    try:
                        self._watch(connection)
                    except Exception:  # a failed watch is retried on the next idle tick
                        pass
                continue
            function, loop, future = item
            if function is _STOP:
                if connection is not None:
                    self._disconnect(connection)
                settle_from_thread(loop, future, None, None)
                return
            if connection is None:
                settle_from_thread(loop, future, None, self._error)
                continue
            try:
                result = function(connection)
            except BaseException as error:  # handed to the awaiting coroutine
                settle_from_thread(loop, future, None, error)
            else:
                settle_from_thread(loop, future, result, None)


def settle_from_thread(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    """From any thread: give ``future`` (of ``loop``) ``result``, or ``error`` when it is not
    ``None``, unless it is done by then (its awaiter was cancelled) or the loop has closed."""

    def settle() -> None:
        if future.done():  # the awaiting coroutine was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop closed while the call ran: nobody is waiting any more
        pass
