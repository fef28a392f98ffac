"""D1: the cost of a connected dashboard client, and what a stalled one holds.

The process serves the dashboard (``serve_dashboard`` on a loopback port) of a manager whose
``load`` task runs 500 times a second (1,000 events a second). W1 (sequential triggers of a
plain task) is timed in passes without and with one dashboard client connected, back to back
(``ROUNDS`` rounds, in this one process, alternating which goes first: the median of the
per-round ratios is what is judged). The client is a
separate process that reads ``/api/events`` with the standard library.

Then a client connects, reads the first frame and stops reading for ``stall`` seconds while
the events go on; ``stalled_bytes`` is the growth of the server's traced memory
(tracemalloc) over that time: an upper bound on what the server holds for that client.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from taskbuffer import Task, TaskManager
from taskbuffer.dashboard import serve_dashboard

from ..measure import Outcome, Stopwatch
from ..specs import Params
from .core import inc

__all__ = ("d1_taskbuffer",)

ROUNDS = 10
RUNS_PER_TICK = 5  # load runs every 10 ms: 500 runs, 1,000 events a second
LIMIT = 30.0
YIELD_EVERY = 50  # W1 lets the loop run the load and the server every this many triggers

# The client: read the event stream until killed, counting frames.
_CLIENT = """
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
conn.request("GET", "/api/events")
response = conn.getresponse()
assert response.status == 200, response.status
print("connected", flush=True)
while response.readline():
    pass
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _load(manager: TaskManager) -> None:
    """1,000 events a second: 500 runs of ``load``, 5 every 10 ms."""
    loop = asyncio.get_running_loop()
    tick = loop.time()
    while True:
        for _ in range(RUNS_PER_TICK):
            await manager.trigger_task_by_name("load", 1)
        tick += 0.01
        await asyncio.sleep(max(0.0, tick - loop.time()))


@asynccontextmanager
async def _dashboard(manager: TaskManager) -> AsyncIterator[int]:
    port = _free_port()
    server = asyncio.create_task(serve_dashboard(manager, port=port))
    try:
        async with asyncio.timeout(LIMIT):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    await writer.wait_closed()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        yield port
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


@asynccontextmanager
async def _client(port: int) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENT, str(port), stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(LIMIT):
            line = await process.stdout.readline()
        if line.strip() != b"connected":
            raise RuntimeError(f"the dashboard client did not connect: {line!r}")
        await asyncio.sleep(0.3)  # past its first snapshot
        yield
    finally:
        process.kill()
        await process.wait()


async def _w1_pass(n: int) -> float:
    task = Task(task_function=inc, name="inc")
    with Stopwatch() as watch:
        for i in range(n):
            await task.trigger(i)
            if not i % YIELD_EVERY:
                await asyncio.sleep(0)  # a trigger of a plain function never yields by itself
    return watch.us_per(n)


async def _stalled_growth(port: int, seconds: int) -> tuple[int, int]:
    """Connect, read the first frame, stop reading for ``seconds``: traced memory growth,
    and the bytes the client had received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received = await reader.readuntil(b"event: snapshot")
    received += await reader.readuntil(b"\n\n")
    transport = writer.transport
    transport.pause_reading()  # type: ignore[attr-defined]  # the client stops reading
    tracemalloc.start()
    try:
        await asyncio.sleep(1.0)  # the socket buffers fill
        before = tracemalloc.get_traced_memory()[0]
        await asyncio.sleep(seconds)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        writer.close()
    return after - before, len(received)


async def d1_taskbuffer(p: Params) -> Outcome:
    """D1: W1 with one dashboard client connected while 1,000 events a second flow, against
    W1 with none connected (paired passes in one process); then a stalled client's memory."""
    n = p["n"]
    out = Outcome()
    manager = TaskManager()
    manager.add_task(Task(task_function=lambda x: x, name="load"))
    without: list[float] = []
    with_client: list[float] = []
    async with _dashboard(manager) as port:
        load = asyncio.create_task(_load(manager))
        try:
            await asyncio.sleep(0.3)
            for round_ in range(ROUNDS):
                # Alternate which pass goes first, so that drift does not favour either.
                if round_ % 2:
                    without.append(await _w1_pass(n))
                async with _client(port):
                    with_client.append(await _w1_pass(n))
                if not round_ % 2:
                    without.append(await _w1_pass(n))
            runs_before = manager.get_task_by_name("load").run_count  # type: ignore[union-attr]
            growth, received = await _stalled_growth(port, p["stall"])
            runs = manager.get_task_by_name("load").run_count - runs_before  # type: ignore[union-attr]
        finally:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
    ratios = [w / wo for w, wo in zip(with_client, without, strict=True)]
    out.metrics["us_per_op"] = statistics.median(with_client)
    out.metrics["us_per_op_no_client"] = statistics.median(without)
    out.metrics["ratio"] = statistics.median(ratios)
    out.metrics["stalled_bytes"] = float(growth)
    out.info.update(n=n, rounds=ROUNDS, stall_s=p["stall"], stalled_client_read=received)
    out.info["events_during_stall"] = 2 * runs
    out.check("the stalled client had read its first snapshot", received > 0)
    out.check(
        "about 1,000 events a second flowed during the stall",
        2 * runs >= 800 * p["stall"],
        f"{2 * runs} events in {p['stall']} s",
    )
    return out
