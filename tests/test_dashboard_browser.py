"""The dashboard end to end: ``serve_dashboard`` on a loopback port, Debian's Chromium driven
by Playwright.

Marked ``external``: it needs ``/usr/bin/chromium`` (``.ci/run`` installs it with apt, and in
CI a skip is a failure). Screenshots of both themes go to the test's tmp dir; with
``TASKBUFFER_SCREENSHOTS=docs`` the example workload's screenshots are also written there (that
is how ``docs/dashboard-light.png`` and ``docs/dashboard-dark.png`` are made).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from taskbuffer import Task, TaskConstraintGroup, TaskManager, TaskStep
from taskbuffer.dashboard import serve_dashboard

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
LIMIT = 20.0  # seconds any await may take before it is a hang
WAIT_MS = 10_000  # the same for the page's selectors, in Playwright's milliseconds
TOKEN = "browser-token"

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.external,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
]

playwright_api = pytest.importorskip("playwright.async_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def served(browser: Browser, manager: TaskManager, **options: Any) -> AsyncIterator[str]:
    """``serve_dashboard`` on a free loopback port; yields its base URL.

    The browser's page leaves the dashboard before the server stops: left open, it would try
    to reconnect its event stream to a closed port (a console error) if the test took longer
    than the stream's retry interval to end.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    server = asyncio.create_task(serve_dashboard(manager, port=port, **options))
    try:
        async with httpx.AsyncClient() as c, asyncio.timeout(LIMIT):
            while True:
                try:
                    await c.get(base + "static/style.css", params={"token": TOKEN})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        yield base
    finally:
        async with asyncio.timeout(LIMIT):
            await browser.page.goto("about:blank")
        server.cancel()
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(server, return_exceptions=True)


class Browser:
    """A Chromium page that records console errors and uncaught page errors."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self.on_console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def on_console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    async def open(self, url: str) -> None:
        response = await self.page.goto(url)
        assert response is not None and response.status == 200
        await self.page.wait_for_selector('#connection[data-state="open"]', timeout=WAIT_MS)

    async def shoot(self, path: Path, scheme: str) -> str:
        """A full-page screenshot in ``scheme``; returns the page's background colour."""
        await self.page.emulate_media(color_scheme=scheme)
        # From the top: a full-page shot draws the sticky header where the page is scrolled.
        await self.page.evaluate("window.scrollTo(0, 0)")
        await self.page.screenshot(path=str(path), full_page=True)
        background: str = await self.page.evaluate(
            "getComputedStyle(document.body).backgroundColor"
        )
        return background


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await chromium.new_context(viewport={"width": 1280, "height": 900})
            yield Browser(await context.new_page())
        finally:
            await chromium.close()


CHECKOUT_STEPS = [
    TaskStep(name="pay", description="charge the card", percentage=30),
    TaskStep(name="ship", description="hand to the carrier", percentage=30),
    TaskStep(name="notify", description="email the customer", percentage=40),
]


def checkout_task(gates: dict[tuple[str, str], asyncio.Event]) -> Task[str]:
    """Moves to each step, then waits there until the test opens the gate ``(order, step)``."""
    task: Task[str]

    async def checkout(order: str) -> str:
        for step in CHECKOUT_STEPS:
            task.notify_step(step.name)
            await gates[order, step.name].wait()
        return f"{order} done"

    task = Task(
        task_function=checkout,
        name="checkout",
        labels={"tenant": "acme"},
        steps=CHECKOUT_STEPS,
    )
    return task


async def until(manager: TaskManager, condition: Any) -> None:
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


