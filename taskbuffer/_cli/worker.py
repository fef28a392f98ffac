"""``taskbuffer worker MODULE:ATTRIBUTE``: start a manager and work its jobs until signalled.

The first SIGINT or SIGTERM stops the manager gracefully: it claims nothing more and waits for
the runs in flight, whose outcomes are committed. A second signal stops it at once: the runs
are cancelled and their jobs go back to ``queued`` (their attempt recorded ``released``, not
counted), so another worker takes them; if the store cannot take that within
:data:`RELEASE_GRACE` seconds, the process leaves anyway and the jobs' leases run out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Any

from .target import load_target

if TYPE_CHECKING:
    from .._manager import TaskManager

__all__ = ("RELEASE_GRACE", "register")

logger = logging.getLogger("taskbuffer")

RELEASE_GRACE = 5.0
"""Seconds an immediate stop (second signal) waits for the store to take the released jobs."""


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``worker`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="start a TaskManager and work its durable jobs",
        description=(
            "Import a TaskManager (or a function of no arguments returning one), start it and "
            "work the jobs of its tasks until SIGINT or SIGTERM; then stop gracefully, waiting "
            "for the runs in flight. A second signal stops at once: the runs are cancelled "
            "and their jobs go back to the queue for another worker."
        ),
    )
    parser.add_argument("target", metavar="MODULE:ATTRIBUTE", help="e.g. myapp.tasks:manager")
    parser.add_argument(
        "--concurrency",
        type=_count,
        default=None,
        metavar="N",
        help="jobs run at once (default: the manager's job_concurrency)",
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="the job store, e.g. sqlite:///jobs.db or postgresql://host/db "
        "(default: the manager's job_store)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Work jobs until signalled; returns the exit code."""
    from .._manager import TaskManager, override_job_options

    try:
        manager = load_target(args.target, TaskManager)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"taskbuffer worker: {exc}") from None
    try:
        has_store = override_job_options(
            manager, job_store=args.store, job_concurrency=args.concurrency
        )
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"taskbuffer worker: {exc}") from None
    if not has_store:
        raise SystemExit(
            f"taskbuffer worker: {args.target} has no job store: pass --store URL "
            "(sqlite:///jobs.db, postgresql://...) or build it with TaskManager(job_store=...)"
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(work(manager, args.target))
    return 0


async def work(manager: TaskManager, name: str) -> None:
    """Start ``manager``, wait for a signal, stop it (see the module docstring)."""
    loop = asyncio.get_running_loop()
    signals = asyncio.Queue[int]()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    try:
        await manager.start()
        logger.info(
            "taskbuffer worker: %s started; working jobs of %s (stop with Ctrl-C or SIGTERM)",
            name,
            ", ".join(sorted(manager.task_map)) or "no task",
        )
        first = await signals.get()
        logger.info(
            "taskbuffer worker: %s: stopping after the runs in flight (again to stop at once)",
            signal.Signals(first).name,
        )
        stopping = asyncio.ensure_future(manager.stop())
        second = asyncio.ensure_future(signals.get())
        await asyncio.wait({stopping, second}, return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            logger.warning(
                "taskbuffer worker: %s: stopping at once; unfinished jobs go back to the queue",
                signal.Signals(second.result()).name,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELEASE_GRACE):
                    await manager.stop(timeout=0)
            if not stopping.done():
                logger.error(
                    "taskbuffer worker: the store did not take the released jobs within %g s; "
                    "leaving them to their leases",
                    RELEASE_GRACE,
                )
                stopping.cancel()
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        logger.info("taskbuffer worker: stopped")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
