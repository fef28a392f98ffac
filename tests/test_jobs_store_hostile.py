"""The shared job store suite, as a hostile caller uses it: forged tokens, stale cancel
requests, attempt trails across every path. Every store (memory, SQLite, PostgreSQL) gives
the same answers; numbers in the names refer to the contract's semantics of durable jobs."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from _jobs_support import Backend, backend, store
from test_jobs_store import T0, claim, done, request

from taskbuffer.jobs import JobError, JobOutcome, JobRequest, JobStore, SQLiteJobStore

__all__ = ("backend", "store")  # fixtures used by the tests below


@pytest.mark.parametrize(
    "forge",
    [
        lambda token: token[:24] + "f" * 40,  # names a row past any integer the engine keeps
        lambda token: token[:24] + "-" + token[24:],
        lambda token: token[:24] + " " + token[24:] + " ",
        lambda token: token[:24] + "0x" + token[24:],
        lambda token: token[:24],
        lambda token: "",
    ],
    ids=["huge", "negative", "spaces", "0x", "prefix-only", "empty"],
)
async def test_3_a_forged_token_is_fenced_out_and_refused_as_any_stale_one(
    store: JobStore, forge: object
) -> None:
    job = await store.enqueue(request(), now=T0)
    [c] = await claim(store)
    forged = forge(c.token)  # type: ignore[operator]
    assert forged != c.token
    assert await store.finish(
        [JobOutcome(job_id=job.id, token=forged, outcome="succeeded")], now=T0 + 1
    ) == [False]
    assert await store.finish(
        [JobOutcome(job_id=job.id, token=forged, outcome="released")], now=T0 + 1
    ) == [False]
    report = await store.renew([forged], now=T0 + 1)
    assert report.lost == {forged} and report.cancel_requested == frozenset()
    # The claim itself is untouched: its own token still ends it.
    assert await store.finish([done(c)], now=T0 + 2) == [True]
    assert [t.outcome for t in await store.attempts(job.id)] == ["succeeded"]


async def test_5_sqlite_a_cancel_left_pending_on_a_queued_job_ends_when_it_is_cancelled(
    tmp_path: Path,
) -> None:
    # A file written by the earlier version may hold a queued job with a cancel still asked
    # (its release kept it). Cancelling the queued job fulfils it: re-queued by retry_job,
    # the job's next run must not be cancelled by that old request.
    store = SQLiteJobStore(tmp_path / "jobs.db")
    job = await store.enqueue(JobRequest(task_name="work"), now=T0)
    await store.close()
    with contextlib.closing(sqlite3.connect(store.path)) as connection, connection:
        connection.execute("UPDATE taskbuffer_jobs SET cancel_requested = 1")
    try:
        assert await store.cancel(job.id, now=T0 + 3)
        await store.retry(job.id, now=T0 + 4)
        [again] = await claim(store, now=T0 + 5, worker="w2")
        report = await store.renew([again.token], now=T0 + 6)
        assert report.lost == frozenset() and report.cancel_requested == frozenset()
    finally:
        await store.close()


async def test_every_path_of_an_attempt_leaves_the_same_trail_on_every_store(
    store: JobStore,
) -> None:
    """Lost, released, failed, retried twice, cancelled while queued and while running, and
    a cancelled job whose worker died: one trail, numbered in order, finished where ended."""
    error = JobError(type="E", message="m", traceback="")
    job = await store.enqueue(request(max_attempts=5), now=T0)
    await claim(store, now=T0, worker="w1")  # its lease runs out at T0 + 30
    [c] = await claim(store, now=T0 + 31, worker="w2")
    assert await store.finish([done(c, "released")], now=T0 + 32) == [True]
    [c] = await claim(store, now=T0 + 33, worker="w3")
    assert await store.finish([done(c, "failed", error=error)], now=T0 + 34) == [True]
    await store.retry(job.id, now=T0 + 35)
    [c] = await claim(store, now=T0 + 36, worker="w4")
    assert await store.finish([done(c, "failed", error=error)], now=T0 + 37) == [True]
    # A finished claim's token: renewing or ending it again changes nothing.
    assert (await store.renew([c.token], now=T0 + 38)).lost == {c.token}
    assert await store.finish([done(c)], now=T0 + 38) == [False]
    await store.retry(job.id, now=T0 + 39)
    [c] = await claim(store, now=T0 + 40, worker="w5")
    assert await store.cancel(job.id, now=T0 + 41)
    assert (await store.renew([c.token], now=T0 + 42)).cancel_requested == {c.token}
    assert await claim(store, now=T0 + 72, worker="w6") == []  # w5 died: lease over
    await store.retry(job.id, now=T0 + 73)
    assert await store.cancel(job.id, now=T0 + 74)  # while queued: no attempt
    await store.retry(job.id, now=T0 + 75)
    [c] = await claim(store, now=T0 + 76, worker="w7")
    assert await store.cancel(job.id, now=T0 + 77)
    assert await store.finish([done(c, "cancelled")], now=T0 + 78) == [True]
    trail = [
        (t.attempt, t.worker_id, t.outcome, t.started_at.timestamp() - T0)
        + (None if t.finished_at is None else t.finished_at.timestamp() - T0,)
        for t in await store.attempts(job.id)
    ]
    assert trail == [
        (1, "w1", "lost", 0, 31),  # ended when a claim found the lease over
        (2, "w2", "released", 31, 32),
        (3, "w3", "failed", 33, 34),
        (4, "w4", "failed", 36, 37),
        (5, "w5", "lost", 40, 72),
        (6, "w7", "cancelled", 76, 78),
    ]
    ended = await store.get(job.id)
    assert ended is not None and ended.status == "cancelled" and ended.attempts == 1
    assert ended.worker_id == "w7" and ended.error is None


async def test_5_a_running_job_cancelled_then_given_back_ends_cancelled_and_never_runs_again(
    store: JobStore,
) -> None:
    # cancel_job asked while the job ran; its worker stopped (stop() at its timeout) and gave
    # the claim back before a renewal told it. The job must not go back to the queue for
    # another worker to start it again: it ends cancelled at once, its attempt released.
    job = await store.enqueue(JobRequest(task_name="work"), now=T0)
    [c] = await claim(store)
    assert await store.cancel(job.id, now=T0 + 1)
    assert await store.finish([done(c, "released")], now=T0 + 2) == [True]
    ended = await store.get(job.id)
    assert ended is not None and ended.status == "cancelled" and ended.attempts == 0
    assert ended.finished_at is not None and ended.finished_at.timestamp() == T0 + 2
    assert await claim(store, now=T0 + 3, worker="w2") == []
    assert [(t.worker_id, t.outcome) for t in await store.attempts(job.id)] == [("w1", "released")]
    assert await store.cancel(job.id, now=T0 + 4) is False
    again = await store.retry(job.id, now=T0 + 5)
    assert again.status == "queued"
    [c2] = await claim(store, now=T0 + 6, worker="w3")
    assert (await store.renew([c2.token], now=T0 + 7)).cancel_requested == frozenset()


async def test_3_a_token_of_another_database_is_fenced_out(backend: Backend) -> None:
    # Two databases whose first jobs sit at the same place: a claim's token on one names
    # nothing on the other, whatever job id goes with it.
    first, second = backend.make(), backend.make()
    await first.open()
    await second.open()
    try:
        a = await first.enqueue(JobRequest(task_name="work"), now=T0)
        b = await second.enqueue(JobRequest(task_name="work"), now=T0)
        [ca] = await claim(first)
        [cb] = await claim(second)
        for job_id in (a.id, b.id):
            crossed = JobOutcome(job_id=job_id, token=ca.token, outcome="succeeded")
            assert await second.finish([crossed], now=T0 + 1) == [False]
        assert (await second.renew([ca.token], now=T0 + 1)).lost == {ca.token}
        assert await second.finish([done(cb)], now=T0 + 2) == [True]
        assert await first.finish([done(ca)], now=T0 + 2) == [True]
    finally:
        await first.close()
        await second.close()
