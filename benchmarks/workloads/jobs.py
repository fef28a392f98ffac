"""J1-J3: durable jobs on SQLite and PostgreSQL: throughput, pick-up latency, enqueue rate.

Each measuring process runs both engines in turn: SQLite on a file in a temporary directory,
PostgreSQL on a durable server of its own (fsync and synchronous commits on; see
:mod:`benchmarks.pg`). Where PostgreSQL cannot run (not installed), its figures are missing
and the outcome says why. The baselines are in :mod:`benchmarks.workloads.jobs_bare`.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from taskbuffer import Task, TaskManager
from taskbuffer.jobs import JobRequest, JobStore, job_store_from_url

from ..measure import Outcome, Stopwatch
from ..pg import ROOT, postgres_dsn, postgres_missing
from ..specs import Params
from .jobs_bare import bare_pg_enqueue, bare_pg_work, bare_sqlite_enqueue, bare_sqlite_work

__all__ = ("j1_baseline", "j1_taskbuffer", "j2_taskbuffer", "j3_baseline", "j3_taskbuffer")

ENGINES = ("sqlite", "postgres")
CHUNK = 1000  # jobs per enqueue_many call
TIMEOUT = 600.0  # seconds any one phase may take before the workload fails
WARM_JOBS = 5  # J2: jobs run (unmeasured) before the measured ones


async def noop(_input: object) -> None:
    """The trivial job."""


@contextlib.asynccontextmanager
async def _url(engine: str) -> AsyncIterator[str]:
    """A store URL on a fresh database of ``engine`` (a file, or a server of its own)."""
    if engine == "sqlite":
        with tempfile.TemporaryDirectory(prefix="taskbuffer-bench-") as directory:
            yield f"sqlite:///{directory}/jobs.db"
    else:
        with postgres_dsn() as dsn:
            yield dsn


async def _each_engine(out: Outcome, measure: Callable[[str, str], Awaitable[None]]) -> Outcome:
    """Run ``measure(engine, url)`` for each engine that can run here."""
    for engine in ENGINES:
        missing = postgres_missing() if engine == "postgres" else None
        if missing is not None:
            out.info[f"{engine}_missing"] = missing
            continue
        async with _url(engine) as url:
            await measure(engine, url)
    return out


async def _enqueue_all(store: JobStore, n: int, task: str = "noop") -> None:
    for first in range(0, n, CHUNK):
        inputs = range(first, min(n, first + CHUNK))
        requests = [JobRequest(task_name=task, input=i) for i in inputs]
        await store.enqueue_many(requests, now=time.time())


async def _count(store: JobStore, status: str, n: int) -> int:
    return len(await store.list_jobs(status=status, limit=n + 1))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- J1 jobs_throughput


async def j1_taskbuffer(p: Params) -> Outcome:
    """J1: ``n`` queued trivial jobs worked by one manager (default ``job_concurrency``), jobs/s
    from its start until its stop has committed the last outcome."""
    n = p["n"]

    async def measure(engine: str, url: str) -> None:
        store = job_store_from_url(url)
        try:
            await _enqueue_all(store, n)
            runs = 0
            done = asyncio.Event()

            async def count(_input: object) -> None:
                nonlocal runs
                runs += 1
                if runs == n:
                    done.set()

            manager = TaskManager(job_store=store)
            manager.add_task(Task(task_function=count, name="noop"))
            with Stopwatch() as watch:
                await manager.start()
                async with asyncio.timeout(TIMEOUT):
                    await done.wait()
                await manager.stop()
            out.metrics[f"{engine}_jobs_per_s"] = n / watch.elapsed
            out.check_equal(f"{engine}: runs", runs, n)
            out.check_equal(f"{engine}: jobs succeeded", await _count(store, "succeeded", n), n)
        finally:
            await store.close()

    out = Outcome()
    out.info["n"] = n
    return await _each_engine(out, measure)


async def j1_baseline(p: Params) -> Outcome:
    """J1 baseline: the bare claim-10-and-complete SQL loop on each engine."""
    n = p["n"]

    async def measure(engine: str, url: str) -> None:
        if engine == "sqlite":
            path = url.removeprefix("sqlite:///")
            elapsed, done = await asyncio.to_thread(bare_sqlite_work, path, n, _trivial)
        else:
            elapsed, done = await bare_pg_work(url, n, _trivial)
        out.metrics[f"{engine}_jobs_per_s"] = n / elapsed
        out.check_equal(f"{engine}: jobs completed", done, n)

    out = Outcome()
    out.info["n"] = n
    return await _each_engine(out, measure)


def _trivial(data: object) -> None:
    return None


# --------------------------------------------------------------------------- J2 job_pickup


async def j2_taskbuffer(p: Params) -> Outcome:
    """J2: an idle worker in another process; ms from each enqueue's commit (its return) to its
    run's start, ``jobs`` jobs ``gap_ms`` apart: median and p99 per engine."""
    jobs, gap = p["jobs"], p["gap_ms"] / 1000

    async def measure(engine: str, url: str) -> None:
        store = job_store_from_url(url)
        enqueuer = TaskManager(job_store=store, job_concurrency=0)
        enqueuer.add_task(Task(task_function=noop, name="stamp"))
        worker = await _start_worker(url)
        try:
            await _latencies(enqueuer, WARM_JOBS, gap)  # connections, caches: not measured
            latencies = await _latencies(enqueuer, jobs, gap)
        finally:
            assert worker.stdin is not None
            worker.stdin.close()
            async with asyncio.timeout(60):
                await worker.wait()
            await store.close()
        ordered = sorted(latencies)
        out.metrics[f"{engine}_median_ms"] = statistics.median(ordered)
        out.metrics[f"{engine}_p99_ms"] = ordered[max(0, round(len(ordered) * 0.99) - 1)]
        out.info[f"{engine}_max_ms"] = ordered[-1]
        out.check_equal(f"{engine}: jobs run", len(latencies), jobs)

    out = Outcome()
    out.info.update(jobs=jobs, gap_ms=p["gap_ms"])
    return await _each_engine(out, measure)