async def test_a_run_moves_through_its_steps_and_the_label_filter_hides_other_tenants(
    browser: Browser, tmp_path: Path
) -> None:
    orders = ("order-1", "order-2", "order-3")
    gates = {(order, step.name): asyncio.Event() for order in orders for step in CHECKOUT_STEPS}
    manager = TaskManager()
    manager.add_task(checkout_task(gates))
    ledger = Task(task_function=lambda: "ok", name="ledger", labels={"tenant": "globex"})
    manager.add_and_schedule_task(ledger, "0 3 * * *")
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="per-tenant",
            constraint_key_for_execution=lambda task, _input: task.get_label("tenant"),
            max_concurrent=2,
        )
    )
    page = browser.page
    async with served(browser, manager) as base:
        await browser.open(base)
        assert await page.locator('article.task[data-task="ledger"]').count() == 1

        runs = [manager.spawn("checkout", order) for order in orders]
        await until(manager, lambda: manager.statistics().waiting == 1)
        ids = {run.input: run.run_id for run in manager.get_active_runs(task_name="checkout")}
        card = 'article.task[data-task="checkout"]'
        bar = card + ' .run[data-run-id="{}"][data-progress="{}"]'
        # The third trigger waits for the tenant's key: the page names the group and the key.
        waiting = page.locator(f'#runs tr[data-run-id="{ids["order-3"]}"]')
        await waiting.wait_for(timeout=WAIT_MS)
        assert "per-tenant / acme" in await waiting.inner_text()
        label = page.locator(f'{card} .run[data-run-id="{ids["order-3"]}"] .run-label')
        assert "waits for per-tenant / acme" in await label.inner_text()

        # order-1 moves through its steps (pay active: half of its 30 %; then 30 + 15; then
        # 60 + 20) while order-2, on its own bar, stays at its first step.
        for step, progress in [("pay", 15), ("ship", 45), ("notify", 80)]:
            await page.wait_for_selector(bar.format(ids["order-1"], progress), timeout=WAIT_MS)
            markers = page.locator(bar.format(ids["order-1"], progress) + " .marker")
            assert await markers.count() == 2  # between the three steps
            assert await page.locator(bar.format(ids["order-2"], 15)).count() == 1
            gates["order-1", step].set()
        async with asyncio.timeout(LIMIT):
            assert await runs[0] == "order-1 done"
        # order-1 leaves the page; order-3 gets the tenant's slot and starts.
        await page.wait_for_selector(f'.run[data-run-id="{ids["order-1"]}"]', state="detached")
        await page.wait_for_selector(bar.format(ids["order-3"], 15), timeout=WAIT_MS)
        assert "waits for" not in await label.inner_text()

        for gate in gates.values():
            gate.set()
        async with asyncio.timeout(LIMIT):
            assert await asyncio.gather(*runs[1:]) == ["order-2 done", "order-3 done"]
        done = 'article.task[data-task="checkout"][data-status="completed"]'
        await page.wait_for_selector(done, timeout=WAIT_MS)
        await page.wait_for_selector(f"{card} .run", state="detached", timeout=WAIT_MS)
        await page.wait_for_selector("#runs-empty:not([hidden])", timeout=WAIT_MS)

        await page.select_option("#label-filter", "tenant=acme")
        await page.wait_for_selector('article.task[data-task="ledger"]', state="detached")
        assert await page.locator('article.task[data-task="checkout"]').count() == 1
        await page.select_option("#label-filter", "")
        await page.wait_for_selector('article.task[data-task="ledger"]', timeout=WAIT_MS)

        light = await browser.shoot(tmp_path / "dashboard-light.png", "light")
        dark = await browser.shoot(tmp_path / "dashboard-dark.png", "dark")
        assert light != dark
        assert (tmp_path / "dashboard-light.png").stat().st_size > 0

        await page.set_viewport_size({"width": 390, "height": 844})  # a phone
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
    assert browser.errors == []


