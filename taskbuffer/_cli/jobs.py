"""``taskbuffer jobs list|show|cancel|retry --store URL``: inspect and act on a job store.

These talk to the store directly (no manager, no task code imported), so they work from any
machine that reaches the store. ``--json`` prints what the API's ``to_dict()`` gives.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..jobs import Job, JobStore

__all__ = ("register",)

_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _whole(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def register(subparsers: Any) -> None:
    """Add the ``jobs`` subcommand and its actions."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "jobs",
        help="inspect and act on the jobs of a store",
        description="List, show, cancel or retry the durable jobs of a store.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        required=True,
        metavar="URL",
        help="the job store, e.g. sqlite:///jobs.db or postgresql://host/db",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="jobs, newest first")
    listing.add_argument("--status", choices=_STATUSES, default=None)
    listing.add_argument("--task", default=None, metavar="NAME", help="only this task's jobs")
    listing.add_argument("--limit", type=_whole(0), default=100, metavar="N")
    listing.add_argument("--offset", type=_whole(0), default=0, metavar="N")
    listing.set_defaults(run=lambda args: _run(args, _list))
    for action, about, function in (
        ("show", "one job and its attempts (the audit trail)", _show),
        ("cancel", "cancel a queued or running job", _cancel),
        ("retry", "put a failed or cancelled job back in the queue", _retry),
    ):
        sub = actions.add_parser(action, parents=[common], help=about)
        sub.add_argument("job_id", metavar="JOB_ID")
        sub.set_defaults(run=lambda args, function=function: _run(args, function))


def _run(args: argparse.Namespace, action: Callable[[JobStore, Any], Awaitable[int]]) -> int:
    from ..jobs import job_store_from_url

    try:
        store = job_store_from_url(args.store)
    except (TypeError, ValueError, ImportError) as exc:
        raise SystemExit(f"taskbuffer jobs: {exc}") from None

    async def main() -> int:
        await store.open()
        try:
            return await action(store, args)
        finally:
            await store.close()

    return asyncio.run(main())


def _dump(value: Any) -> None:
    print(json.dumps(value, indent=2, default=repr))


def _line(job: Job) -> str:
    finished = job.finished_at.isoformat(timespec="seconds") if job.finished_at else "-"
    return (
        f"{job.id:<32}  {job.status:<9}  {job.task_name:<20}  "
        f"{job.attempts}/{job.max_attempts:<3}  {job.priority:>4}  "
        f"{job.run_at.isoformat(timespec='seconds')}  {finished}"
    )


async def _list(store: JobStore, args: argparse.Namespace) -> int:
    jobs = await store.list_jobs(
        status=args.status, task_name=args.task, limit=args.limit, offset=args.offset
    )
    if args.json:
        _dump([job.to_dict() for job in jobs])
        return 0
    print(
        f"{'ID':<32}  {'STATUS':<9}  {'TASK':<20}  {'TRIES':<5}  {'PRIO':>4}  "
        f"{'RUN_AT':<25}  FINISHED"
    )
    for job in jobs:
        print(_line(job))
    return 0


def _missing(job_id: str) -> int:
    print(f"taskbuffer jobs: no job with id {job_id!r}", file=sys.stderr)
    return 1


async def _show(store: JobStore, args: argparse.Namespace) -> int:
    job = await store.get(args.job_id)
    if job is None:
        return _missing(args.job_id)
    attempts = await store.attempts(job.id)
    if args.json:
        _dump({**job.to_dict(), "attempts": [attempt.to_dict() for attempt in attempts]})
        return 0
    for key, value in job.to_dict().items():
        if key != "error":
            shown = repr(value) if key in ("input", "result") else value
            print(f"{key + ':':<14}{shown}")
    if job.error is not None:
        print(f"error:        {job.error.type}: {job.error.message}")
    print("audit trail:")
    for attempt in attempts:
        ended = attempt.finished_at.isoformat() if attempt.finished_at else "-"
        error = f"  {attempt.error.type}: {attempt.error.message}" if attempt.error else ""
        print(
            f"  #{attempt.attempt} {attempt.outcome or 'running':<9} {attempt.worker_id}  "
            f"{attempt.started_at.isoformat()} -> {ended}{error}"
        )
    return 0


async def _cancel(store: JobStore, args: argparse.Namespace) -> int:
    if await store.cancel(args.job_id, now=time.time()):
        job = await store.get(args.job_id)
        status = "unknown" if job is None else job.status
        print(f"job {args.job_id}: cancel requested (status now {status})")
        return 0
    job = await store.get(args.job_id)
    if job is None:
        return _missing(args.job_id)
    print(
        f"taskbuffer jobs: job {args.job_id} has already finished ({job.status})", file=sys.stderr
    )
    return 1


async def _retry(store: JobStore, args: argparse.Namespace) -> int:
    try:
        job = await store.retry(args.job_id, now=time.time())
    except KeyError:
        return _missing(args.job_id)
    except ValueError as exc:
        print(f"taskbuffer jobs: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _dump(job.to_dict())
    else:
        print(f"job {job.id}: {job.status} again")
    return 0
