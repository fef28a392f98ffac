"""A live dashboard over a multi-tenant workload.

Three tenants sync their data through a three-step task (fetch, transform, store), at most two
runs per tenant at once and five API calls a second overall; a cron job builds a report every
five seconds; one tenant's upstream fails now and then; a database service is watched by a
health check. Open the printed address in a browser while it runs.

Run it with ``python examples/dashboard.py`` (Ctrl-C stops it) or
``python examples/dashboard.py --seconds 30``; ``--port 0`` picks a free port.
Needs ``pip install 'taskbuffer[dashboard]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from collections import Counter
from typing import Any

from taskbuffer import (
    RateLimit,
    Service,
    ServiceManager,
    Task,
    TaskConstraintGroup,
    TaskManager,
    TaskStep,
)
from taskbuffer.dashboard import serve_dashboard

TENANTS = ("acme", "globex", "initech")
SYNC_STEPS = [
    TaskStep(name="fetch", description="download the changes", percentage=40),
    TaskStep(name="transform", description="map to our schema", percentage=30),
    TaskStep(name="store", description="write to the database", percentage=30),
]
outcomes: Counter[str] = Counter()


class UpstreamError(RuntimeError):
    """The tenant's upstream API refused the request."""


def build_sync(tenant: str, rng: random.Random) -> Task[str]:
    task: Task[str]

    async def sync(batch: int) -> str:
        for step in SYNC_STEPS:
            task.notify_step(step.name)
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            if tenant == "initech" and step.name == "fetch" and rng.random() < 0.3:
                raise UpstreamError(f"{tenant}: upstream answered 503 for batch {batch}")
        return f"{tenant} batch {batch}: stored"

    task = Task(
        task_function=sync,
        name=f"{tenant}-sync",
        labels={"tenant": tenant, "kind": "sync"},
        steps=SYNC_STEPS,
        timeout=5.0,
    )
    return task


def build_report() -> Task[str]:
    async def report() -> str:
        await asyncio.sleep(0.2)
        return "report built"

    return Task(task_function=report, name="nightly-report", labels={"kind": "report"})


def build_manager(seed: int = 7) -> TaskManager:
    """The manager with its tasks, constraint groups and the report's schedule."""
    rng = random.Random(seed)
    manager = TaskManager()
    for tenant in TENANTS:
        manager.add_task(build_sync(tenant, rng))
    manager.add_and_schedule_task(build_report(), "*/5 * * * * *")

    def tenant_of(task: Task[Any, Any], _input: Any) -> str | None:
        return task.get_label("tenant")

    def api_calls(task: Task[Any, Any], _input: Any) -> str | None:
        return "upstream-api" if task.get_label("kind") == "sync" else None

    manager.add_constraint_group(
        TaskConstraintGroup(
            name="per-tenant", constraint_key_for_execution=tenant_of, max_concurrent=2
        )
    )
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="api-rate",
            constraint_key_for_execution=api_calls,
            rate_limit=RateLimit(max_per_window=5, window=1.0),
        )
    )
    return manager


def build_services() -> ServiceManager:
    services = ServiceManager()
    services.add_service(
        Service(
            name="database",
            start=lambda: "pool",
            health_check=lambda _pool: True,
            health_interval=1.0,
            labels={"kind": "storage"},
        )
    )
    return services


async def tenant_traffic(manager: TaskManager, tenant: str, rng: random.Random) -> None:
    """A tenant's stream of sync requests, a few a second."""
    pending: set[asyncio.Task[None]] = set()

    async def one(batch: int) -> None:
        try:
            await manager.trigger_task_by_name(f"{tenant}-sync", batch)
            outcomes["completed"] += 1
        except UpstreamError:
            outcomes["failed"] += 1

    batch = 0
    try:
        while True:
            batch += 1
            job = asyncio.create_task(one(batch))
            pending.add(job)
            job.add_done_callback(pending.discard)
            await asyncio.sleep(rng.uniform(0.2, 0.8))
    finally:
        for job in pending:
            job.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def main(seconds: float | None, host: str, port: int) -> None:
    manager = build_manager()
    services = build_services()
    rng = random.Random(11)
    async with services, manager:
        traffic = [asyncio.create_task(tenant_traffic(manager, t, rng)) for t in TENANTS]
        server = asyncio.create_task(
            serve_dashboard(manager, host=host, port=port, services=services, title="acme ops")
        )
        print(f"dashboard on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            # Until the time is up, or the server stops (uvicorn handles SIGINT/SIGTERM).
            await asyncio.wait([server], timeout=seconds)
        finally:
            for job in (*traffic, server):
                job.cancel()
            await asyncio.gather(*traffic, server, return_exceptions=True)
    total = outcomes["completed"] + outcomes["failed"]
    print(f"{total} syncs finished: {outcomes['completed']} stored, {outcomes['failed']} failed")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.seconds, args.host, args.port))
