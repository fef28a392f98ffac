"""The dashboard's endpoints: snapshot contents, the event stream, the token, actions, CSP.

Requests go through httpx's ASGI transport; the event stream, which never ends by itself, is
driven by :class:`StreamClient` (ASGI by hand: it can stall, read frames and disconnect).
Everything runs on the real clock (the app's frames are paced by real time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Message

from taskbuffer import (
    Service,
    ServiceManager,
    Task,
    TaskConstraintGroup,
    TaskManager,
    TaskStep,
)
from taskbuffer.dashboard import dashboard_app, serve_dashboard
from taskbuffer.dashboard._app import CONTENT_SECURITY_POLICY
from taskbuffer.dashboard._state import RUNS_LISTED
from taskbuffer.jobs import MemoryJobStore

pytestmark = [pytest.mark.realtime]

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 10.0  # seconds any await of these tests may take before it is a hang
TOKEN = "s3cret-token"


@asynccontextmanager
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as c:
        yield c


def subscribers(manager: TaskManager) -> int:
    return len(manager.task_subject.observers)


class StreamClient:
    """``GET /api/events`` driven by hand: frames as they are sent, a gate to stall the
    client (its ``send`` blocks), and a disconnect."""

    def __init__(
        self, app: ASGIApp, query: str = "", headers: tuple[tuple[bytes, bytes], ...] = ()
    ):
        self.app = app
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/events",
            "raw_path": b"/api/events",
            "root_path": "",
            "query_string": query.encode(),
            "headers": list(headers),
            "client": ("127.0.0.1", 50000),
            "server": ("dashboard", 80),
        }
        self.frames: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.start: Message | None = None
        self.body = b""
        self.reading = asyncio.Event()
        self.reading.set()
        self.stalled = asyncio.Event()  # the server is blocked sending to the stalled client
        self.gone = asyncio.Event()
        self.requested = False
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if not self.reading.is_set():
            self.stalled.set()
        await self.reading.wait()  # a stalled client: the server's send blocks
        if message["type"] == "http.response.start":
            self.start = message
            return
        self.body += message.get("body", b"")
        while b"\n\n" in self.body:
            block, self.body = self.body.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().splitlines() if ": " in line
            )
            if "event" in fields:
                self.frames.put_nowait((fields["event"], json.loads(fields["data"])))

    def open(self) -> None:
        async def serve() -> None:
            await self.app(self.scope, self.receive, self.send)

        self.task = asyncio.create_task(serve())

    async def next_frame(self) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(LIMIT):
            return await self.frames.get()

    async def frame_where(
        self, predicate: Callable[[str, dict[str, Any]], bool]
    ) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(LIMIT):
            while True:
                kind, data = await self.frames.get()
                if predicate(kind, data):
                    return kind, data

    async def disconnect(self) -> None:
        self.gone.set()
        assert self.task is not None
        async with asyncio.timeout(LIMIT):
            await self.task


def gated(name: str, **options: Any) -> tuple[Task[Any, Any], asyncio.Event]:
    """A task whose runs wait until the returned event is set."""
    release = asyncio.Event()

    async def work(_input: Any) -> str:
        await release.wait()
        return "done"

    return Task(task_function=work, name=name, **options), release


async def until(manager: TaskManager, condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, checking it after each event of ``manager``."""
    changed = asyncio.Event()
    subscription = manager.task_subject.subscribe(lambda _event: changed.set())
    try:
        async with asyncio.timeout(LIMIT):
            while not condition():
                changed.clear()
                await changed.wait()
    finally:
        subscription.dispose()


# ------------------------------------------------------------------------------- snapshot


async def test_snapshot_shows_tasks_groups_by_busiest_key_schedules_services_and_events() -> None:
    manager = TaskManager()
    sync, release = gated("sync", labels={"tenant": "acme"})
    report = Task(task_function=lambda: "ok", name="report", labels={"tenant": "globex"})
    manager.add_task(sync)
    manager.add_and_schedule_task(report, "0 3 * * *")
    manager.schedule_task_at("sync", datetime.now(UTC) + timedelta(hours=1), "later")
    group = TaskConstraintGroup(
        name="per-account",
        constraint_key_for_execution=lambda task, input: None if input is None else str(input)[0],
        max_concurrent=2,
    )
    manager.add_constraint_group(group)
    services = ServiceManager()
    services.add_service(Service(name="db", start=lambda: "pool"))
    app = dashboard_app(manager, services=services)
    runs = [manager.spawn("sync", input) for input in ("a1", "a2", "a3", "b1")]
    try:
        await until(manager, lambda: group.statistics().waiting == 1)
        async with client(app) as c:
            response = await c.get("/api/snapshot")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        data = response.json()
        assert set(data) >= {"tasks", "runs", "groups", "schedules", "jobs", "services", "events"}
        tasks = {task["name"]: task for task in data["tasks"]}
        assert tasks["sync"]["status"] == "running"
        assert tasks["sync"]["labels"] == {"tenant": "acme"}
        assert tasks["report"]["labels"] == {"tenant": "globex"}
        assert tasks["report"]["cron_schedule"] == "0 3 * * *"
        [per_account] = data["groups"]
        assert per_account["name"] == "per-account"
        assert per_account["max_concurrent"] == 2
        assert (per_account["running"], per_account["waiting"]) == (3, 1)
        # The busiest key first: "a" has 2 running and 1 waiting, "b" 1 running.
        assert per_account["keys"] == [
            {"key": "a", "running": 2, "waiting": 1},
            {"key": "b", "running": 1, "waiting": 0},
        ]
        schedules = data["schedules"]
        assert [s["task_name"] for s in schedules] == ["sync", "report"]  # soonest first
        assert [s["schedule"] for s in schedules] == ["once", "0 3 * * *"]
        assert data["services"] == [services.get_service("db").get_metadata().to_dict()]  # type: ignore[union-attr]
        assert [(e["type"], e["task"]) for e in data["events"]].count(("started", "sync")) == 3
        assert ("queued", "sync") in [(e["type"], e["task"]) for e in data["events"]]
        assert data["statistics"] == {"tasks": 2, "running": 3, "waiting": 1, "scheduled": 2}
    finally:
        release.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*runs)


