"""The Redis coordinator against a real redis-server started for this module."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskbuffer.distributed import DistributedTaskRequest

redis = pytest.importorskip("redis")

from taskbuffer.distributed.redis import RedisDistributedCoordinator  # noqa: E402

# Real sockets to a real server: real time, not the suite's virtual time.
pytestmark = [pytest.mark.external, pytest.mark.looptime(False)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it with apt-get")
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:  # waiting for a server process to listen, not for a result
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def _now() -> float:
    """The current whole second: a tick instant within any ``max_tick_age``."""
    return float(math.floor(time.time()))


def _request(submitter: str, instant: float, task: str = "job") -> DistributedTaskRequest:
    return DistributedTaskRequest(
        submitter_id=submitter,
        request_response_id=uuid.uuid4().hex,
        task_name=task,
        task_version="1",
        task_execution_time=instant,
        task_execution_timeout=None,
        task_execution_parallel=1,
        status="requesting",
    )


async def test_exactly_one_submitter_wins_each_tick(redis_url: str) -> None:
    prefix = uuid.uuid4().hex
    coordinators = [RedisDistributedCoordinator(url=redis_url, key_prefix=prefix) for _ in range(3)]
    async with asyncio.timeout(10):
        for c in coordinators:
            await c.start()
        try:
            for tick in range(5):
                instant = _now() + tick  # within max_tick_age, before or after
                results = await asyncio.gather(
                    *(
                        c.fire_distributed_task_request(_request(f"m{i}", instant))
                        for i, c in enumerate(coordinators)
                    )
                )
                winners = [r for r in results if r.should_trigger]
                assert len(winners) == 1
                assert winners[0].rank == 0
                losers = [r for r in results if not r.should_trigger]
                assert all(r.rank == 1 and r.considered for r in losers)
                assert all("another manager" in r.reason for r in losers)
        finally:
            for c in coordinators:
                await c.stop()


async def test_ticks_of_other_tasks_and_instants_are_independent(redis_url: str) -> None:
    c = RedisDistributedCoordinator(url=redis_url, key_prefix=uuid.uuid4().hex)
    async with asyncio.timeout(10):
        await c.start()
        try:
            now = _now()
            a = await c.fire_distributed_task_request(_request("m", now, task="a"))
            b = await c.fire_distributed_task_request(_request("m", now, task="b"))
            later = await c.fire_distributed_task_request(_request("m", now + 1, task="a"))
            again = await c.fire_distributed_task_request(_request("m", now, task="a"))
        finally:
            await c.stop()
    assert (a.should_trigger, b.should_trigger, later.should_trigger) == (True, True, True)
    assert again.should_trigger is False


async def test_update_records_the_outcome(redis_url: str) -> None:
    prefix = uuid.uuid4().hex
    c = RedisDistributedCoordinator(url=redis_url, key_prefix=prefix, claim_ttl=30)
    request = _request("m1", 5.0)
    done = DistributedTaskRequest(
        **{**{f: getattr(request, f) for f in request.__dataclass_fields__}, "status": "succeeded"}
    )
    async with asyncio.timeout(10):
        await c.start()
        try:
            await c.update_distributed_task_request(done)
        finally:
            await c.stop()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stored = client.hgetall(f"{prefix}:request:{request.request_response_id}")
        ttl = client.ttl(f"{prefix}:request:{request.request_response_id}")
    finally:
        client.close()
    assert stored["status"] == "succeeded"
    assert stored["submitter_id"] == "m1"
    assert stored["task_name"] == "job"
    assert 0 < ttl <= 30


async def test_a_given_client_is_used_and_left_open(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    c = RedisDistributedCoordinator(client=client, key_prefix=uuid.uuid4().hex)
    async with asyncio.timeout(10):
        await c.start()
        result = await c.fire_distributed_task_request(_request("m", _now()))
        await c.stop()
        assert result.should_trigger
        assert await client.ping()  # still usable after the coordinator stopped
        await client.aclose()


async def test_a_coordinator_shared_by_two_managers_stays_open_until_both_stopped(
    redis_url: str,
) -> None:
    # Two managers in one process share one coordinator: each starts and stops it. The first
    # stop closed the connection under the other's claim in flight, which Redis had granted:
    # the answer was lost (ConnectionError) and the tick ran nowhere.
    name = uuid.uuid4().hex
    c = RedisDistributedCoordinator(
        url=f"{redis_url}?client_name={name}", key_prefix=uuid.uuid4().hex
    )
    other = redis.asyncio.Redis.from_url(redis_url)

    async def connections(flag: str = "") -> int:
        clients = await other.client_list()
        return sum(1 for c in clients if c["name"] == name and flag in c["flags"])

    now = _now()
    async with asyncio.timeout(10):
        await c.start()  # the first manager
        await c.start()  # the second
        try:
            await other.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
            claim = asyncio.create_task(c.fire_distributed_task_request(_request("two", now)))
            for _ in range(100):  # polls the server until the claim waits (blocked)
                if await connections("b"):
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the claim never reached the paused server")
            await c.stop()  # the first manager stops
            assert (await claim).should_trigger
            later = await c.fire_distributed_task_request(_request("two", now + 1))
            assert later.should_trigger
            assert await connections() >= 1
        finally:
            await c.stop()  # the second manager stops: now it closes
            assert await connections() == 0
            await other.aclose()


async def test_a_claimed_tick_is_refused_after_its_claim_expired_by_the_high_water_mark(
    redis_url: str,
) -> None:
    prefix = uuid.uuid4().hex
    first = RedisDistributedCoordinator(url=redis_url, key_prefix=prefix, max_tick_age=None)
    late = RedisDistributedCoordinator(url=redis_url, key_prefix=prefix, max_tick_age=None)
    now = _now()
    async with asyncio.timeout(10):
        await first.start()
        await late.start()
        try:
            assert (await first.fire_distributed_task_request(_request("a", now))).should_trigger
            # Its claim expires (claim_ttl), as while a manager is paused for longer.
            client = first._redis()
            assert await client.delete(first.tick_key(_request("a", now))) == 1
            again = await late.fire_distributed_task_request(_request("b", now))
            earlier = await late.fire_distributed_task_request(_request("b", now - 1))
            later = await late.fire_distributed_task_request(_request("b", now + 1))
            other = await late.fire_distributed_task_request(_request("b", now - 1, task="x"))
            mark = await client.get(first.mark_key("job"))
            mark_ttl = await client.pttl(first.mark_key("job"))
        finally:
            await first.stop()
            await late.stop()
    assert (again.should_trigger, again.rank) == (False, 1)
    assert again.reason == (
        f"a tick at or after this one was claimed (the task's high-water mark is {now:.3f})"
    )
    assert not earlier.should_trigger and "high-water mark" in earlier.reason
    assert later.should_trigger and later.reason == "claimed the tick"
    assert other.should_trigger  # each task name has its own mark
    assert mark == str(round((now + 1) * 1000)).encode()
    assert mark_ttl == -1


async def test_a_tick_older_than_max_tick_age_is_refused(redis_url: str) -> None:
    prefix = uuid.uuid4().hex
    c = RedisDistributedCoordinator(url=redis_url, key_prefix=prefix, max_tick_age=5)
    now = _now()
    async with asyncio.timeout(10):
        await c.start()
        try:
            old = await c.fire_distributed_task_request(_request("a", now - 7))
            recent = await c.fire_distributed_task_request(_request("a", now - 2))
            mark_ttl = await c._redis().pttl(c.mark_key("job"))
        finally:
            await c.stop()
    assert (old.should_trigger, old.rank) == (False, 1)
    assert re.fullmatch(
        r"the tick is 7\.\d{3} s old by the Redis server's clock, beyond max_tick_age \(5 s\)",
        old.reason,
    ), old.reason
    assert recent.should_trigger
    assert mark_ttl == -1  # the mark does not expire: refusing by it needs no clock


async def test_a_tick_ahead_of_the_server_clock_beyond_max_tick_age_is_refused(
    redis_url: str,
) -> None:
    # A host whose clock runs an hour ahead: had its claim raised the task's mark (kept
    # without expiry), every other manager's ticks were refused for that hour, and after it.
    prefix = uuid.uuid4().hex
    c = RedisDistributedCoordinator(url=redis_url, key_prefix=prefix, max_tick_age=5)
    now = _now()
    async with asyncio.timeout(10):
        await c.start()
        try:
            ahead = await c.fire_distributed_task_request(_request("fast", now + 3600))
            current = await c.fire_distributed_task_request(_request("a", now))
            near = await c.fire_distributed_task_request(_request("a", now + 4))
            mark = await c._redis().get(c.mark_key("job"))
        finally:
            await c.stop()
    assert (ahead.should_trigger, ahead.rank) == (False, 1)
    assert re.fullmatch(
        r"the tick is 3\d{3}\.\d{3} s ahead of the Redis server's clock, beyond "
        r"max_tick_age \(5 s\)",
        ahead.reason,
    ), ahead.reason
    assert current.should_trigger and near.should_trigger  # within the bound: early is fine
    assert mark == str(round((now + 4) * 1000)).encode()


async def test_after_redis_lost_its_keys_only_ticks_within_max_tick_age_can_be_claimed_again(
    redis_url: str,
) -> None:
    prefix = uuid.uuid4().hex
    c = RedisDistributedCoordinator(url=redis_url, key_prefix=prefix, max_tick_age=30)
    now = _now()
    async with asyncio.timeout(10):
        await c.start()
        try:
            for instant in (now - 60, now - 1):
                await c.fire_distributed_task_request(_request("a", instant))
            client = c._redis()
            await client.delete(*[key async for key in client.scan_iter(f"{prefix}:*")])
            stale = await c.fire_distributed_task_request(_request("b", now - 60))
            recent = await c.fire_distributed_task_request(_request("b", now - 1))
        finally:
            await c.stop()
    # The guarantee after a loss of writes: a tick older than max_tick_age never runs again;
    # a more recent one can be claimed a second time (the documented limit).
    assert not stale.should_trigger and "max_tick_age" in stale.reason
    assert recent.should_trigger


# ------------------------------------------------ random claims, flushes and late claimants

TASKS = ("a", "a:b", "ü:{x}\n*")  # one name a prefix of another; odd characters
MAX_AGE = 5.0
# Offsets (s) of tick instants from the server's clock at the example's start: well within
# max_tick_age (early or late), or well beyond it (late or ahead), so that the few hundred ms
# an example takes cannot move a tick across the bound.
WITHIN = (-3.0, -2.5, -2.0, -1.0, -0.001, 0.0, 0.5, 1.0, 2.0)
BEYOND = (-60.0, -8.0, 8.0, 60.0)

claim_op = st.tuples(
    st.just("claim"),
    st.integers(0, 2),  # which coordinator (a manager, possibly paused for long before it)
    st.integers(0, len(TASKS) - 1),
    st.sampled_from(WITHIN + BEYOND),
)
burst_op = st.tuples(st.just("burst"), st.lists(claim_op, min_size=2, max_size=6))
ops_strategy = st.lists(
    st.one_of(claim_op, claim_op, claim_op, burst_op, st.just(("flush",))), max_size=30
)


@settings(max_examples=30, deadline=None)
@given(ops=ops_strategy)
async def test_random_claims_flushes_and_late_claimants_keep_at_most_once(
    redis_url: str, ops: list[tuple[Any, ...]]
) -> None:
    """Three coordinators claim ticks of three tasks in random order (a claim of an old tick
    after newer ones is a manager that was paused), some at once, with random FLUSHALLs.

    Between flushes a claim wins exactly when the model says: the tick is within
    ``max_tick_age`` of the server's clock and later than every tick of the task won before
    (so each tick at most once); across flushes, only ticks within ``max_tick_age`` can be
    won again, and a tick beyond it never is.
    """
    prefix = uuid.uuid4().hex
    coordinators = [
        RedisDistributedCoordinator(url=redis_url, key_prefix=prefix, max_tick_age=MAX_AGE)
        for _ in range(3)
    ]
    marks: dict[str, float] = {}  # the model: the latest instant won per task since the flush
    won: Counter[tuple[str, float, int]] = Counter()  # (task, instant, epoch) -> wins
    epoch = 0
    async with asyncio.timeout(20):
        for c in coordinators:
            await c.start()
        try:
            client = coordinators[0]._redis()
            seconds, micros = await client.time()
            now = seconds + micros / 1e6
            for op in ops:
                if op[0] == "flush":
                    await client.flushall()
                    marks.clear()
                    epoch += 1
                    continue
                claims = op[1] if op[0] == "burst" else [op]
                requests = [
                    (coordinators[i], _request(f"m{i}", now + offset, task=TASKS[t]))
                    for _, i, t, offset in claims
                ]
                answers = await asyncio.gather(
                    *(c.fire_distributed_task_request(r) for c, r in requests)
                )
                winners: dict[str, list[float]] = {}
                for (_, request), answer in zip(requests, answers, strict=True):
                    instant, task = request.task_execution_time, request.task_name
                    assert answer.rank == (0 if answer.should_trigger else 1)
                    if answer.should_trigger:
                        assert abs(instant - now) < MAX_AGE, f"won {instant - now:+} s"
                        assert instant > marks.get(task, -math.inf), "won at or below the mark"
                        won[(task, instant, epoch)] += 1
                        winners.setdefault(task, []).append(instant)
                    elif abs(instant - now) > MAX_AGE:
                        assert "max_tick_age" in answer.reason, answer.reason
                # Whatever order Redis ran a burst in, its latest tick within the bound
                # and above the mark was won, by exactly one claim.
                for task in {r.task_name for _, r in requests}:
                    eligible = [
                        r.task_execution_time
                        for _, r in requests
                        if r.task_name == task
                        and abs(r.task_execution_time - now) < MAX_AGE
                        and r.task_execution_time > marks.get(task, -math.inf)
                    ]
                    if eligible:
                        assert max(winners.get(task, [])) == max(eligible)
                    for instant in winners.get(task, []):
                        marks[task] = max(marks.get(task, -math.inf), instant)
                    stored = await client.get(coordinators[0].mark_key(task))
                    expected = marks.get(task)
                    assert stored == (
                        None if expected is None else str(round(expected * 1000)).encode()
                    )
        finally:
            for c in coordinators:
                await c.stop()
    twice = {key: n for key, n in won.items() if n > 1}
    assert not twice, f"a tick won twice while Redis kept its writes: {twice}"


# --------------------------------------------------- managers in real processes, paused

ROOT = Path(__file__).resolve().parent.parent

# One manager in its own process: an every-second cron task coordinated through Redis. It
# appends a JSON line per event to its log: each offer of a tick and the answer, each run of
# the task, and each tick reported as run (with its instant). SIGTERM stops it.
NODE = """
import asyncio, json, signal, sys
from datetime import UTC
from taskbuffer import Task, TaskManager
from taskbuffer.distributed.redis import RedisDistributedCoordinator

