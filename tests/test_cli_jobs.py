"""The ``taskbuffer worker`` and ``taskbuffer jobs`` command lines.

The worker runs in real subprocesses (signals are what it is about); ``jobs`` runs in-process
through :func:`taskbuffer._cli.main`, on a SQLite store filled through the store API.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _crash_support import ROOT, TESTS, Workers, wait_until

from taskbuffer._cli import main
from taskbuffer.jobs import Job, JobRequest, SQLiteJobStore, job_store_from_url

pytestmark = [pytest.mark.realtime, pytest.mark.looptime(False)]


async def _enqueue(url: str, *items: dict[str, int], lease: float = 2.0) -> list[Job]:
    store = job_store_from_url(url, lease=lease)
    await store.open()
    try:
        requests = [JobRequest(task_name="work", input=item) for item in items]
        return await store.enqueue_many(requests, now=time.time())
    finally:
        await store.close()


async def _job(url: str, job_id: str) -> Job:
    store = job_store_from_url(url)
    await store.open()
    try:
        job = await store.get(job_id)
        assert job is not None
        return job
    finally:
        await store.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    made = Workers(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}", lease=2.0, concurrency=2)
    yield made
    made.close()


@pytest.mark.timeout(60)
async def test_sigterm_stops_the_worker_after_its_runs_in_flight(workers: Workers) -> None:
    (job,) = await _enqueue(workers.store_url, {"i": 0, "ms": 1500})
    workers.start("w1")
    await wait_until(lambda: workers.run_counts()[0] == 1, within=30, what="the run to start")
    workers.signal("w1", signal.SIGTERM)
    assert workers.processes["w1"].wait(timeout=30) == 0
    log = workers.log("w1")
    assert "SIGTERM: stopping after the runs in flight" in log
    assert "stopping at once" not in log
    done = await _job(workers.store_url, job.id)
    assert (done.status, done.result, done.attempts) == ("succeeded", 0, 1)


@pytest.mark.timeout(60)
async def test_a_second_signal_stops_at_once_and_puts_the_job_back(workers: Workers) -> None:
    (job,) = await _enqueue(workers.store_url, {"i": 0, "ms": 600_000})
    workers.start("w1")
    await wait_until(lambda: workers.run_counts()[0] == 1, within=30, what="the run to start")
    workers.signal("w1", signal.SIGINT)
    await wait_until(
        lambda: "stopping after the runs in flight" in workers.log("w1"),
        within=10,
        what="the graceful stop to begin",
    )
    asked = time.monotonic()
    workers.signal("w1", signal.SIGTERM)
    assert workers.processes["w1"].wait(timeout=10) == 0
    assert time.monotonic() - asked < 5  # not the run's ten minutes
    assert "SIGTERM: stopping at once" in workers.log("w1")
    back = await _job(workers.store_url, job.id)
    assert (back.status, back.attempts) == ("queued", 0)
    store = SQLiteJobStore(Path(workers.store_url.removeprefix("sqlite:///")))
    await store.open()
    try:
        assert [a.outcome for a in await store.attempts(job.id)] == ["released"]
    finally:
        await store.close()


@pytest.mark.timeout(60)
async def test_store_option_gives_a_manager_without_one_its_store(workers: Workers) -> None:
    (job,) = await _enqueue(workers.store_url, {"i": 7, "ms": 10})
    workers.target = "_crash_app:build_without_store"
    workers.start("w1", "--store", workers.store_url)
    await wait_until(lambda: workers.run_counts()[7] == 1, within=30, what="the run")
    assert await workers.stop_all() == {"w1": 0}
    assert (await _job(workers.store_url, job.id)).status == "succeeded"


def test_worker_without_a_store_says_how_to_give_one(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskbuffer", "worker", "_crash_app:build_without_store"],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{TESTS}:{ROOT}", "CRASH_WORKER": "w", "CRASH_RUNS": str(tmp_path)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "has no job store: pass --store URL" in done.stderr.decode()


def test_worker_rejects_a_concurrency_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", "x:y", "--concurrency", "0"])
    assert exit_info.value.code == 2
    assert "--concurrency: must be at least 1, not 0" in capsys.readouterr().err


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jobs_list_show_cancel_retry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    first, second = asyncio.run(_enqueue(url, {"i": 1, "ms": 5}, {"i": 2, "ms": 5}))

    code, out, _ = _cli(capsys, "jobs", "list", "--store", url)
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["ID", "STATUS", "TASK"]
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [
        [second.id, "queued", "work"],
        [first.id, "queued", "work"],
    ]

    code, out, _ = _cli(capsys, "jobs", "cancel", first.id, "--store", url)
    assert (code, out) == (0, f"job {first.id}: cancel requested (status now cancelled)\n")
    code, _, err = _cli(capsys, "jobs", "cancel", first.id, "--store", url)
    assert (code, err) == (1, f"taskbuffer jobs: job {first.id} has already finished (cancelled)\n")

    code, out, _ = _cli(capsys, "jobs", "list", "--store", url, "--status", "cancelled", "--json")
    assert [job["id"] for job in json.loads(out)] == [first.id]

    code, out, _ = _cli(capsys, "jobs", "show", first.id, "--store", url)
    assert code == 0
    assert "status:       cancelled" in out
    assert "input:        {'i': 1, 'ms': 5}" in out

    code, out, _ = _cli(capsys, "jobs", "retry", first.id, "--store", url, "--json")
    assert (code, json.loads(out)["status"]) == (0, "queued")
    code, _, err = _cli(capsys, "jobs", "retry", second.id, "--store", url)
    assert code == 1
    assert "queued" in err

    for action in ("show", "cancel", "retry"):
        code, _, err = _cli(capsys, "jobs", action, "nope", "--store", url)
        assert (code, err) == (1, "taskbuffer jobs: no job with id 'nope'\n")


def test_jobs_show_prints_the_audit_trail_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"

    async def claimed_and_failed() -> str:
        from taskbuffer.jobs import JobError, JobOutcome

        store = job_store_from_url(url)
        await store.open()
        try:
            job = await store.enqueue(JobRequest(task_name="work", input=None), now=time.time())
            (claim,) = await store.claim(
                worker_id="w-1", task_names=["work"], limit=1, now=time.time()
            )
            error = JobError(type="ValueError", message="bad")
            outcome = JobOutcome(job_id=job.id, token=claim.token, outcome="failed", error=error)
            await store.finish([outcome], now=time.time())
            return job.id
        finally:
            await store.close()

    job_id = asyncio.run(claimed_and_failed())
    code, out, _ = _cli(capsys, "jobs", "show", job_id, "--store", url, "--json")
    shown = json.loads(out)
    assert (code, shown["status"], shown["error"]["message"]) == (0, "failed", "bad")
    assert [(a["worker_id"], a["outcome"]) for a in shown["attempts"]] == [("w-1", "failed")]
    code, out, _ = _cli(capsys, "jobs", "show", job_id, "--store", url)
    assert "error:        ValueError: bad" in out
    assert "  #1 failed    w-1" in out


def test_jobs_rejects_an_unknown_store_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["jobs", "list", "--store", "mysql://x"])
    assert "has an unknown scheme" in str(exit_info.value.code)
