"""Shared fixtures of the test suite.

Every async test runs on looptime's virtual clock (``--looptime`` in the pytest options): a
function-scoped loop starts at ``loop.time() == 0`` and fast-forwards whenever it would idle, so
durations are asserted exactly and an ``asyncio.timeout(...)`` that would hang fails at once.
Tests marked ``realtime`` opt out and run on the real clock.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from pytest_asyncio import is_async_test
from reactivex.abc import DisposableBase

from taskbuffer import Task, TaskEvent

try:  # PostgreSQL's fixtures (absent where this file is copied alone, as test_ci does)
    from _pg_support import postgres_job_backend, postgres_server
except ImportError:
    pass
else:
    __all__ = ("postgres_job_backend", "postgres_server")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI, a test that needs an external service (marked ``external``) may not skip.

    .ci/run installs every service the suite needs, so such a skip means a test proved
    nothing; it fails instead, with the reason it gave for skipping.
    """
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("external") is not None
        and _in_ci()
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"an external test was skipped in CI (CI={os.environ['CI']}): {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """In CI, a test module may not skip itself (``pytest.importorskip`` at module level)."""
    report = yield
    if report.skipped and _in_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"a test module was skipped in CI (CI={os.environ['CI']}): {reason}"
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("realtime") is not None:
            item.add_marker(pytest.mark.looptime(False))


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Close the stray loop looptime's plugin makes the policy create for a sync test.

    looptime asks the policy for the current loop before every test, which creates one for a
    sync test; a test that then calls ``asyncio.run()`` unsets it, and it would be garbage
    collected unclosed (a ``ResourceWarning``, an error in this suite).
    """
    policy = pyfuncitem.funcargs.get("event_loop_policy")
    if is_async_test(pyfuncitem) or not isinstance(policy, asyncio.AbstractEventLoopPolicy):
        return (yield)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            stray: asyncio.AbstractEventLoop | None = policy.get_event_loop()
        except RuntimeError:
            stray = None
    try:
        return (yield)
    finally:
        if stray is not None and not stray.is_running() and not stray.is_closed():
            stray.close()
            policy.set_event_loop(None)


@pytest.fixture
def record() -> Iterator[Callable[[Task[Any, Any]], list[TaskEvent]]]:
    """Subscribe to a task's events; the returned list fills as they come.

    Subscriptions are disposed when the test ends.
    """
    subscriptions: list[DisposableBase] = []

    def subscribe(task: Task[Any, Any]) -> list[TaskEvent]:
        events: list[TaskEvent] = []
        subscriptions.append(task.event_subject.subscribe(events.append))
        return events

    yield subscribe
    for subscription in subscriptions:
        subscription.dispose()
