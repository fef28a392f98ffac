"""``taskbuffer dashboard MODULE:ATTRIBUTE``: start a manager and serve its dashboard."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from typing import Any

from .target import load_target

__all__ = ("TOKEN_VARIABLE", "register")

TOKEN_VARIABLE = "TASKBUFFER_DASHBOARD_TOKEN"


def register(subparsers: Any) -> None:
    """Add the ``dashboard`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard",
        help="start a TaskManager and serve its live dashboard",
        description=(
            "Import a TaskManager (or a function of no arguments returning one), start it and "
            "serve its dashboard until interrupted. Needs: pip install 'taskbuffer[dashboard]'."
        ),
    )
    parser.add_argument("target", metavar="MODULE:ATTRIBUTE", help="e.g. myapp.tasks:manager")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8765, help="port (default: %(default)s)")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_VARIABLE) or None,
        help=(
            f"require this token on every request (default: ${TOKEN_VARIABLE}, which, unlike "
            "an argument, other users of the host cannot read in the process list)"
        ),
    )
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow triggering tasks and cancelling or retrying jobs from the page",
    )
    parser.add_argument("--title", default="taskbuffer", help="the page's title")
    parser.set_defaults(run=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be within 0-65535, not {port}")
    return port


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    from .. import TaskManager

    try:
        from ..dashboard import serve_dashboard
        from ..dashboard._app import check_token
    except ImportError as exc:
        raise SystemExit(f"taskbuffer dashboard: {exc}") from None
    try:
        check_token(args.token)
    except ValueError as exc:
        raise SystemExit(f"taskbuffer dashboard: {exc}") from None
    try:
        manager = load_target(args.target, TaskManager)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"taskbuffer dashboard: {exc}") from None

    async def serve() -> None:
        async with manager:
            await serve_dashboard(
                manager,
                host=args.host,
                port=args.port,
                token=args.token,
                allow_actions=args.allow_actions,
                title=args.title,
                log_level="info",
            )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
