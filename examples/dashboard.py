"""A live dashboard over a multi-tenant workload.

Three tenants sync their data through a three-step task (fetch, transform, store), at most two
runs per tenant at once and five API calls a second overall; a cron job builds a report every
five seconds; one tenant's upstream fails now and then; invoices are durable jobs in a SQLite
file (a temporary one), a few enqueued each second, some declined; a database service is
watched by a health check. Open the printed address in a browser while it runs.

Run it with ``python examples/dashboard.py`` (Ctrl-C stops it) or
``python examples/dashboard.py --seconds 30``; ``--port 0`` picks a free port.
Needs ``pip install 'taskbuffer[dashboard]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path
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
from taskbuffer.jobs import JobStore, SQLiteJobStore

TENANTS = ("acme", "globex", "initech")
SYNC_STEPS = [
    TaskStep(name="fetch", description="download the changes", percentage=40),
    TaskStep(name="transform", description="map to our schema", percentage=30),
    TaskStep(name="store", description="write to the database", percentage=30),
]
outcomes: Counter[str] = Counter()


class UpstreamError(RuntimeError):
    """The tenant's upstream API refused the request."""


class PaymentDeclined(RuntimeError):
    """The card of an invoice was declined."""


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


def build_invoice(rng: random.Random) -> Task[str]:
    async def invoice(order: dict[str, Any]) -> str:
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        if rng.random() < 0.25:
            raise PaymentDeclined(f"{order['tenant']}: card declined for invoice {order['n']}")
        return f"invoice {order['n']} paid"

    return Task(task_function=invoice, name="charge-invoice", labels={"kind": "billing"})


def build_manager(seed: int = 7, *, job_store: JobStore | None = None) -> TaskManager:
    """The manager with its tasks, constraint groups and the report's schedule; with a job
    store, the invoices are durable jobs (and so are the report's cron ticks)."""
    rng = random.Random(seed)
    manager = TaskManager(job_store=job_store, job_concurrency=4)
    for tenant in TENANTS:
        manager.add_task(build_sync(tenant, rng))
    manager.add_task(build_invoice(rng))
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


async def invoice_traffic(manager: TaskManager, rng: random.Random) -> None:
    """A few invoices a second, enqueued as durable jobs."""
    n = 0
    while True:
        n += 1
        tenant = rng.choice(TENANTS)
        await manager.enqueue("charge-invoice", {"tenant": tenant, "n": n})
        await asyncio.sleep(rng.uniform(0.2, 0.5))


class AddressLog(logging.Handler):
    """Catches the address ``serve_dashboard`` logs (with ``--port 0``, the port it got)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.address = asyncio.get_running_loop().create_future()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("dashboard on ") and not self.address.done():
            self.address.set_result(message.removeprefix("dashboard on "))


async def serve(manager: TaskManager, services: ServiceManager, host: str, port: int) -> None:
    """Serve the dashboard until cancelled; print its address once it listens."""
    logger = logging.getLogger("taskbuffer")
    address = AddressLog()
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    logger.addHandler(address)
    logger.addHandler(warnings)
    logger.setLevel(logging.INFO)
    server = asyncio.create_task(
        serve_dashboard(manager, host=host, port=port, services=services, title="acme ops")
    )
    try:
        await asyncio.wait([server, address.address], return_when=asyncio.FIRST_COMPLETED)
        if address.address.done():
            print(f"dashboard on {address.address.result()} (Ctrl-C to stop)", flush=True)
        await server
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        for handler in (address, warnings):
            logger.removeHandler(handler)


async def main(seconds: float | None, host: str, port: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        # A store you pass to a manager is yours to close: async with opens and closes it.
        async with SQLiteJobStore(Path(directory) / "jobs.db") as store:
            manager = build_manager(job_store=store)
            services = build_services()
            rng = random.Random(11)
            async with services, manager:
                traffic = [asyncio.create_task(tenant_traffic(manager, t, rng)) for t in TENANTS]
                traffic.append(asyncio.create_task(invoice_traffic(manager, rng)))
                server = asyncio.create_task(serve(manager, services, host, port))
                try:
                    # Until the time is up, or the server stops (uvicorn handles SIGINT/SIGTERM).
                    await asyncio.wait([server], timeout=seconds)
                finally:
                    for job in (*traffic, server):
                        job.cancel()
                    await asyncio.gather(*traffic, server, return_exceptions=True)
                jobs = Counter(job.status for job in await manager.list_jobs(limit=10_000))
    total = outcomes["completed"] + outcomes["failed"]
    print(f"{total} syncs finished: {outcomes['completed']} stored, {outcomes['failed']} failed")
    print(
        f"{jobs.total()} jobs stored: {jobs['succeeded']} succeeded, {jobs['failed']} failed, "
        f"{jobs['queued'] + jobs['running']} still to run"
    )


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
