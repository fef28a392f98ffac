"""Hostile checks of the SQLite store's busy path and the job worker's wake-ups: a write that
fails on a full disk, a busy cycle cancelled or fed an unreadable row while its commit runs,
batches of outcomes of every kind, and the jobs of claims compared field by field with the
memory store's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