async def test_with_a_token_the_page_without_it_gets_401(browser: Browser) -> None:
    manager = TaskManager()
    manager.add_task(Task(task_function=lambda: None, name="t"))
    async with served(browser, manager, token=TOKEN) as base:
        # In a page of its own: Chromium reports the refused load as a console error.
        stranger = await browser.page.context.new_page()
        response = await stranger.goto(base)
        assert response is not None and response.status == 401
        assert "token" in await stranger.content()
        await stranger.close()
        await browser.open(base + f"?token={TOKEN}")
        await browser.page.wait_for_selector('article.task[data-task="t"]', timeout=WAIT_MS)
    assert browser.errors == []


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dashboard_example", ROOT / "examples" / "dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_screenshots_of_the_example_workload_in_both_themes(
    browser: Browser, tmp_path: Path
) -> None:
    from taskbuffer.jobs import SQLiteJobStore

    example = load_example()
    store = SQLiteJobStore(tmp_path / "jobs.db")
    manager: TaskManager = example.build_manager(job_store=store)
    services = example.build_services()
    rng = random.Random(3)
    async with store, services, manager:
        traffic = [
            asyncio.create_task(example.tenant_traffic(manager, tenant, rng))
            for tenant in example.TENANTS
        ]
        traffic.append(asyncio.create_task(example.invoice_traffic(manager, rng)))
        try:
            async with served(browser, manager, services=services, title="acme ops") as base:
                page = browser.page
                await browser.open(base)
                # Runs on the task cards and in the runs panel, a trigger waiting for its
                # key, jobs that succeeded and failed.
                await page.wait_for_selector("article.task .run[data-progress]", timeout=WAIT_MS)
                await page.wait_for_selector('#runs tr [data-state="waiting"]', timeout=WAIT_MS)
                for status in ("succeeded", "failed"):
                    selector = f'#jobs tr[data-status="{status}"]'
                    await page.wait_for_selector(selector, timeout=WAIT_MS)
                await asyncio.sleep(1.0)  # let the workload fill the panels
                await page.locator('#jobs tr[data-status="failed"] button').first.click()
                await page.wait_for_selector("#job-traceback", timeout=WAIT_MS)
                for scheme in ("light", "dark"):
                    await browser.shoot(tmp_path / f"dashboard-{scheme}.png", scheme)
                assert await no_overflow_at(page, 390) == 0  # a phone
                await browser.shoot(tmp_path / "dashboard-phone.png", "dark")
        finally:
            for job in traffic:
                job.cancel()
            await asyncio.gather(*traffic, return_exceptions=True)
    target = os.environ.get("TASKBUFFER_SCREENSHOTS")
    if target:
        for scheme in ("light", "dark"):
            shutil.copy(
                tmp_path / f"dashboard-{scheme}.png", Path(target) / f"dashboard-{scheme}.png"
            )
    assert browser.errors == []


async def test_a_failed_job_s_traceback_opens(browser: Browser, tmp_path: Path) -> None:
    from taskbuffer.jobs import SQLiteJobStore

    def charge(amount: int) -> int:
        if amount == 0:
            return 0
        raise ZeroDivisionError(f"cannot split {amount} by zero")

    # A real store on disk: what the page shows went through its serializer and its SQL.
    store = SQLiteJobStore(tmp_path / "jobs.db")
    manager = TaskManager(job_store=store)
    manager.add_task(Task(task_function=charge, name="charge"))
    async with store, manager:
        fine = await manager.enqueue("charge", 0)
        job = await manager.enqueue("charge", 7)
        assert (await manager.wait_for_job(job.id, timeout=LIMIT)).status == "failed"
        assert (await manager.wait_for_job(fine.id, timeout=LIMIT)).status == "succeeded"
        async with served(browser, manager) as base:
            page = browser.page
            await browser.open(base)
            await page.wait_for_selector(f'#jobs tr[data-job-id="{fine.id}"]', timeout=WAIT_MS)
            await page.select_option("#job-status", "failed")
            await page.wait_for_selector(f'#jobs tr[data-job-id="{fine.id}"]', state="detached")
            row = page.locator(f'#jobs tr[data-job-id="{job.id}"]')
            await row.locator("button").click()
            await page.locator("#job-traceback summary").click()
            traceback = page.locator("#job-traceback pre")
            await traceback.wait_for(state="visible", timeout=WAIT_MS)
            assert "ZeroDivisionError: cannot split 7 by zero" in await traceback.inner_text()
    assert browser.errors == []


HOSTILE = (
    '<img src=x onerror="window.__xss=1">"\'</textarea><script>window.__xss=2</script>'
    "\u202eünï\u0000code\U0001f600"
)