async def test_a_group_lists_its_busiest_keys_and_counts_the_rest() -> None:
    manager = TaskManager()
    hold, release = gated("hold")
    manager.add_task(hold)
    group = TaskConstraintGroup(
        name="by-key", constraint_key_for_execution=lambda task, input: input[0]
    )
    manager.add_constraint_group(group)
    # key-00 has 1 run, key-01 2 runs ... key-24 25 runs.
    inputs = [(f"key-{k:02}", i) for k in range(25) for i in range(k + 1)]
    runs = [manager.spawn("hold", input) for input in inputs]
    try:
        await until(manager, lambda: group.statistics().running == len(inputs))
        async with client(dashboard_app(manager)) as c:
            [entry] = (await c.get("/api/snapshot")).json()["groups"]
        assert [k["key"] for k in entry["keys"]] == [f"key-{k:02}" for k in range(24, 4, -1)]
        assert entry["keys"][0]["running"] == 25
        assert entry["more_keys"] == 5
        assert entry["tracked_keys"] == 25
    finally:
        release.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*runs)


async def test_without_a_job_store_the_jobs_panel_is_off_and_its_endpoints_are_404() -> None:
    async with client(dashboard_app(TaskManager())) as c:
        data = (await c.get("/api/snapshot")).json()
        assert data["jobs"] == []
        assert data["features"]["jobs"] is False
        assert (await c.get("/api/jobs")).status_code == 404
        assert (await c.get("/api/jobs/abc")).status_code == 404