url, prefix, log, claim_ttl, max_tick_age = sys.argv[1:]

def write(*fields):
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(fields) + "\\n")

class Logged(RedisDistributedCoordinator):
    async def fire_distributed_task_request(self, request):
        answer = await super().fire_distributed_task_request(request)
        write("offer", request.task_execution_time, answer.should_trigger, answer.reason)
        return answer

    async def update_distributed_task_request(self, request):
        write("ran", request.task_execution_time, request.status)
        await super().update_distributed_task_request(request)

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    coordinator = Logged(
        url=url,
        key_prefix=prefix,
        claim_ttl=float(claim_ttl),
        max_tick_age=None if max_tick_age == "none" else float(max_tick_age),
    )
    async with TaskManager(distributed_coordinator=coordinator, timezone=UTC) as manager:
        manager.add_and_schedule_task(Task(task_function=lambda: write("exec"), name="job"),
                                      "* * * * * *")
        write("started")
        await stop.wait()

asyncio.run(main())
"""


class Node:
    """A manager process (:data:`NODE`) and what it logged."""

    def __init__(
        self, name: str, log_dir: Path, url: str, prefix: str, *, claim_ttl: float, max_age: str
    ) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", NODE, url, prefix, str(self.log), str(claim_ttl), max_age],
            cwd=ROOT,
            env=env,
        )

    def records(self) -> list[list[Any]]:
        if not self.log.exists():
            return []
        text = self.log.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def offers(self) -> list[list[Any]]:
        return [r for r in self.records() if r[0] == "offer"]

    def ran(self) -> list[float]:
        return [r[1] for r in self.records() if r[0] == "ran"]

    def wait_for_offers(self, count: int) -> None:
        """Wait (polling its log, up to 30 s) until the process has offered ``count`` ticks."""
        deadline = time.monotonic() + 30
        while len(self.offers()) < count:
            assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, f"{self.name} offered {self.offers()}"
            time.sleep(0.05)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def finish(self) -> None:
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def nodes(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Starts manager processes on one key prefix; stops them all at the end."""
    prefix = uuid.uuid4().hex
    started: list[Node] = []

    def start(name: str, *, claim_ttl: float = 300.0, max_age: str = "60") -> Node:
        node = Node(name, tmp_path, redis_url, prefix, claim_ttl=claim_ttl, max_age=max_age)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            if node.proc.poll() is None:
                node.finish()


