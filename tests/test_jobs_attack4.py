"""Hostile checks of the SQLite store's busy path and the job worker's wake-ups: a write that
fails on a full disk, a full worker offered work, outcomes that end together, and every job
snapshot compared field by field with the memory store's (batches of outcomes of every kind,
forged, repeated and released)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from taskbuffer import Task, TaskManager
from taskbuffer.jobs import (
    Job,
    JobError,
    JobOutcome,
    JobRequest,
    JobStore,
    MemoryJobStore,
    SQLiteJobStore,
)

T0 = 1_700_000_000.25

# A busy cycle on a file that may not grow past what it holds (RLIMIT_FSIZE, in a process of
# its own): the write fails on the disk, as on a full one. Its result is large enough to spill
# the page cache during the UPDATE (SQLite then rolls the transaction back itself) or small
# enough to wait for the COMMIT.
_FULL_DISK = """
import asyncio, json, os, resource, signal, sys
from taskbuffer.jobs import JobOutcome, JobRequest, SQLiteJobStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG


async def main(path, size, now):
    async with SQLiteJobStore(path) as store:
        await store.enqueue_many([JobRequest(task_name="t", input=i) for i in range(4)], now=now)
        claims = await store.claim(worker_id="w", task_names=["t"], limit=2, now=now)
        result = b'"' + b"x" * size + b'"'
        outcomes = [
            JobOutcome(job_id=c.job.id, token=c.token, outcome="succeeded", result=result)
            for c in claims
        ]
        limit = max(os.path.getsize(path), os.path.getsize(path + "-wal")) + 3 * 4096
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            await store.finish_and_claim(
                outcomes, worker_id="w", task_names=["t"], limit=2, now=now + 1
            )
            error = None
        except Exception as exc:
            error = str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        statuses = sorted(job.status for job in await store.list_jobs())
        again, taken = await store.finish_and_claim(
            outcomes, worker_id="w", task_names=["t"], limit=2, now=now + 2
        )
        print(json.dumps({"error": error, "statuses": statuses, "again": again,
                          "taken": len(taken)}))


asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""


@pytest.mark.realtime
@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("size", [1_000, 5_000_000], ids=["at-commit", "in-the-statement"])
def test_a_busy_cycle_on_a_full_disk_raises_the_disks_error_and_changes_nothing(
    tmp_path: Path, size: int
) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_FULL_DISK), str(tmp_path / "j.db"), str(size),
         str(T0)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # SQLite's own error (the disk's), not that of a ROLLBACK of a transaction it had ended
    assert report["error"] is not None
    assert "rollback" not in report["error"], report["error"]
    assert "disk" in report["error"] or "full" in report["error"], report["error"]
    # nothing of the cycle was kept: its claims still run, no job was taken
    assert report["statuses"] == ["queued", "queued", "running", "running"]
    assert report == {**report, "again": [True, True], "taken": 2}


