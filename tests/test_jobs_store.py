"""The shared job store suite: every store (memory, SQLite, PostgreSQL) passes these.

Store calls take their instants (``now``) from the test, so these tests state exact times
without any clock. The numbers in the test names refer to the contract's semantics of durable
jobs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from _jobs_support import Backend, Picky, backend, store

from taskbuffer.jobs import (
    Claim,
    JobError,
    JobOutcome,
    JobRequest,
    JobSchemaError,
    JobStore,
)

__all__ = ("backend", "store")  # fixtures used by the tests below

T0 = 1_800_000_000.0  # an epoch instant every test starts from


def request(task: str = "work", **fields: Any) -> JobRequest:
    return JobRequest(task_name=task, **fields)


async def claim(
    store: JobStore, *names: str, limit: int = 10, now: float = T0, worker: str = "w1"
) -> list[Claim]:
    return await store.claim(worker_id=worker, task_names=names or ("work",), limit=limit, now=now)


def done(c: Claim, outcome: str = "succeeded", **fields: Any) -> JobOutcome:
    return JobOutcome(job_id=c.job.id, token=c.token, outcome=outcome, **fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------- enqueue and look-ups


async def test_an_enqueued_job_is_queued_due_at_its_enqueue_instant(store: JobStore) -> None:
    job = await store.enqueue(request(input={"n": [1, 2]}, priority=3), now=T0)
    assert job.status == "queued" and job.attempts == 0 and job.max_attempts == 3
    assert job.run_at.timestamp() == T0 == job.created_at.timestamp()
    assert job.input == {"n": [1, 2]} and job.priority == 3
    assert await store.get(job.id) == job
    assert await store.get("nope") is None
    assert await store.attempts(job.id) == []


async def test_list_jobs_is_newest_first_filtered_and_paged(store: JobStore) -> None:
    a = await store.enqueue(request("a"), now=T0)
    b = await store.enqueue(request("b"), now=T0)
    c = await store.enqueue(request("a"), now=T0 + 1)
    assert [j.id for j in await store.list_jobs()] == [c.id, b.id, a.id]
    assert [j.id for j in await store.list_jobs(task_name="a")] == [c.id, a.id]
    assert [j.id for j in await store.list_jobs(limit=1, offset=1)] == [b.id]
    [claimed] = await claim(store, "b")
    assert [j.id for j in await store.list_jobs(status="running")] == [b.id]


# ------------------------------------------------------------------- 1: serialization


async def test_1_an_input_the_serializer_refuses_raises_type_error_naming_type_and_place(
    store: JobStore,
) -> None:
    with pytest.raises(TypeError, match=r"set value at input\['a'\]\[1\]"):
        await store.enqueue_many([request(input={"a": [1, {3}]})], now=T0)
    with pytest.raises(TypeError, match=r"float value at input\[0\]"):
        await store.enqueue(request(input=[math.nan]), now=T0)
    assert await store.list_jobs() == []


async def test_1_a_result_the_serializer_refuses_fails_the_job_with_that_error(
    store: JobStore,
) -> None:
    await store.enqueue(request(), now=T0)
    [c] = await claim(store)
    outcome = store.succeeded_outcome(c, object())
    assert outcome.outcome == "failed"
    assert await store.finish([outcome], now=T0 + 1) == [True]
    job = await store.get(c.job.id)
    assert job is not None and job.status == "failed" and job.error is not None
    assert job.error.type == "TypeError" and "object value at result" in job.error.message


async def test_1_a_custom_serializer_stores_inputs_and_results(backend: Backend) -> None:
    class Reversing:
        def dumps(self, obj: Any) -> bytes:
            return repr(obj).encode()[::-1]

        def loads(self, data: bytes) -> Any:
            return eval(data[::-1].decode())  # test-only: values are literals

    custom = backend.make(serializer=Reversing())
    await custom.open()
    try:
        await custom.enqueue(request(input=(1, "x")), now=T0)
        [c] = await claim(custom)
        assert c.job.input == (1, "x")
        await custom.finish([custom.succeeded_outcome(c, {"ok": (2,)})], now=T0)
        job = await custom.get(c.job.id)
        assert job is not None and job.result == {"ok": (2,)}
    finally:
        await custom.close()


async def test_1_a_claimed_job_that_cannot_be_read_fails_and_the_claim_takes_the_others(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    serializer = Picky()
    picky = backend.make(serializer=serializer)
    await picky.open()
    try:
        first, bad, last = [
            await picky.enqueue(request(input=i), now=T0) for i in (1, "unreadable", 3)
        ]
        worse = await picky.enqueue(request(input="unreadable"), now=T0 + 1)
        after = await picky.enqueue(request(input=4), now=T0 + 1)
        serializer.picky = True
        with caplog.at_level(logging.ERROR, logger="taskbuffer"):
            claims = await claim(picky, limit=3)
        assert [(c.job.id, c.job.input) for c in claims] == [(first.id, 1), (last.id, 3)]
        [attempt] = await picky.attempts(bad.id)  # failed at once, not left to its lease
        assert (attempt.outcome, attempt.error and attempt.error.type) == ("failed", "ValueError")
        assert any(bad.id in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
        # The busy path too: finishing a batch and claiming the next in one call.
        applied, taken = await picky.finish_and_claim(
            [done(c) for c in claims], worker_id="w1", task_names=["work"], limit=2, now=T0 + 2
        )
        assert applied == [True, True]
        assert [(c.job.id, c.job.input) for c in taken] == [(after.id, 4)]
        assert [a.outcome for a in await picky.attempts(worse.id)] == ["failed"]
        await picky.finish([done(c) for c in taken], now=T0 + 3)
        assert await claim(picky, now=T0 + 10_000) == []  # no lease left to run out
    finally:
        await picky.close()


# --------------------------------------------------------------- 2: claiming order


async def test_2_claims_take_priority_then_run_at_then_enqueue_order(store: JobStore) -> None:
    low = await store.enqueue(request(priority=0), now=T0)
    late = await store.enqueue(request(priority=5, run_at=T0 + 0.5), now=T0)
    early = await store.enqueue(request(priority=5, run_at=T0 - 1), now=T0)
    second = await store.enqueue(request(priority=0), now=T0)
    claims = await claim(store, now=T0 + 1)
    assert [c.job.id for c in claims] == [early.id, late.id, low.id, second.id]
    assert all(c.job.status == "running" and c.job.attempts == 1 for c in claims)
    assert len({c.token for c in claims}) == 4


async def test_2_claims_take_only_due_jobs_of_the_named_tasks_up_to_the_limit(
    store: JobStore,
) -> None:
    await store.enqueue(request("other"), now=T0)
    delayed = await store.enqueue(request(run_at=T0 + 10), now=T0)
    for _ in range(3):
        await store.enqueue(request(), now=T0)
    assert len(await claim(store, limit=2)) == 2
    assert len(await claim(store, limit=0)) == 0
    assert len(await claim(store, limit=5)) == 1
    assert await store.next_due_at(["work"]) == T0 + 10  # the delayed job
    assert await store.next_due_at(["nobody"]) is None
    [c] = await claim(store, now=T0 + 10)
    assert c.job.id == delayed.id
    assert await store.next_due_at(["work"]) == T0 + 30  # the earliest lease expiry


async def test_2_next_due_at_is_the_earliest_queued_run_at(store: JobStore) -> None:
    await store.enqueue(request(run_at=T0 + 7), now=T0)
    await store.enqueue(request(run_at=T0 + 3), now=T0)
    assert await store.next_due_at(["work"]) == T0 + 3


# ---------------------------------------------------- 3: leases, fencing, lost attempts


async def test_3_a_job_is_held_by_one_claim_until_its_lease_runs_out(backend: Backend) -> None:
    first = backend.make(lease=10.0)
    await first.open()
    second = backend.another(first, lease=10.0)
    await second.open()
    try:
        job = await first.enqueue(request(), now=T0)
        [a] = await claim(first, worker="A")
        assert await claim(second, worker="B", now=T0 + 9.9) == []
        [b] = await claim(second, worker="B", now=T0 + 10)
        assert b.job.id == job.id and b.job.attempts == 2 and b.job.worker_id == "B"
        # The first worker is fenced out: its outcome and renewal change nothing.
        assert await first.finish([done(a)], now=T0 + 11) == [False]
        assert (await first.renew([a.token], now=T0 + 11)).lost == {a.token}
        assert await second.finish([done(b)], now=T0 + 12) == [True]
        trail = await first.attempts(job.id)
        assert [(t.worker_id, t.outcome) for t in trail] == [("A", "lost"), ("B", "succeeded")]
        assert trail[0].finished_at is not None and trail[0].finished_at.timestamp() == T0 + 10
    finally:
        await first.close()
        await second.close()


async def test_3_finish_and_claim_is_finish_then_claim_in_one_call(store: JobStore) -> None:
    # A worker's busy cycle: its outcomes end its claims (fenced by their tokens), then it
    # claims replacements; reaping comes after the finish, so a claim whose lease ran out but
    # that nobody reaped yet still finishes, and a stale one is reaped and claimable again.
    x, y, z = [await store.enqueue(request(), now=T0) for _ in range(3)]
    [a, b] = await claim(store, limit=2)
    assert (a.job.id, b.job.id) == (x.id, y.id)
    stale = JobOutcome(job_id=b.job.id, token="not-the-token", outcome="succeeded")
    applied, claims = await store.finish_and_claim(
        [done(a), stale], worker_id="w2", task_names=["work"], limit=2, now=T0 + 40
    )
    assert applied == [True, False]
    assert [(c.job.id, c.job.worker_id, c.job.attempts) for c in claims] == [
        (y.id, "w2", 2),
        (z.id, "w2", 1),
    ]
    finished = await store.get(x.id)
    assert finished is not None and finished.status == "succeeded"
    assert [(t.worker_id, t.outcome) for t in await store.attempts(x.id)] == [("w1", "succeeded")]
    trail = await store.attempts(y.id)
    assert [(t.worker_id, t.outcome) for t in trail] == [("w1", "lost"), ("w2", None)]
    assert await store.finish_and_claim(
        [done(c) for c in claims], worker_id="w2", task_names=["work"], limit=2, now=T0 + 41
    ) == ([True, True], [])


async def test_3_one_batch_of_outcomes_applies_each_live_one_and_fences_out_the_rest(
    store: JobStore,
) -> None:
    # Every kind of outcome in one batch, live tokens among stale and wrong ones: each outcome
    # is judged on its own, and only the applied ones write their attempt.
    jobs = [await store.enqueue(request(), now=T0) for _ in range(5)]
    a, b, c, d, e = await claim(store, limit=5)
    await store.renew([x.token for x in (a, c, d, e)], now=T0 + 20)
    [b2] = await claim(store, worker="w2", now=T0 + 30, limit=1)  # b's lease ran out: re-claimed
    assert b2.job.id == b.job.id
    error = JobError(type="ValueError", message="bad", traceback="")
    batch = [
        done(b),  # the stale token of a job that another worker holds now
        done(a),
        done(c, "released"),
        JobOutcome(job_id=d.job.id, token=e.token, outcome="succeeded"),  # e's token, d's id
        done(d, "failed", error=error),
        JobOutcome(job_id=e.job.id, token=e.token[:-1], outcome="succeeded"),  # a cut token
        JobOutcome(job_id=e.job.id, token="x" * 40, outcome="succeeded"),
    ]
    assert await store.finish(batch, now=T0 + 31) == [False, True, True, False, True, False, False]
    statuses = [(j.status if j else None) for j in [await store.get(j.id) for j in jobs]]
    assert statuses == ["succeeded", "running", "queued", "failed", "running"]
    trails = [[(t.worker_id, t.outcome) for t in await store.attempts(j.id)] for j in jobs]
    assert trails == [
        [("w1", "succeeded")],
        [("w1", "lost"), ("w2", None)],
        [("w1", "released")],
        [("w1", "failed")],
        [("w1", None)],
    ]
    failed = await store.get(d.job.id)
    assert failed is not None and failed.error == error
    # The same claim twice in one batch (stores differ on the second one's answer): it ends
    # once, with one attempt.
    [applied, _] = await store.finish([done(e), done(e, "failed")], now=T0 + 32)
    assert applied and [t.outcome for t in await store.attempts(e.job.id)] == ["succeeded"]
    assert await store.finish([done(b2)], now=T0 + 33) == [True]


async def test_3_a_batch_that_gives_nothing_back_applies_only_its_live_outcomes(
    store: JobStore,
) -> None:
    # A worker's usual batch: every outcome ends its job. One fenced out among them must not
    # change the answer for the others, nor leave any of its own writes behind.
    await store.enqueue_many([request(input=i) for i in range(4)], now=T0)
    a, b, c, d = await claim(store, limit=4)
    forged = ("0" if c.token[0] != "0" else "1") + c.token[1:]
    stale = JobOutcome(job_id=c.job.id, token=forged, outcome="failed")  # c's, but not its token
    batch = [done(a, result=b"1"), stale, done(b, result=b"2"), done(d, "cancelled")]
    assert await store.finish(batch, now=T0 + 1) == [True, False, True, True]
    got = [await store.get(x.job.id) for x in (a, b, c, d)]
    assert [(j.status, j.result) for j in got if j] == [
        ("succeeded", 1),
        ("succeeded", 2),
        ("running", None),
        ("cancelled", None),
    ]
    assert [t.outcome for t in await store.attempts(c.job.id)] == [None]
    assert await store.finish([done(c)], now=T0 + 2) == [True]


async def test_3_a_batch_of_successes_with_one_fenced_out_applies_the_others(
    store: JobStore,
) -> None:
    await store.enqueue_many([request(input=i) for i in range(3)], now=T0)
    a, b, c = await claim(store, limit=3)
    forged = ("0" if b.token[0] != "0" else "1") + b.token[1:]
    batch = [done(a, result=b"1"), done(b, result=b"2"), done(c, result=b"3")]
    batch[1] = JobOutcome(job_id=b.job.id, token=forged, outcome="succeeded", result=b"2")
    assert await store.finish(batch, now=T0 + 1) == [True, False, True]
    got = [await store.get(x.job.id) for x in (a, b, c)]
    assert [(j.status, j.result) for j in got if j] == [
        ("succeeded", 1),
        ("running", None),
        ("succeeded", 3),
    ]
    assert await store.finish([done(b, result=b"2")], now=T0 + 2) == [True]


async def test_3_a_batch_of_many_outcomes_applies_them_all(store: JobStore) -> None:
    await store.enqueue_many([request(input=i) for i in range(250)], now=T0)
    claims = await claim(store, limit=250)
    outcomes = [done(c, "released" if i % 7 == 0 else "succeeded") for i, c in enumerate(claims)]
    assert await store.finish(outcomes, now=T0 + 1) == [True] * 250
    assert len(await store.list_jobs(status="succeeded", limit=300)) == 250 - 36
    assert len(await store.list_jobs(status="queued", limit=300)) == 36


async def test_3_renewing_a_lease_keeps_the_job(store: JobStore) -> None:
    await store.enqueue(request(), now=T0)
    [a] = await claim(store)
    report = await store.renew([a.token], now=T0 + 20)
    assert report.lost == frozenset() and report.cancel_requested == frozenset()
    assert await claim(store, worker="B", now=T0 + 49) == []
    assert len(await claim(store, worker="B", now=T0 + 50)) == 1


async def test_3_a_job_claimed_max_attempts_times_without_finishing_fails(store: JobStore) -> None:
    job = await store.enqueue(request(max_attempts=2), now=T0)
    await claim(store, now=T0)
    await claim(store, now=T0 + 30)
    assert await claim(store, now=T0 + 60) == []
    failed = await store.get(job.id)
    assert failed is not None and failed.status == "failed" and failed.attempts == 2
    assert failed.error is not None and "claimed 2 times without finishing" in failed.error.message
    assert [t.outcome for t in await store.attempts(job.id)] == ["lost", "lost"]


# ----------------------------------------------------------- 4: outcomes are final


async def test_4_a_failed_job_is_final_until_retry_job(store: JobStore) -> None:
    from taskbuffer.jobs import JobError

    job = await store.enqueue(request(), now=T0)
    [c] = await claim(store)
    error = JobError(type="ValueError", message="bad", traceback="tb")
    assert await store.finish([done(c, "failed", error=error)], now=T0 + 2) == [True]
    failed = await store.get(job.id)
    assert failed is not None and failed.status == "failed" and failed.error == error
    assert failed.finished_at is not None and failed.finished_at.timestamp() == T0 + 2
    assert await claim(store, now=T0 + 100) == []

    def trail(attempts: list[Any]) -> list[tuple[Any, ...]]:
        return [
            (
                t.attempt,
                t.worker_id,
                t.outcome,
                t.error,
                t.finished_at and t.finished_at.timestamp(),
            )
            for t in attempts
        ]

    assert trail(await store.attempts(job.id)) == [(1, "w1", "failed", error, T0 + 2)]
    again = await store.retry(job.id, now=T0 + 5)
    assert again.status == "queued" and again.attempts == 0 and again.error is None
    assert again.run_at.timestamp() == T0 + 5
    assert trail(await store.attempts(job.id)) == [(1, "w1", "failed", error, T0 + 2)]
    [c2] = await claim(store, now=T0 + 5, worker="w2")
    assert c2.job.attempts == 1
    with pytest.raises(ValueError, match="only a failed or cancelled job"):
        await store.retry(job.id, now=T0 + 6)
    assert await store.finish([done(c2)], now=T0 + 7) == [True]
    assert trail(await store.attempts(job.id)) == [
        (1, "w1", "failed", error, T0 + 2),
        (2, "w2", "succeeded", None, T0 + 7),
    ]
    with pytest.raises(KeyError):
        await store.retry("missing", now=T0)


# ---------------------------------------------------------------------- 5: cancel


async def test_5_cancelling_a_queued_job_is_immediate_and_a_finished_one_is_refused(
    store: JobStore,
) -> None:
    job = await store.enqueue(request(), now=T0)
    assert await store.cancel(job.id, now=T0 + 1) is True
    cancelled = await store.get(job.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert await store.cancel(job.id, now=T0 + 2) is False
    assert await store.cancel("missing", now=T0) is False
    assert await claim(store) == []


async def test_5_cancelling_a_running_job_reaches_its_worker_through_the_renewal(
    store: JobStore,
) -> None:
    job = await store.enqueue(request(), now=T0)
    [c] = await claim(store)
    assert await store.cancel(job.id, now=T0 + 1) is True
    assert (await store.get(job.id)).status == "running"  # type: ignore[union-attr]
    assert (await store.renew([c.token], now=T0 + 2)).cancel_requested == {c.token}
    assert await store.finish([done(c, "cancelled")], now=T0 + 3) == [True]
    assert (await store.get(job.id)).status == "cancelled"  # type: ignore[union-attr]


async def test_5_a_cancelled_job_whose_worker_died_ends_cancelled_at_lease_expiry(
    store: JobStore,
) -> None:
    job = await store.enqueue(request(), now=T0)
    await claim(store)
    await store.cancel(job.id, now=T0 + 1)
    assert await claim(store, now=T0 + 30) == []
    assert (await store.get(job.id)).status == "cancelled"  # type: ignore[union-attr]


# ----------------------------------------------------------------------- 6: dedupe


async def test_6_a_dedupe_key_returns_the_live_job_instead_of_storing_another(
    store: JobStore,
) -> None:
    first = await store.enqueue(request(dedupe_key="k", input=1), now=T0)
    again, other = await store.enqueue_many(
        [request(dedupe_key="k", input=2), request(dedupe_key="j")], now=T0
    )
    assert again == first and other.id != first.id
    [c, _] = await claim(store)
    assert (await store.enqueue(request(dedupe_key="k"), now=T0)).id == first.id  # running
    await store.finish([done(c)], now=T0)
    fresh = await store.enqueue(request(dedupe_key="k", input=3), now=T0)
    assert fresh.id != first.id and fresh.input == 3


# -------------------------------------------------------------- 7: schedule keys


async def test_7_a_schedule_key_is_stored_at_most_once_ever(store: JobStore) -> None:
    tick = await store.enqueue(request(schedule_key="cron:work:1"), now=T0)
    [c] = await claim(store)
    await store.finish([done(c)], now=T0)
    again = await store.enqueue(request(schedule_key="cron:work:1"), now=T0 + 1)
    assert again.id == tick.id and again.status == "succeeded"
    await store.enqueue(request(schedule_key="cron:work:3"), now=T0)
    await store.enqueue(request(schedule_key="cron:other:9"), now=T0)
    assert await store.latest_schedule_key("cron:work:") == "cron:work:3"
    assert await store.latest_schedule_key("cron:none:") is None


# ---------------------------------------------------------------------- 8: release


async def test_8_a_released_job_is_queued_again_and_its_attempt_does_not_count(
    store: JobStore,
) -> None:
    job = await store.enqueue(request(max_attempts=1), now=T0)
    [c] = await claim(store)
    assert await store.finish([done(c, "released")], now=T0 + 1) == [True]
    queued = await store.get(job.id)
    assert queued is not None and queued.status == "queued" and queued.attempts == 0
    [c2] = await claim(store, now=T0 + 1)
    assert c2.job.attempts == 1
    assert [t.outcome for t in await store.attempts(job.id)] == ["released", None]
    # Given back again and cancelled while queued: no attempt more; a retry adds none either.
    assert await store.finish([done(c2, "released")], now=T0 + 2) == [True]
    assert await store.cancel(job.id, now=T0 + 3)
    await store.retry(job.id, now=T0 + 4)
    assert [t.outcome for t in await store.attempts(job.id)] == ["released", "released"]


# -------------------------------------------------------------------- 10: schema


async def test_10_a_store_whose_schema_is_newer_refuses_to_open(backend: Backend) -> None:
    made = backend.make()
    await made.open()
    await backend.force_schema_version(made, 999)
    await made.close()
    again = backend.another(made)
    with pytest.raises(JobSchemaError, match="schema version 999, newer than"):
        await again.open()
    await again.close()


async def test_10_opening_twice_and_reopening_after_close_work(backend: Backend) -> None:
    made = backend.make()
    await made.open()
    await made.open()
    job = await made.enqueue(request(), now=T0)
    await made.close()
    await made.close()
    again = backend.another(made)
    await again.open()
    assert (await again.get(job.id)) == job
    await again.close()


# ------------------------------------------------------------------- retention


async def test_purge_removes_jobs_finished_before_the_retention(backend: Backend) -> None:
    made = backend.make(retention=100.0)
    await made.open()
    try:
        old = await made.enqueue(request(), now=T0)
        young = await made.enqueue(request(), now=T0)
        [a, b] = await claim(made)
        await made.finish([done(a)], now=T0)
        await made.finish([done(b)], now=T0 + 50)
        assert await made.purge(now=T0 + 120) == 1
        assert await made.get(old.id) is None and await made.attempts(old.id) == []
        assert await made.get(young.id) is not None
    finally:
        await made.close()


def test_options_are_checked_at_construction() -> None:
    from taskbuffer.jobs import MemoryJobStore

    with pytest.raises(ValueError, match="lease must be"):
        MemoryJobStore(lease=0)
    with pytest.raises(TypeError, match="serializer must have dumps"):
        MemoryJobStore(serializer=object())


# ------------------------------------------------------------------------- URLs


def test_sqlite_urls_name_relative_and_absolute_files(tmp_path: Any) -> None:
    from taskbuffer.jobs import SQLiteJobStore, job_store_from_url

    relative = job_store_from_url("sqlite:///data/jobs.db", lease=5.0)
    assert isinstance(relative, SQLiteJobStore) and relative.path == "data/jobs.db"
    assert relative.lease == 5.0
    absolute = job_store_from_url(f"sqlite:///{tmp_path}/jobs.db")
    assert isinstance(absolute, SQLiteJobStore) and absolute.path == f"{tmp_path}/jobs.db"
    with pytest.raises(ValueError, match="unknown scheme"):
        job_store_from_url("redis://localhost")
    with pytest.raises(ValueError, match="not a SQLite URL"):
        job_store_from_url("sqlite:///")
    with pytest.raises(TypeError, match="must be a str"):
        job_store_from_url(3)  # type: ignore[arg-type]


def test_a_postgresql_url_loads_the_extra_only_then(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from taskbuffer.jobs import MemoryJobStore, job_store_from_url

    built: list[tuple[str, dict[str, Any]]] = []

    class FakePostgresJobStore(MemoryJobStore):
        def __init__(self, dsn: str, **options: Any) -> None:
            built.append((dsn, options))
            super().__init__(**options)

    fake = types.ModuleType("taskbuffer.jobs.postgres")
    fake.PostgresJobStore = FakePostgresJobStore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "taskbuffer.jobs.postgres", fake)
    store = job_store_from_url("postgresql://u@h/db", lease=9.0)
    assert isinstance(store, FakePostgresJobStore)
    assert built == [("postgresql://u@h/db", {"lease": 9.0})]


@pytest.mark.realtime
async def test_a_manager_opens_and_closes_the_sqlite_store_of_its_url(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from taskbuffer import Task, TaskManager

    monkeypatch.chdir(tmp_path)
    m = TaskManager(job_store="sqlite:///jobs.db")
    m.add_task(Task(task_function=lambda x: x * 2, name="double"))
    async with asyncio.timeout(10):
        await m.start()
        job = await m.enqueue("double", 21)
        assert await m.job_result(job.id) == 42
        await m.stop()
    assert (tmp_path / "jobs.db").is_file()
    assert [j.id for j in await m.list_jobs()] == [job.id]  # reopened for the look-up
    await m.stop()
