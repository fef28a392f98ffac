"""``taskbuffer dashboard MODULE:ATTRIBUTE``: start a manager and serve its dashboard."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from .target import load_target

__all__ = ("register",)


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
    parser.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")
    parser.add_argument("--token", default=None, help="require this token on every request")
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow triggering tasks and cancelling or retrying jobs from the page",
    )
    parser.add_argument("--title", default="taskbuffer", help="the page's title")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    from .. import TaskManager

    try:
        from ..dashboard import serve_dashboard
    except ImportError as exc:
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