class _Counting(MemoryJobStore):
    """A memory store (it polls once an hour: a lost wake-up shows) that records the
    outcomes of each commit (its finish_and_claim goes through finish)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    async def finish(self, outcomes: Sequence[JobOutcome], *, now: float) -> list[bool]:
        self.batches.append([o.outcome for o in outcomes])
        return await super().finish(outcomes, now=now)


async def test_a_full_worker_starts_what_was_enqueued_or_registered_meanwhile_once_freed() -> None:
    store = _Counting()
    gates = {name: asyncio.Event() for name in "abcde"}
    running: set[str] = set()
    most = 0
    started: dict[str, float] = {}
    began = {name: asyncio.Event() for name in "abcde"}
    loop = asyncio.get_running_loop()

    async def work(name: str) -> str:
        nonlocal most
        running.add(name)
        most = max(most, len(running))
        started[name] = loop.time()
        began[name].set()
        try:
            await gates[name].wait()
        finally:
            running.discard(name)
        return name

    m = TaskManager(job_store=store, job_concurrency=2)
    m.add_task(Task(task_function=work, name="t"))
    async with asyncio.timeout(60):
        await m.start()
        first = [await m.enqueue("t", input=name) for name in "ab"]
        await began["a"].wait()
        await began["b"].wait()
        # full: a job enqueued now, and one of a task registered now, wait for a slot
        late = await m.enqueue("t", input="c")
        m.add_task(Task(task_function=work, name="u"))
        other = await m.enqueue("u", input="d")
        await asyncio.sleep(5)
        assert running == {"a", "b"}
        freed = loop.time()
        gates["a"].set()
        await m.wait_for_job(first[0].id)
        await began["c"].wait()
        assert started["c"] - freed < 0.01  # not a poll later
        gates["b"].set()
        await began["d"].wait()
        assert started["d"] - freed < 0.01
        gates["c"].set()
        gates["d"].set()
        assert (await m.wait_for_job(late.id)).status == "succeeded"
        assert (await m.wait_for_job(other.id)).status == "succeeded"
        # an enqueue into the idle worker starts at once
        idle = loop.time()
        gates["e"].set()
        job = await m.enqueue("t", input="e")
        await m.wait_for_job(job.id)
        assert started["e"] - idle < 0.01
        await m.stop()
    assert most == 2


async def test_outcomes_of_runs_that_end_together_share_one_commit() -> None:
    store = _Counting()

    async def work(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    m = TaskManager(job_store=store, job_concurrency=4)
    m.add_task(Task(task_function=work, name="t"))
    async with asyncio.timeout(60):
        jobs = [await m.enqueue("t", input=s) for s in (1.0, 1.0, 1.0, 3.0)]
        await m.start()
        for job in jobs:
            await m.wait_for_job(job.id)
        await m.stop()
    assert store.batches == [["succeeded"] * 3, ["succeeded"]], store.batches


async def _story(store: JobStore) -> dict[str, Any]:
    """Jobs with delays, keys, errors, a retry, released and forged outcomes, results of every
    size: what the store says of them at each step, ids made positional."""
    await store.open()
    try:
        requests = [
            JobRequest(
                task_name="t",
                input=[i, "x" * i],
                priority=i % 3,
                run_at=T0 - 5 + i if i % 2 else None,
                dedupe_key=f"d{i}" if i % 3 == 0 else None,
                schedule_key=f"s{i}" if i % 4 == 0 else None,
                max_attempts=2 + i % 2,
            )
            for i in range(9)
        ]
        jobs = await store.enqueue_many(requests, now=T0)
        ids = {job.id: n for n, job in enumerate(jobs)}
        claims = await store.claim(worker_id="w1", task_names=["t"], limit=7, now=T0 + 1)
        error = JobError(type="E", message="m", traceback="tb")
        outcomes = [
            store.succeeded_outcome(claims[0], None),
            store.succeeded_outcome(claims[1], ""),
            store.succeeded_outcome(claims[2], {"big": "y" * 200_000}),
            JobOutcome(
                job_id=claims[3].job.id, token=claims[3].token, outcome="failed", error=error
            ),
            JobOutcome(job_id=claims[4].job.id, token=claims[4].token, outcome="cancelled"),
            JobOutcome(  # another claim's seq under this one's token
                job_id=claims[5].job.id,
                token=claims[5].token[:-8] + claims[6].token[-8:],
                outcome="succeeded",
                result=b"1",
            ),
        ]
        applied, more = await store.finish_and_claim(
            outcomes, worker_id="w2", task_names=["t"], limit=1, now=T0 + 2
        )
        again = await store.finish(outcomes[:3], now=T0 + 3)  # finished twice
        released = await store.finish(
            [JobOutcome(job_id=c.job.id, token=c.token, outcome="released") for c in claims[5:]],
            now=T0 + 4,
        )
        retried = await store.retry(claims[3].job.id, now=T0 + 5)
        listed = await store.list_jobs(limit=100)
        got = [await store.get(job.id) for job in jobs]
        trails = [await store.attempts(job.id) for job in jobs]
    finally:
        await store.close()

    def plain(job: Job | None) -> dict[str, Any]:
        assert job is not None
        assert dataclasses.replace(job) == job
        assert pickle.loads(pickle.dumps(job)) == job
        assert repr(job) == repr(dataclasses.replace(job))
        copy = dataclasses.replace(job, input=repr(job.input), result=repr(job.result))
        assert hash(copy) == hash(dataclasses.replace(copy))
        return {**job.to_dict(), "id": ids[job.id]}

    return {
        "enqueued": [plain(job) for job in jobs],
        "claims": [plain(c.job) for c in claims],
        "applied": applied,
        "more": [plain(c.job) for c in more],
        "again": again,
        "released": released,
        "retried": plain(retried),
        "listed": [plain(job) for job in listed],
        "got": [plain(job) for job in got],
        "trails": [[{**a.to_dict(), "job_id": ids[a.job_id]} for a in t] for t in trails],
    }


@pytest.mark.realtime  # the SQLite store's calls are real I/O on its thread
async def test_every_field_of_every_job_snapshot_matches_the_memory_stores(
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(60):
        memory = await _story(MemoryJobStore())
        sqlite = await _story(SQLiteJobStore(tmp_path / "j.db"))
    assert memory["applied"] == [True] * 5 + [False]
    for key in memory:
        assert sqlite[key] == memory[key], key