async def no_overflow_at(page: Any, width: int) -> int | str:
    """How far the page is wider than a ``width``-pixel screen (0 or less: it fits)."""
    await page.set_viewport_size({"width": width, "height": 800})
    overflow: int = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    if overflow > 0:  # name the culprits in the failure
        wide = await page.evaluate(
            "[...document.querySelectorAll('body *')].filter((e) =>"
            " e.getBoundingClientRect().right > innerWidth + 1).slice(-5).map((e) =>"
            " e.tagName + '.' + e.className + '#' + e.id)"
        )
        return f"{overflow} px too wide: {wide}"
    return overflow


async def test_hostile_names_labels_errors_and_inputs_render_as_text(
    browser: Browser, tmp_path: Path
) -> None:
    from taskbuffer.jobs import MemoryJobStore

    def fail(_input: Any) -> None:
        raise ValueError(HOSTILE + "x" * 5000)

    manager = TaskManager(job_store=MemoryJobStore())
    manager.add_task(Task(task_function=fail, name=HOSTILE, labels={HOSTILE: HOSTILE}))
    # Label keys and values holding "=": the label filter must not split them wrongly.
    manager.add_task(Task(task_function=lambda: None, name="left", labels={"a=b": "c"}))
    manager.add_task(Task(task_function=lambda: None, name="right", labels={"a": "b=c"}))
    async with manager:
        with pytest.raises(ValueError):
            await manager.trigger_task_by_name(HOSTILE, HOSTILE)
        job = await manager.enqueue(HOSTILE, {"note": HOSTILE})
        assert (await manager.wait_for_job(job.id, timeout=LIMIT)).status == "failed"
        async with served(browser, manager) as base:
            page = browser.page
            await browser.open(base)
            await page.wait_for_selector("#tasks article.task .error", timeout=WAIT_MS)
            names = await page.locator("#tasks article.task .name").all_inner_texts()
            assert HOSTILE.replace("\u0000", "") in [n.replace("\u0000", "") for n in names]
            error = await page.locator("#tasks article.task .error").first.inner_text()
            assert error.startswith("ValueError: <img src=x") or "<img src=x" in error
            assert await page.locator("#tasks img, #events img, #jobs img").count() == 0
            assert await page.locator("main script, main textarea").count() == 0

            for label, task in [("a=b=c", "right"), ('"a=b"=c', "left")]:
                await page.select_option("#label-filter", label=label, timeout=WAIT_MS)
                await page.wait_for_selector(f'#tasks article[data-task="{task}"]')
                # One card left: no card follows another (a selector, not wait_for_function,
                # whose polling evaluates a string, which the page's CSP refuses).
                await page.wait_for_selector(
                    "#tasks article.task ~ article.task", state="detached", timeout=WAIT_MS
                )
                names = page.locator("#tasks article.task .name")
                assert await names.all_inner_texts() == [task], label

            await page.select_option("#label-filter", "")
            row = page.locator(f'#jobs tr[data-job-id="{job.id}"]')
            await row.locator("button").click()
            await page.locator("#job-traceback summary").click()
            traceback = page.locator("#job-traceback pre")
            await traceback.wait_for(state="visible", timeout=WAIT_MS)
            assert "</textarea><script>" in await traceback.inner_text()
            assert "<script>" in await page.locator("#job-detail .muted").first.inner_text()

            assert await no_overflow_at(page, 360) == 0
            await page.screenshot(path=str(tmp_path / "hostile-360.png"), full_page=True)
            assert await page.evaluate("window.__xss === undefined")
    assert browser.errors == []


async def test_an_empty_manager_without_services_or_store_paints_with_no_error(
    browser: Browser,
) -> None:
    async with served(browser, TaskManager()) as base:
        page = browser.page
        await browser.open(base)
        await page.wait_for_selector("#tasks-empty:not([hidden])", timeout=WAIT_MS)
        assert await page.locator("#jobs-panel").is_hidden()
        assert await page.locator("#services-panel").is_hidden()
        assert await no_overflow_at(page, 360) == 0
        # Nothing the page loads comes from anywhere but the dashboard.
        urls = await page.evaluate("performance.getEntries().map((e) => e.name)")
        assert all(url.startswith(base) for url in urls if "://" in url), urls
    assert browser.errors == []