def assert_each_tick_ran_at_most_once(*nodes: Node) -> None:
    for node in nodes:
        assert node.proc.returncode == 0, f"{node.name} exited with {node.proc.returncode}"
        executions = [r for r in node.records() if r[0] == "exec"]
        assert len(executions) == len(node.ran())  # every run of the task was reported
    runs = Counter(instant for node in nodes for instant in node.ran())
    assert runs, "no tick ran"
    twice = {instant: n for instant, n in runs.items() if n > 1}
    assert not twice, f"ticks run more than once: {twice}"


def test_a_manager_paused_past_claim_ttl_does_not_run_a_tick_again(
    nodes: Callable[..., Node],
) -> None:
    # No age bound: the high-water mark alone must refuse the old tick.
    a = nodes("a", claim_ttl=0.5, max_age="none")
    b = nodes("b", claim_ttl=0.5, max_age="none")
    a.wait_for_offers(1)
    b.wait_for_offers(1)
    a.pause()  # SIGSTOP: its timer for the next tick fires only when it resumes
    b.wait_for_offers(len(b.offers()) + 3)  # b runs 3 ticks; their claims expire after 0.5 s
    offered_before = len(a.offers())
    a.resume()
    a.wait_for_offers(offered_before + 2)
    a.finish()
    b.finish()
    assert_each_tick_ran_at_most_once(a, b)
    # a offered ticks b had run (the first one's claim had expired), and was refused.
    b_ran = set(b.ran())
    stale = [offer for offer in a.offers()[offered_before:] if offer[1] in b_ran]
    assert stale, f"a offered no tick that b ran: {a.offers()}"
    assert not any(won for _, _, won, _ in stale), stale
    assert any("high-water mark" in reason for _, _, _, reason in stale), stale