async def _start_worker(url: str) -> asyncio.subprocess.Process:
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.workloads.jobs_worker",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert worker.stdout is not None
    async with asyncio.timeout(60):
        line = await worker.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"the worker process did not start (said {line!r})")
    return worker


async def _latencies(enqueuer: TaskManager, jobs: int, gap: float) -> list[float]:
    committed: list[tuple[str, float]] = []
    for i in range(jobs):
        job = await enqueuer.enqueue("stamp", i)
        committed.append((job.id, time.time()))
        await asyncio.sleep(gap)
    latencies = []
    for job_id, at in committed:
        started = await enqueuer.job_result(job_id, timeout=60)
        latencies.append((started - at) * 1000)
    return latencies


# ------------------------------------------------------------------------ J3 enqueue_rate


async def j3_taskbuffer(p: Params) -> Outcome:
    """J3: ``single`` awaited ``manager.enqueue`` one by one, then ``batch`` jobs through
    ``store.enqueue_many`` in chunks of 1,000; jobs/s of each."""
    single, batch = p["single"], p["batch"]

    async def measure(engine: str, url: str) -> None:
        store = job_store_from_url(url)
        try:
            manager = TaskManager(job_store=store, job_concurrency=0)
            manager.add_task(Task(task_function=noop, name="noop"))
            await store.open()
            with Stopwatch() as one:
                for i in range(single):
                    await manager.enqueue("noop", i)
            with Stopwatch() as many:
                await _enqueue_all(store, batch)
            out.metrics[f"{engine}_single_per_s"] = single / one.elapsed
            out.metrics[f"{engine}_batch_per_s"] = batch / many.elapsed
            queued = await _count(store, "queued", single + batch)
            out.check_equal(f"{engine}: jobs stored", queued, single + batch)
        finally:
            await store.close()

    out = Outcome()
    out.info.update(single=single, batch=batch)
    return await _each_engine(out, measure)


async def j3_baseline(p: Params) -> Outcome:
    """J3 baseline: bare INSERTs, one per commit, then 1,000 rows per statement."""
    single, batch = p["single"], p["batch"]

    async def measure(engine: str, url: str) -> None:
        if engine == "sqlite":
            path = str(Path(url.removeprefix("sqlite:///")))
            one, many, count = await asyncio.to_thread(bare_sqlite_enqueue, path, single, batch)
        else:
            one, many, count = await bare_pg_enqueue(url, single, batch)
        out.metrics[f"{engine}_single_per_s"] = single / one
        out.metrics[f"{engine}_batch_per_s"] = batch / many
        out.check_equal(f"{engine}: rows stored", count, single + batch)

    out = Outcome()
    out.info.update(single=single, batch=batch)
    return await _each_engine(out, measure)