async def test_the_page_and_its_files_are_served_from_the_package() -> None:
    async with client(dashboard_app(TaskManager(), title="Acme <ops>")) as c:
        page = await c.get("/")
        assert page.status_code == 200
        assert "<title>Acme &lt;ops&gt;</title>" in page.text
        assert '<script src="static/app.js" defer></script>' in page.text
        for path, kind in [("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
            response = await c.get(path)
            assert response.status_code == 200
            assert kind in response.headers["content-type"]


async def test_mounted_under_a_path_the_page_redirects_to_its_slash_and_works() -> None:
    outer = Starlette(routes=[Mount("/ops/dashboard", app=dashboard_app(TaskManager()))])
    async with client(outer) as c:
        bare = await c.get("/ops/dashboard")
        assert bare.status_code in (301, 302, 307, 308)
        assert bare.headers["location"].endswith("/ops/dashboard/")
        assert (await c.get("/ops/dashboard/")).status_code == 200
        assert (await c.get("/ops/dashboard/api/snapshot")).status_code == 200
        assert (await c.get("/ops/dashboard/static/app.js")).status_code == 200


# ---------------------------------------------------------------------------------- token


async def test_with_a_token_every_request_without_it_or_with_a_wrong_one_gets_401() -> None:
    app = dashboard_app(TaskManager(), token=TOKEN, allow_actions=True)
    async with client(app) as c:
        for path in ("/", "/api/snapshot", "/api/events", "/static/app.js", "/api/jobs"):
            response = await c.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
            assert (await c.get(path + "?token=wrong")).status_code == 401
            wrong = {"Authorization": "Bearer wrong"}
            assert (await c.get(path, headers=wrong)).status_code == 401
        assert (await c.post("/api/tasks/x/trigger")).status_code == 401
        # A POST must carry the token in its header: a URL token does not authorise actions.
        assert (await c.post(f"/api/tasks/x/trigger?token={TOKEN}")).status_code == 401


async def test_with_the_token_in_the_header_or_the_url_the_page_is_served() -> None:
    app = dashboard_app(TaskManager(), token=TOKEN)
    async with client(app) as c:
        header = {"Authorization": f"Bearer {TOKEN}"}
        assert (await c.get("/api/snapshot", headers=header)).status_code == 200
        page = await c.get(f"/?token={TOKEN}")
        assert page.status_code == 200
        # The page's own files carry the token, since the browser sends no header for them.
        assert f'src="static/app.js?token={TOKEN}"' in page.text
        assert (await c.get(f"/static/style.css?token={TOKEN}")).status_code == 200


# ----------------------------------------------------------------------- hostile requests


async def raw_get(
    app: ASGIApp, path: str, query: str = "", *, root_path: str = "", host: bytes = b"dashboard"
) -> tuple[int, dict[bytes, bytes]]:
    """One GET with ``path`` exactly as given (no client normalises its dots)."""
    starts: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            starts.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": query.encode(),
        "headers": [(b"host", host)],
        "client": ("127.0.0.1", 50000),
        "server": ("dashboard", 80),
    }
    async with asyncio.timeout(LIMIT):
        await app(scope, receive, send)
    return starts[0]["status"], dict(starts[0]["headers"])


async def test_a_url_token_opens_only_the_page_its_files_and_the_event_stream() -> None:
    manager = TaskManager(job_store=MemoryJobStore())
    app = dashboard_app(manager, token=TOKEN)
    async with client(app) as c:
        for path in ("/", "/static/app.js", "/static/style.css"):
            assert (await c.get(path, params={"token": TOKEN})).status_code == 200, path
            assert (await c.head(path, params={"token": TOKEN})).status_code == 200, path
        # The JSON endpoints are for scripts, which can send a header: a token in their URL
        # would only end up in logs and histories.
        for path in ("/api/snapshot", "/api/jobs", "/api/jobs/x", "/api/snapshot/", "/nowhere"):
            assert (await c.get(path, params={"token": TOKEN})).status_code == 401, path
        assert (await c.options("/", params={"token": TOKEN})).status_code == 401
    for path in ("/static/../api/snapshot", "/static/..%2Fapi/snapshot", "/./api/snapshot"):
        status, _ = await raw_get(app, path, f"token={TOKEN}")
        assert status in (401, 404), path
    stream = StreamClient(app, query=f"token={TOKEN}")
    stream.open()
    try:
        kind, _ = await stream.next_frame()
        assert kind == "snapshot"
    finally:
        await stream.disconnect()


async def test_the_token_never_reaches_the_access_log() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = asyncio.create_task(
        serve_dashboard(TaskManager(), port=port, token=TOKEN, log_level="info")
    )
    records = Records()
    access = logging.getLogger("uvicorn.access")
    try:
        await wait_until_serving(base, Authorization=f"Bearer {TOKEN}")
        access.addHandler(records)  # after uvicorn configured its logging
        async with httpx.AsyncClient() as c:
            assert (await c.get(base + "/", params={"token": TOKEN})).status_code == 200
            r = await c.get(base + "/static/app.js", params={"token": TOKEN, "v": "1"})
            assert r.status_code == 200
    finally:
        access.removeHandler(records)
        server.cancel()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(server, return_exceptions=True)
    lines = records.lines()
    assert any("/static/app.js?v=1" in line for line in lines), lines
    assert not any(TOKEN in line for line in lines), lines


async def test_a_title_cannot_pull_the_token_into_the_page_s_text() -> None:
    app = dashboard_app(TaskManager(), token=TOKEN, title="{{asset_query}} & {{title}}")
    async with client(app) as c:
        page = (await c.get("/", params={"token": TOKEN})).text
    assert "<title>{{asset_query}} &amp; {{title}}</title>" in page
    assert page.count(TOKEN) == 2  # the stylesheet's and the script's URLs


async def test_a_path_without_its_slash_redirects_relatively_whatever_the_host_header() -> None:
    # As a server given a root path hands the app a request for the mount point itself.
    app = dashboard_app(TaskManager(), token=TOKEN)
    status, headers = await raw_get(
        app, "/ops/dashboard", f"token={TOKEN}", root_path="/ops/dashboard", host=b"evil.example"
    )
    assert status in (301, 302, 307, 308)
    location = headers[b"location"].decode()
    assert "evil.example" not in location
    target = httpx.URL("http://dashboard/ops/dashboard").join(location)
    assert (target.path, target.params["token"]) == ("/ops/dashboard/", TOKEN)


async def test_a_cross_site_form_post_cannot_act_even_without_a_token() -> None:
    manager = TaskManager()
    ran: list[Any] = []
    manager.add_and_schedule_task(Task(task_function=ran.append, name="t"), "0 3 * * *")
    app = dashboard_app(manager, allow_actions=True)
    # What a page on another site can send without the browser asking first (CORS "simple"
    # requests): a form (urlencoded, multipart, or text/plain posing as JSON) or a no-cors fetch.
    simple = [
        {"data": {"input": "1"}},
        {"files": {"input": ("x", b"1")}},
        {"content": b'{"input": 1, "x": "="}', "headers": {"content-type": "text/plain"}},
        {"content": b""},
    ]
    async with client(app) as c:
        for request in simple:
            for path in ("/api/tasks/t/trigger", "/api/tasks/t/deschedule"):
                response = await c.post(path, **request)  # type: ignore[arg-type]
                assert response.status_code == 403, (path, request, response.text)
        # A browser that says where a request comes from is believed even with JSON.
        cross = {"sec-fetch-site": "cross-site"}
        assert (await c.post("/api/tasks/t/trigger", json={}, headers=cross)).status_code == 403
        same = {"sec-fetch-site": "same-site"}  # another port of localhost, say
        assert (await c.post("/api/tasks/t/trigger", json={}, headers=same)).status_code == 403
        assert manager.get_next_scheduled_runs() != []
        await asyncio.sleep(0)
        assert ran == []
        # The page's own requests (JSON, same origin) and scripts' (JSON) do act.
        own = {"sec-fetch-site": "same-origin"}
        assert (await c.post("/api/tasks/t/trigger", json={}, headers=own)).status_code == 202
        assert (await c.post("/api/tasks/t/deschedule", json={})).status_code == 200
        assert manager.get_next_scheduled_runs() == []


async def test_served_on_loopback_without_a_token_it_refuses_another_host_name() -> None:
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 would be
    # same-origin with what it reaches; its requests carry its own name as Host.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = asyncio.create_task(serve_dashboard(TaskManager(), port=port))
    try:
        await wait_until_serving(base)
        async with httpx.AsyncClient() as c:
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
                response = await c.get(base + "/api/snapshot", headers={"host": host})
                assert response.status_code == 200, host
            for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
                response = await c.get(base + "/api/snapshot", headers={"host": host})
                assert response.status_code == 403, host
                assert "content-security-policy" in response.headers
    finally:
        server.cancel()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(server, return_exceptions=True)


# -------------------------------------------------------------------------------- actions


async def test_actions_do_not_exist_without_allow_actions() -> None:
    manager = TaskManager()
    manager.add_task(Task(task_function=lambda: None, name="t"))
    async with client(dashboard_app(manager)) as c:
        for path in ("/api/tasks/t/trigger", "/api/tasks/t/deschedule", "/api/jobs/j/cancel"):
            assert (await c.post(path)).status_code == 404, path
    assert manager.get_task_by_name("t").run_count == 0  # type: ignore[union-attr]


async def test_actions_are_post_only() -> None:
    app = dashboard_app(TaskManager(), allow_actions=True)
    async with client(app) as c:
        for path in ("/api/tasks/t/trigger", "/api/tasks/t/deschedule", "/api/jobs/j/retry"):
            assert (await c.get(path)).status_code == 405, path
            assert (await c.put(path)).status_code == 405, path


async def test_trigger_and_deschedule_actions_act_on_the_manager() -> None:
    manager = TaskManager()
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    manager.add_and_schedule_task(
        Task(task_function=lambda x: done.set_result(x), name="t"), "0 3 * * *"
    )
    app = dashboard_app(manager, token=TOKEN, allow_actions=True)
    header = {"Authorization": f"Bearer {TOKEN}"}
    async with client(app) as c:
        response = await c.post("/api/tasks/t/trigger", json={"input": 42}, headers=header)
        assert response.status_code == 202
        async with asyncio.timeout(LIMIT):
            assert await done == 42
        assert (await c.post("/api/tasks/nope/trigger", headers=header)).status_code == 404
        assert (
            await c.post("/api/tasks/t/trigger", content=b"[", headers=header)
        ).status_code == 400
        assert (await c.post("/api/tasks/t/deschedule", headers=header)).status_code == 200
        assert manager.get_next_scheduled_runs() == []


# ------------------------------------------------------------------------------------ CSP


async def test_every_response_carries_the_strict_content_security_policy() -> None:
    app = dashboard_app(TaskManager(), token=TOKEN, allow_actions=True)
    header = {"Authorization": f"Bearer {TOKEN}"}
    async with client(app) as c:
        responses = [
            await c.get("/", headers=header),
            await c.get("/static/app.js", headers=header),
            await c.get("/api/snapshot", headers=header),
            await c.get("/api/snapshot"),  # 401
            await c.get("/nowhere", headers=header),  # 404
            await c.get("/api/tasks/t/trigger", headers=header),  # 405
            await c.post(
                "/api/tasks/t/trigger", headers={**header, "sec-fetch-site": "cross-site"}
            ),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 401, 404, 405, 403]
    for response in responses:
        policy = response.headers["content-security-policy"]
        assert policy == CONTENT_SECURITY_POLICY
        assert "require-trusted-types-for 'script'" in policy  # no innerHTML, even by mistake
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["connect-src"] == "'self'"
        assert "unsafe-inline" not in policy and "http" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"


def test_the_page_has_no_inline_script_style_or_event_handler() -> None:
    static = ROOT / "taskbuffer" / "dashboard" / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert " on" not in page.replace(" one", "").replace(" only", "")  # no onclick=...
    for name in ("index.html", "app.js", "style.css"):
        text = (static / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, name  # nothing from elsewhere
    assert "innerHTML" not in (static / "app.js").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------- stream


async def test_the_stream_opens_with_a_snapshot_then_sends_coalesced_updates() -> None:
    manager = TaskManager()
    manager.add_task(Task(task_function=lambda x: x, name="echo", labels={"tenant": "acme"}))
    stream = StreamClient(dashboard_app(manager))
    stream.open()
    try:
        kind, snapshot = await stream.next_frame()
        assert kind == "snapshot"
        assert [t["name"] for t in snapshot["tasks"]] == ["echo"]
        assert stream.start is not None
        assert dict(stream.start["headers"])[b"content-type"].startswith(b"text/event-stream")
        # 200 events, well within one frame interval; 100 runs stay under the feed's bound of
        # pending task and run entries (MAX_PENDING), past which it skips ahead to a snapshot.
        for i in range(100):
            await manager.trigger_task_by_name("echo", i)
        kind, update = await stream.frame_where(lambda k, d: bool(d["events"]))
        assert kind == "update"
        # One entry for the task, as it was after the last run; the newest events only.
        [echo] = update["tasks"]
        assert (echo["name"], echo["run_count"], echo["status"]) == ("echo", 100, "completed")
        assert len(update["events"]) + update["skipped"] == 200
        assert len(update["events"]) == 50
        assert update["events"][-1]["type"] == "completed"
    finally:
        await stream.disconnect()


async def test_the_stream_sends_at_most_about_ten_frames_a_second() -> None:
    manager = TaskManager()
    manager.add_task(Task(task_function=lambda: None, name="tick"))
    stream = StreamClient(dashboard_app(manager))
    stream.open()
    await stream.next_frame()
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        while loop.time() - began < 1.0:
            await manager.trigger_task_by_name("tick")
            await asyncio.sleep(0.001)
        frames = stream.frames.qsize()
        assert 3 <= frames <= 11, frames
    finally:
        await stream.disconnect()


async def test_a_disconnected_stream_leaves_no_subscription_and_no_task() -> None:
    manager = TaskManager()
    manager.add_task(Task(task_function=lambda: None, name="t"))
    app = dashboard_app(manager)
    tasks_before = asyncio.all_tasks()
    before = subscribers(manager)
    stream = StreamClient(app)
    stream.open()
    await stream.next_frame()
    assert subscribers(manager) == before + 1
    await stream.disconnect()
    assert subscribers(manager) == before
    assert asyncio.all_tasks() == tasks_before
    # Events after it left reach nobody of it.
    await manager.trigger_task_by_name("t")
    assert stream.frames.empty()


async def test_many_clients_coming_and_going_leave_nothing_behind() -> None:
    manager = TaskManager()
    manager.add_task(Task(task_function=lambda: None, name="t"))
    app = dashboard_app(manager)
    tasks_before, before = asyncio.all_tasks(), subscribers(manager)
    for _ in range(3):
        streams = [StreamClient(app) for _ in range(50)]
        for stream in streams:
            stream.open()
        for stream in streams:
            await stream.next_frame()
        assert subscribers(manager) == before + 50
        await manager.trigger_task_by_name("t")
        for stream in streams:
            await stream.disconnect()
    assert subscribers(manager) == before
    assert asyncio.all_tasks() == tasks_before


async def test_a_stream_open_across_a_manager_restart_keeps_showing_its_events() -> None:
    manager = TaskManager()
    manager.add_task(Task(task_function=lambda: None, name="t"))
    stream = StreamClient(dashboard_app(manager))
    stream.open()
    try:
        await stream.next_frame()
        for runs in (1, 2):
            async with manager:
                await manager.trigger_task_by_name("t")
            _, update = await stream.frame_where(lambda k, d: bool(d["tasks"]))
            assert update["tasks"][0]["run_count"] == runs
    finally:
        await stream.disconnect()


async def test_a_stalled_client_is_skipped_ahead_to_a_full_snapshot() -> None:
    manager = TaskManager()
    for i in range(300):
        manager.add_task(Task(task_function=lambda: None, name=f"t{i:03}"))
    stream = StreamClient(dashboard_app(manager))
    stream.open()
    await stream.next_frame()
    stream.reading.clear()  # the client stops reading
    for i in range(300):  # more distinct tasks than a client may hold pending
        await manager.trigger_task_by_name(f"t{i:03}")
    await asyncio.sleep(0.3)
    stream.reading.set()
    try:
        kind, data = await stream.frame_where(lambda k, d: k == "snapshot")
        assert {t["run_count"] for t in data["tasks"]} == {1}
        assert len(data["tasks"]) == 300
    finally:
        await stream.disconnect()


async def test_the_stream_shows_service_changes() -> None:
    manager = TaskManager()
    services = ServiceManager()
    services.add_service(Service(name="db", start=lambda: "pool"))
    stream = StreamClient(dashboard_app(manager, services=services))
    stream.open()
    try:
        _, snapshot = await stream.next_frame()
        assert [s["state"] for s in snapshot["services"]] == ["stopped"]
        async with services:
            _, update = await stream.frame_where(
                lambda k, d: d.get("services", [{}])[0].get("state") == "running"
            )
            assert update["services"][0]["name"] == "db"
    finally:
        await stream.disconnect()


# ----------------------------------------------------------------------- arguments, server


def test_bad_arguments_raise_at_the_call() -> None:
    with pytest.raises(TypeError, match="manager must be a TaskManager"):
        dashboard_app("manager")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token must be a non-empty string"):
        dashboard_app(TaskManager(), token="")
    with pytest.raises(TypeError, match="services must be a ServiceManager"):
        dashboard_app(TaskManager(), services=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="allow_actions must be a bool"):
        dashboard_app(TaskManager(), allow_actions="yes")  # type: ignore[arg-type]
    for token in (" padded", "two words", "pässwort", "line\nbreak"):
        with pytest.raises(ValueError, match="token must be a non-empty string of visible ASCII"):
            dashboard_app(TaskManager(), token=token)
    with pytest.raises(TypeError, match="token must be a non-empty string"):
        dashboard_app(TaskManager(), token=b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="title must be a string"):
        dashboard_app(TaskManager(), title=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="title must be encodable as UTF-8"):
        dashboard_app(TaskManager(), title="\ud800")


async def test_serve_dashboard_rejects_a_bad_port() -> None:
    with pytest.raises(ValueError, match="port must be within 0-65535"):
        await serve_dashboard(TaskManager(), port=70000)
    with pytest.raises(TypeError, match="port must be an int"):
        await serve_dashboard(TaskManager(), port="80")  # type: ignore[arg-type]


class Records(logging.Handler):
    """The records of the logger it is added to; ``changed`` is set at each."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    def lines(self) -> list[str]:
        return [record.getMessage() for record in self.records]


async def test_on_port_0_serve_dashboard_logs_the_address_it_really_listens_on() -> None:
    records = Records()
    log = logging.getLogger("taskbuffer")
    level = log.level
    log.addHandler(records)
    log.setLevel(logging.INFO)
    server = asyncio.create_task(serve_dashboard(TaskManager(), port=0))
    try:
        async with asyncio.timeout(LIMIT):
            while not any("dashboard on" in line for line in records.lines()):
                records.changed.clear()
                await records.changed.wait()
        [url] = [line.split()[-1] for line in records.lines() if "dashboard on" in line]
        assert not url.endswith(":0/"), url
        async with httpx.AsyncClient() as c:
            assert (await c.get(url + "api/snapshot")).status_code == 200
    finally:
        log.removeHandler(records)
        log.setLevel(level)
        server.cancel()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(server, return_exceptions=True)


async def test_a_port_in_use_raises_os_error_not_system_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as caught:
            async with asyncio.timeout(LIMIT):
                await serve_dashboard(TaskManager(), port=port)
    assert str(port) in str(caught.value)


async def test_serve_dashboard_names_a_bad_host_or_log_level() -> None:
    with pytest.raises(ValueError, match="log_level must be one of critical, error, warning"):
        await serve_dashboard(TaskManager(), port=0, log_level="verbose")
    with pytest.raises(TypeError, match="host must be a string"):
        await serve_dashboard(TaskManager(), host=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="host must be a non-empty string"):
        await serve_dashboard(TaskManager(), host="")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_until_serving(base: str, **headers: str) -> None:
    async with httpx.AsyncClient() as c, asyncio.timeout(LIMIT):
        while True:
            try:
                await c.get(base + "/api/snapshot", headers=headers)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)


async def test_cancelling_serve_dashboard_ends_open_streams_and_the_server() -> None:
    manager = TaskManager()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = asyncio.create_task(serve_dashboard(manager, port=port))
    await wait_until_serving(base)
    async with httpx.AsyncClient(timeout=LIMIT) as c:
        async with c.stream("GET", base + "/api/events") as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            async with asyncio.timeout(LIMIT):
                while not (await anext(lines)).startswith("event: snapshot"):
                    pass
            assert subscribers(manager) == 2  # the app's recent-events buffer and this stream
            server.cancel()
            async with asyncio.timeout(LIMIT):
                async for _ in lines:  # the stream ends
                    pass
    async with asyncio.timeout(LIMIT):
        with pytest.raises(asyncio.CancelledError):
            await server
    assert subscribers(manager) == 1


async def test_the_command_line_serves_a_module_s_manager(tmp_path: Path) -> None:
    (tmp_path / "app_for_cli.py").write_text(
        "from taskbuffer import Task, TaskManager\n"
        "def build():\n"
        "    manager = TaskManager()\n"
        "    manager.add_task(Task(task_function=lambda: None, name='from-cli'))\n"
        "    return manager\n",
        encoding="utf-8",
    )
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    # The token from the environment: an argument would show in every user's process list.
    env["TASKBUFFER_DASHBOARD_TOKEN"] = TOKEN
    args = ["-m", "taskbuffer", "dashboard", "app_for_cli:build", "--port", str(port)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_until_serving(base, Authorization=f"Bearer {TOKEN}")
        async with httpx.AsyncClient() as c:
            assert (await c.get(base + "/api/snapshot")).status_code == 401
            header = {"Authorization": f"Bearer {TOKEN}"}
            data = (await c.get(base + "/api/snapshot", headers=header)).json()
        assert [t["name"] for t in data["tasks"]] == ["from-cli"]
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(LIMIT):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()


def test_the_command_line_names_a_bad_target() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskbuffer", "dashboard", "no_such_module_x:manager"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cannot import 'no_such_module_x'" in result.stderr


def test_the_command_line_refuses_a_bad_port_or_token_before_starting() -> None:
    for options, message in [
        (["--port", "70000"], "the port must be within 0-65535, not 70000"),
        (["--port", "http"], "not a port number: 'http'"),
        (["--token", "two words"], "token must be a non-empty string of visible ASCII"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "taskbuffer", "dashboard", "json:loads", *options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------- jobs


async def failed_job_manager() -> tuple[TaskManager, str]:
    """A started manager with a memory store and one job that failed."""
    from taskbuffer.jobs import MemoryJobStore

    def charge(amount: int) -> int:
        raise ZeroDivisionError(f"cannot split {amount} by zero")

    manager = TaskManager(job_store=MemoryJobStore())
    manager.add_task(Task(task_function=charge, name="charge", labels={"tenant": "acme"}))
    await manager.start()
    job = await manager.enqueue("charge", 7)
    done = await manager.wait_for_job(job.id, timeout=LIMIT)
    assert done.status == "failed"
    return manager, job.id


async def test_jobs_are_listed_filtered_paged_and_shown_with_their_traceback() -> None:
    manager, job_id = await failed_job_manager()
    try:
        queued = [(await manager.enqueue("charge", i, delay=3600)).id for i in range(3)]
        app = dashboard_app(manager, allow_actions=True)
        async with client(app) as c:
            snapshot = (await c.get("/api/snapshot")).json()
            assert snapshot["features"]["jobs"] is True
            assert [j["id"] for j in snapshot["jobs"]] == [*reversed(queued), job_id]
            failed = (await c.get("/api/jobs", params={"status": "failed"})).json()["jobs"]
            assert [(j["id"], j["status"]) for j in failed] == [(job_id, "failed")]
            assert failed[0]["error"]["type"] == "ZeroDivisionError"
            page = (await c.get("/api/jobs", params={"limit": 2, "offset": 2})).json()["jobs"]
            assert [j["id"] for j in page] == [queued[0], job_id]
            assert (await c.get("/api/jobs", params={"status": "lost"})).status_code == 400
            detail = (await c.get(f"/api/jobs/{job_id}")).json()
            assert detail["input"] == "7"
            assert "ZeroDivisionError: cannot split 7 by zero" in detail["error"]["traceback"]
            assert [a["outcome"] for a in detail["attempts_trail"]] == ["failed"]
            assert (await c.get("/api/jobs/no-such-job")).status_code == 404
            retried = await c.post(f"/api/jobs/{job_id}/retry", json={})
            assert retried.status_code == 200
            cancelled = await c.post(f"/api/jobs/{queued[0]}/cancel", json={})
            assert cancelled.json() == {"job_id": queued[0], "cancelled": True}
            assert (await c.post(f"/api/jobs/{queued[0]}/retry", json={})).status_code == 200
            assert (await c.post(f"/api/jobs/{queued[1]}/retry", json={})).status_code == 409
    finally:
        await manager.stop()


class BrokenStore(MemoryJobStore):
    """A store whose reads fail, as a database does while it is down."""

    async def list_jobs(self, **_filters: Any) -> list[Any]:
        raise OSError("connection refused")

    async def get(self, job_id: str) -> Any:
        raise OSError("connection refused")

    async def retry(self, job_id: str, *, now: float) -> Any:
        raise OSError("connection refused")


async def test_a_failing_job_store_leaves_the_snapshot_and_the_stream_alive() -> None:
    manager = TaskManager(job_store=BrokenStore())
    manager.add_task(Task(task_function=lambda: None, name="t"))
    app = dashboard_app(manager, allow_actions=True)
    async with client(app) as c:
        snapshot = await c.get("/api/snapshot")
        assert snapshot.status_code == 200
        data = snapshot.json()
        assert [t["name"] for t in data["tasks"]] == ["t"]
        assert (data["features"]["jobs"], data["jobs"]) == (True, [])
        assert data["jobs_error"] == "OSError: connection refused"
        for path in ("/api/jobs", "/api/jobs/some-id"):
            response = await c.get(path)
            assert response.status_code == 503, path
            assert "OSError: connection refused" in response.text
    stream = StreamClient(app)
    stream.open()
    try:
        kind, data = await stream.next_frame()
        assert (kind, data["jobs_error"]) == ("snapshot", "OSError: connection refused")
    finally:
        await stream.disconnect()


async def test_an_unexpected_error_is_a_500_with_the_security_headers() -> None:
    app = dashboard_app(TaskManager(job_store=BrokenStore()), allow_actions=True)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as c:
        response = await c.post("/api/jobs/some-id/retry", json={})
    assert response.status_code == 500
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_jobs_page_beyond_what_a_store_can_count_is_a_400() -> None:
    async with client(dashboard_app(TaskManager(job_store=MemoryJobStore()))) as c:
        for offset in ("99999999999999999999999", "-1", "1e3", "0x10"):
            response = await c.get("/api/jobs", params={"offset": offset})
            assert response.status_code == 400, offset
            assert "offset must be" in response.text
        for limit in ("0", "201", "99999999999999999999999"):
            response = await c.get("/api/jobs", params={"limit": limit})
            assert response.status_code == 400, limit


async def test_huge_errors_and_inputs_are_cut_so_the_snapshot_stays_bounded() -> None:
    huge = "<script>" + "x" * 1_000_000

    def fail(_input: Any) -> None:
        raise ValueError(huge)

    manager = TaskManager(job_store=MemoryJobStore())
    for i in range(20):
        manager.add_task(Task(task_function=fail, name=f"fail-{i}", labels={"k": "v" * 1000}))
    app = dashboard_app(manager)
    stream = StreamClient(app)
    stream.open()
    try:
        await stream.next_frame()
        for i in range(20):
            for _ in range(10):
                with pytest.raises(ValueError):
                    await manager.trigger_task_by_name(f"fail-{i}", huge)
        _, update = await stream.frame_where(lambda k, d: bool(d.get("events")))
        # Uncut, the 200 failures' texts alone would be 200 MB; cut, a frame holds at most
        # MAX_PENDING task and run entries and EVENTS_PER_FRAME events of bounded size each.
        assert len(json.dumps(update)) < 500_000
    finally:
        await stream.disconnect()
    async with manager:
        job = await manager.enqueue("fail-0", "x" * 1_000_000)
        await manager.wait_for_job(job.id, timeout=LIMIT)
        async with client(app) as c:
            snapshot = (await c.get("/api/snapshot")).text
            detail = (await c.get(f"/api/jobs/{job.id}")).json()
    # 20 tasks, 100 recent events, 20 jobs: each text cut to a few kilobytes.
    assert len(snapshot) < 600_000, len(snapshot)
    [error] = [t["last_error"] for t in json.loads(snapshot)["tasks"] if t["name"] == "fail-0"]
    assert error.startswith("<script>xxx") and error.endswith("…") and len(error) <= 2000
    traceback = detail["error"]["traceback"]
    assert len(traceback) <= 20_000
    assert traceback.startswith("Traceback (most recent call last)") and "in fail" in traceback
    assert traceback.endswith("x\n")
    assert len(detail["error"]["message"]) <= 2000


# ----------------------------------------------------------------------------------- runs

STEPS = [
    TaskStep(name="pay", description="charge the card", percentage=30),
    TaskStep(name="ship", description="hand to the carrier", percentage=30),
    TaskStep(name="notify", description="email the customer", percentage=40),
]
# A run's progress with each step active: the steps before it, and half of its own.
PROGRESS = {"pay": 15, "ship": 45, "notify": 80}


def stepped(
    name: str, **options: Any
) -> tuple[Task[Any, Any], dict[tuple[str, str], asyncio.Event]]:
    """A task whose run of input ``order`` moves to each step, then waits there until the gate
    ``(order, step)`` is set."""
    gates: dict[tuple[str, str], asyncio.Event] = {
        (f"order-{i}", step.name): asyncio.Event() for i in range(1, 4) for step in STEPS
    }
    task: Task[Any, Any]

    async def checkout(order: str) -> str:
        for step in STEPS:
            task.notify_step(step.name)
            await gates[order, step.name].wait()
        return f"{order} done"

    task = Task(task_function=checkout, name=name, steps=STEPS, **options)
    return task, gates


def open_gates(gates: dict[tuple[str, str], asyncio.Event], order: str, *steps: str) -> None:
    for step in steps:
        gates[order, step].set()


def steps_reached(manager: TaskManager, wanted: dict[str, int]) -> Callable[[], bool]:
    """Whether each run (by input) has reached the progress wanted of it."""

    def check() -> bool:
        progress = {run.input: run.progress for run in manager.get_active_runs()}
        return progress == wanted

    return check


async def test_the_snapshot_shows_each_of_three_concurrent_runs_with_its_own_progress() -> None:
    manager = TaskManager()
    checkout, gates = stepped("checkout")
    manager.add_task(checkout)
    runs = [manager.spawn("checkout", f"order-{i}") for i in range(1, 4)]
    try:
        open_gates(gates, "order-1", "pay")
        open_gates(gates, "order-2", "pay", "ship")
        wanted = {"order-1": 45, "order-2": 80, "order-3": 15}
        await until(manager, steps_reached(manager, wanted))
        async with client(dashboard_app(manager)) as c:
            data = (await c.get("/api/snapshot")).json()
        by_input = {run["input"]: run for run in data["runs"]}
        assert {order: run["progress"] for order, run in by_input.items()} == {
            repr(order): progress for order, progress in wanted.items()
        }
        for order, active in [("order-1", "ship"), ("order-2", "notify"), ("order-3", "pay")]:
            run = by_input[repr(order)]
            assert (run["task_name"], run["state"], run["blocked_by"]) == (
                "checkout",
                "running",
                None,
            )
            assert [s["name"] for s in run["steps"] if s["status"] == "active"] == [active]
            assert [s["percentage"] for s in run["steps"]] == [30, 30, 40]
        assert len({run["run_id"] for run in data["runs"]}) == 3
        assert data["more_runs"] == 0
    finally:
        for gate in gates.values():
            gate.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*runs)


async def test_a_queued_run_shows_the_group_and_key_that_block_it_until_it_starts() -> None:
    manager = TaskManager()
    checkout, gates = stepped("checkout", labels={"tenant": "acme"})
    manager.add_task(checkout)
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="per-tenant",
            constraint_key_for_execution=lambda task, _input: task.get_label("tenant"),
            max_concurrent=1,
        )
    )
    runs = [manager.spawn("checkout", order) for order in ("order-1", "order-2")]
    try:
        await until(manager, lambda: manager.statistics().waiting == 1)
        async with client(dashboard_app(manager)) as c:
            data = (await c.get("/api/snapshot")).json()
            states = [(r["input"], r["state"], r["blocked_by"]) for r in data["runs"]]
            assert states == [
                ("'order-1'", "running", None),
                ("'order-2'", "waiting", ["per-tenant", "acme"]),
            ]
            assert data["runs"][1]["queued_at"] is not None
            assert data["runs"][1]["started_at"] is None

            open_gates(gates, "order-1", "pay", "ship", "notify")
            await until(manager, steps_reached(manager, {"order-2": 15}))
            data = (await c.get("/api/snapshot")).json()
        # Started, it is blocked by nothing any more.
        [run] = data["runs"]
        assert (run["input"], run["state"], run["blocked_by"]) == ("'order-2'", "running", None)
    finally:
        for gate in gates.values():
            gate.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*runs)


async def test_the_stream_shows_a_queued_run_without_the_progress_of_the_run_ahead() -> None:
    manager = TaskManager()
    checkout, gates = stepped("checkout", labels={"tenant": "acme"})
    manager.add_task(checkout)
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="per-tenant",
            constraint_key_for_execution=lambda task, _input: task.get_label("tenant"),
            max_concurrent=1,
        )
    )
    stream = StreamClient(dashboard_app(manager))
    stream.open()
    runs: list[asyncio.Task[Any]] = []
    try:
        await stream.next_frame()
        runs.append(manager.spawn("checkout", "order-1"))
        await until(manager, steps_reached(manager, {"order-1": 15}))
        runs.append(manager.spawn("checkout", "order-2"))
        _, update = await stream.frame_where(
            lambda k, d: any(r["input"] == "'order-2'" for r in d["runs"])
        )
        [queued] = [r for r in update["runs"] if r["input"] == "'order-2'"]
        assert (queued["state"], queued["blocked_by"]) == ("waiting", ["per-tenant", "acme"])
        assert (queued["progress"], queued["steps"]) == (0, [])  # it has not started
    finally:
        for gate in gates.values():
            gate.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*runs)
        await stream.disconnect()


async def test_a_snapshot_lists_at_most_its_limit_of_runs_and_counts_the_rest() -> None:
    manager = TaskManager()
    hold, release = gated("hold")
    manager.add_task(hold)
    runs = [manager.spawn("hold", i) for i in range(RUNS_LISTED + 50)]
    try:
        await until(manager, lambda: manager.statistics().running == len(runs))
        async with client(dashboard_app(manager)) as c:
            data = (await c.get("/api/snapshot")).json()
        assert len(data["runs"]) == RUNS_LISTED
        assert data["more_runs"] == 50
    finally:
        release.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*runs)


async def test_the_stream_coalesces_each_run_between_frames_and_a_finished_run_leaves() -> None:
    manager = TaskManager()
    checkout, gates = stepped("checkout")
    manager.add_task(checkout)
    manager.add_task(Task(task_function=lambda: None, name="primer"))
    app = dashboard_app(manager)
    stream = StreamClient(app)
    stream.open()
    runs: list[asyncio.Task[Any]] = []
    try:
        await stream.next_frame()
        # The client stalls while the server sends it a frame: whatever happens meanwhile
        # waits for the next frame.
        stream.reading.clear()
        await manager.trigger_task_by_name("primer")
        async with asyncio.timeout(LIMIT):
            await stream.stalled.wait()
        runs = [manager.spawn("checkout", f"order-{i}") for i in range(1, 4)]
        for order in ("order-1", "order-2", "order-3"):
            open_gates(gates, order, "pay", "ship")
        await until(
            manager, steps_reached(manager, dict.fromkeys(("order-1", "order-2", "order-3"), 80))
        )
        stream.reading.set()

        _, update = await stream.frame_where(
            lambda k, d: any(r["task_name"] == "checkout" for r in d["runs"])
        )
        # 3 runs queued, started and moved through 3 steps: one entry per run, as it is now.
        steps = [e for e in update["events"] if e["type"] == "step"]
        assert len(steps) == 9
        assert len({e["run_id"] for e in steps}) == 3
        assert sorted((r["input"], r["state"], r["progress"]) for r in update["runs"]) == [
            ("'order-1'", "running", 80),
            ("'order-2'", "running", 80),
            ("'order-3'", "running", 80),
        ]

        open_gates(gates, "order-2", "notify")
        async with asyncio.timeout(LIMIT):
            assert await runs[1] == "order-2 done"
        _, update = await stream.frame_where(lambda k, d: bool(d["runs"]))
        [finished] = update["runs"]
        assert (finished["input"], finished["state"]) == ("'order-2'", "completed")
        async with client(app) as c:
            data = (await c.get("/api/snapshot")).json()
        assert sorted(r["input"] for r in data["runs"]) == ["'order-1'", "'order-3'"]
    finally:
        for gate in gates.values():
            gate.set()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*runs)
        await stream.disconnect()