def test_keys_lost_while_a_manager_is_paused_do_not_make_a_tick_run_again(
    nodes: Callable[..., Node], redis_url: str
) -> None:
    a = nodes("a", max_age="1")
    b = nodes("b", max_age="1")
    a.wait_for_offers(1)
    b.wait_for_offers(1)
    a.pause()
    b.wait_for_offers(len(b.offers()) + 2)  # b runs ticks that a then offers when resumed
    b.pause()  # so that no claim after the flush raises the mark again before a asks
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()  # every claim and high-water mark is gone
    finally:
        client.close()
    offered_before = len(a.offers())
    a.resume()
    a.wait_for_offers(offered_before + 2)
    b_offered = len(b.offers())
    b.resume()
    b.wait_for_offers(b_offered + 2)
    a.finish()
    b.finish()
    assert_each_tick_ran_at_most_once(a, b)
    b_ran = set(b.ran())
    stale = [offer for offer in a.offers()[offered_before:] if offer[1] in b_ran]
    assert stale, f"a offered no tick that b ran: {a.offers()}"
    assert not any(won for _, _, won, _ in stale), stale
    assert any("max_tick_age" in reason for _, _, _, reason in stale), stale


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="claim_ttl"):
        RedisDistributedCoordinator(claim_ttl=0)
    with pytest.raises(ValueError, match="key_prefix"):
        RedisDistributedCoordinator(key_prefix="")
    accepted = "max_tick_age must be a number of seconds > 0, math.inf or None"
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match=accepted):
            RedisDistributedCoordinator(max_tick_age=bad)
    for wrong in ("60", True):
        with pytest.raises(TypeError, match=accepted):
            RedisDistributedCoordinator(max_tick_age=wrong)  # type: ignore[arg-type]
    assert RedisDistributedCoordinator().max_tick_age == 60.0
    assert RedisDistributedCoordinator(max_tick_age=math.inf).max_tick_age is None
    assert RedisDistributedCoordinator(max_tick_age=None).max_tick_age is None


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    monkeypatch.delitem(sys.modules, "taskbuffer.distributed.redis")
    with pytest.raises(ImportError, match=r"pip install 'taskbuffer\[redis\]'"):
        importlib.import_module("taskbuffer.distributed.redis")


def test_importing_taskbuffer_does_not_import_redis() -> None:
    code = (
        "import sys, taskbuffer, taskbuffer.distributed; "
        "print(any('redis' in m for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
