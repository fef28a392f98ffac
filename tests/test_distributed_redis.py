"""The Redis coordinator against a real redis-server started for this module."""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

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
                instant = 1_800_000_000.0 + tick
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
            a = await c.fire_distributed_task_request(_request("m", 100.0, task="a"))
            b = await c.fire_distributed_task_request(_request("m", 100.0, task="b"))
            later = await c.fire_distributed_task_request(_request("m", 101.0, task="a"))
            again = await c.fire_distributed_task_request(_request("m", 100.0, task="a"))
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
        result = await c.fire_distributed_task_request(_request("m", 7.0))
        await c.stop()
        assert result.should_trigger
        assert await client.ping()  # still usable after the coordinator stopped
        await client.aclose()


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="claim_ttl"):
        RedisDistributedCoordinator(claim_ttl=0)
    with pytest.raises(ValueError, match="key_prefix"):
        RedisDistributedCoordinator(key_prefix="")


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
