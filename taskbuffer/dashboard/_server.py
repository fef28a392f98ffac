"""``dashboard_app`` (the ASGI app) and ``serve_dashboard`` (the app alone, on uvicorn)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import LOG_LEVELS

from .._validation import safe_repr
from ._app import Dashboard, build_dashboard

if TYPE_CHECKING:
    from .._manager import TaskManager
    from .._service_manager import ServiceManager

__all__ = ("dashboard_app", "serve_dashboard")

logger = logging.getLogger("taskbuffer")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def dashboard_app(
    manager: TaskManager,
    *,
    services: ServiceManager | None = None,
    token: str | None = None,
    allow_actions: bool = False,
    title: str = "taskbuffer",
) -> ASGIApp:
    """The dashboard of ``manager`` as an ASGI app, to mount anywhere.

    The app keeps the manager's latest events (for the first paint) through one subscription
    to ``manager.task_subject``; each open event stream adds one while it is open.

    :param services: a :class:`~taskbuffer.ServiceManager` whose services to show as well.
    :param token: when set, every request must carry it: ``Authorization: Bearer <token>``,
        or ``?token=<token>`` in the URL of a GET (the page, its files, the event stream).
        Others get 401. Compared in constant time.
    :param allow_actions: add the POST actions (trigger, deschedule, cancel and retry a job);
        without it they do not exist (404).
    :param title: shown in the page's title and header.
    :raises TypeError: a wrong type for ``manager``, ``services``, ``allow_actions`` or ``title``.
    :raises ValueError: an empty ``token``.
    """
    return build_dashboard(
        manager, services=services, token=token, allow_actions=allow_actions, title=title
    ).app


class _Server(uvicorn.Server):
    """uvicorn's server, which ends the dashboard's open event streams when it shuts down
    (it would otherwise wait for them, since they never end by themselves)."""

    def __init__(self, config: uvicorn.Config, dashboard: Dashboard) -> None:
        super().__init__(config)
        self.dashboard = dashboard

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.dashboard.close_streams()
        await super().shutdown(sockets)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_dashboard(
    manager: TaskManager,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    services: ServiceManager | None = None,
    token: str | None = None,
    allow_actions: bool = False,
    title: str = "taskbuffer",
    log_level: str = "warning",
) -> None:
    """Serve the dashboard of ``manager`` with uvicorn until cancelled (or SIGINT/SIGTERM).

    It binds to the loopback interface unless ``host`` says otherwise; on another interface
    without a ``token`` it logs a warning. Cancelling the awaiting task shuts the server down
    gracefully (open event streams are ended) before the cancellation propagates.
    The other options are :func:`dashboard_app`'s; ``log_level`` is uvicorn's.

    :raises TypeError: ``host`` is not a string or ``port`` not an int.
    :raises ValueError: an empty ``host``, ``port`` outside 0-65535, an unknown ``log_level``.
    :raises OSError: it cannot listen on ``host``:``port`` (in use, say).
    """
    _check_server_options(host, port, log_level)
    loopback = _is_loopback(host)
    dashboard = build_dashboard(
        manager,
        services=services,
        token=token,
        allow_actions=allow_actions,
        title=title,
        # Without a token, a loopback dashboard answers only to loopback names: a page of
        # another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) is
        # refused, since its requests name its own host.
        hosts=LOOPBACK_NAMES | {host.lower()} if token is None and loopback else None,
    )
    if token is None and not loopback:
        logger.warning(
            "the dashboard listens on %s without a token: anyone who reaches it sees the tasks",
            host,
        )
    config = uvicorn.Config(
        dashboard.app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        ws="none",  # the dashboard uses no websockets: do not import a websockets library
        timeout_graceful_shutdown=5,
    )
    await _serve(_Server(config, dashboard), host, port)


async def _serve(server: _Server, host: str, port: int) -> None:
    # Bound here, not by uvicorn: a failure is an OSError at this call (uvicorn would exit
    # the process), and port 0's real port is known.
    listener = _listen(host, port)
    with listener:
        address = host if ":" not in host else f"[{host}]"
        logger.info("dashboard on http://%s:%d/", address, listener.getsockname()[1])
        serving = asyncio.ensure_future(server.serve(sockets=[listener]))
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True
            await serving
            raise


def _check_server_options(host: object, port: object, log_level: object) -> None:
    if not isinstance(host, str):
        raise TypeError(f"host must be a string, not {safe_repr(host)}")
    if not host:
        raise ValueError("host must be a non-empty string (an interface's name or address)")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {safe_repr(port)}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be within 0-65535, not {port}")
    if log_level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, as uvicorn would make it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(exc.errno, f"the dashboard cannot listen on {host}:{port}: {exc}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        raise OSError(exc.errno, f"the dashboard cannot listen on {host}:{port}: {exc}") from exc
    return listener
