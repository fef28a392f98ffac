"""``GET /api/events``: Server-Sent Events, one :class:`ClientFeed` per open stream.

The stream is a plain ASGI app (not a ``StreamingResponse``) so that it notices a disconnect
while it waits for events, whatever ASGI version the server speaks: one task reads
``receive()`` and cancels the stream at ``http.disconnect``; the stream's ``finally`` disposes
its subscriptions. Nothing outlives the request.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Any

import anyio
from starlette.types import Receive, Scope, Send

from ._feed import FRAME_INTERVAL, ClientFeed

if TYPE_CHECKING:
    from ._state import DashboardState

__all__ = ("HEARTBEAT_INTERVAL", "EventStream", "encode")

HEARTBEAT_INTERVAL = 15.0  # seconds: a comment line keeps proxies from closing an idle stream


def _default(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return None
    return str(value)


def encode(value: Any) -> str:
    """JSON for the page: compact, never failing on a stray object (its ``str`` is shown)."""
    return json.dumps(value, separators=(",", ":"), default=_default, allow_nan=False)


def frame(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {encode(data)}\n\n".encode()


class EventStream:
    """The ASGI app of the event stream."""

    def __init__(
        self,
        state: DashboardState,
        feeds: set[ClientFeed],
        *,
        actions: bool,
        title: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.state = state
        self.feeds = feeds  # the open streams, so that the server can end them at shutdown
        self.actions = actions
        self.title = title
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        feed = ClientFeed()
        self.feeds.add(feed)
        try:
            feed.open(self.state)
            async with anyio.create_task_group() as group:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(until_disconnect)
                await self.stream(feed, send)
                group.cancel_scope.cancel()
        except OSError:  # the client went away while we wrote to it
            pass
        finally:
            feed.close()
            self.feeds.discard(feed)

    async def stream(self, feed: ClientFeed, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        while not feed.closed:
            feed.wake.clear()
            if feed.resync:
                data = await feed.take_snapshot(self.state, actions=self.actions, title=self.title)
                body = frame("snapshot", data)
            else:
                body = frame("update", feed.take_update(self.state))
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await asyncio.sleep(FRAME_INTERVAL)
            while not (feed.wake.is_set() or feed.closed):
                try:
                    async with asyncio.timeout(HEARTBEAT_INTERVAL):
                        await feed.wake.wait()
                except TimeoutError:
                    await send(
                        {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}
                    )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
