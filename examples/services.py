"""Services: a database pool and a queue consumer that needs it, watched and restarted.

The pool's connections drop after a few health checks; the ``ServiceManager`` sees the checks
fail, restarts the pool (stopping the consumer first and starting it again after), and the
tasks that need the consumer wait through the restart instead of failing.

Run it with ``python examples/services.py``; it finishes in about a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from taskbuffer import (
    Service,
    ServiceEvent,
    ServiceManager,
    ServiceUnavailableError,
    Task,
    TaskManager,
    service,
)


class FakePool:
    """A database pool; the first one's connections drop after three good pings."""

    opened = 0

    def __init__(self) -> None:
        FakePool.opened += 1
        self.number = FakePool.opened
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        await asyncio.sleep(0.001)
        return self.number > 1 or self.pings <= 3

    async def fetch(self, count: int) -> list[str]:
        await asyncio.sleep(0.01)
        return [f"order-{i}" for i in range(count)]


class Consumer:
    """Reads messages with the pool it was given."""

    def __init__(self, pool: FakePool) -> None:
        self.pool = pool

    async def next_batch(self) -> list[str]:
        return await self.pool.fetch(3)

    async def close(self) -> None:
        await asyncio.sleep(0.01)


# The pool as one async generator: open, yield the instance, close. The health check runs
# every 0.1 s; two failures in a row make it unhealthy, and it is restarted 0.2 s later.
@service(
    health_check=FakePool.ping,
    health_interval=0.1,
    unhealthy_threshold=2,
    restart_delay=0.2,
    labels={"tier": "data"},
)
async def database() -> AsyncIterator[FakePool]:
    pool = FakePool()
    await asyncio.sleep(0.05)  # connecting
    yield pool
    await asyncio.sleep(0.01)  # closing


async def start_consumer() -> Consumer:
    pool = database.instance  # running: the consumer starts only after the pool
    assert pool is not None
    return Consumer(pool)


# The same with separate callbacks: start returns the instance, stop receives it.
consumer = Service(
    name="consumer", start=start_consumer, stop=Consumer.close, depends_on=["database"]
)


async def ingest() -> str:
    instance = consumer.instance
    assert instance is not None
    batch = await instance.next_batch()
    return f"ingest: {len(batch)} messages via pool #{instance.pool.number}"


def show(event: ServiceEvent) -> None:
    print(f"  {event.service.name:<9} {event.type:<11}{event.error or ''}".rstrip())


async def main() -> None:
    services = ServiceManager(start_timeout=5, stop_timeout=2)
    services.add_service(consumer)  # any order: start() sorts them by dependency
    services.add_service(database)
    services.service_subject.subscribe(show)

    tasks = TaskManager()
    # Tasks labelled {"requires": "<service>"} run only while that service is running.
    tasks.add_constraint_group(services.constraint_group())
    tasks.add_task(Task(name="ingest", task_function=ingest, labels={"requires": "consumer"}))

    async with tasks:
        async with services:
            print(await tasks.trigger_task_by_name("ingest"))
            await services.wait_for_state("database", "restarting", timeout=5)
            # The consumer is being stopped for the restart: this trigger waits for it.
            print(await tasks.trigger_task_by_name("ingest"))
            print(f"database restarts: {database.restart_count}; {services.statistics()}")
        try:
            await tasks.trigger_task_by_name("ingest")
        except ServiceUnavailableError as error:
            print(f"after stop: {error}")


if __name__ == "__main__":
    asyncio.run(main())
