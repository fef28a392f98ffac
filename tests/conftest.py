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
from pathlib import Path
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


# Test modules that run as one unit, on one xdist worker, and why. xdist starts the units with
# the most tests first; every other test goes on its own to whichever worker is free.
WHOLE_MODULES = {
    # Real worker processes and servers on the real clock, mostly waiting: one after another
    # on one worker, started first, beside the CPU-bound tests (several at once would compete
    # for the cores their timings need).
    "test_jobs_crash.py",
    # Module-scoped fixtures that run every example, and mypy, once: once per worker otherwise.
    "test_examples.py",
    "test_typing.py",
}


def _auto_workers() -> int:
    """One worker per core (at least two, the crash tests mostly wait): no more, so that a
    CPU-bound test runs as fast as it would alone, as timing checks and timeouts assume."""
    return max(os.cpu_count() or 1, 2)


def _names_files_or_tests(config: pytest.Config) -> bool:
    """Whether the run names test files or tests (or picks tests with ``-k``), not directories."""
    if config.option.keyword:
        return True
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::", 1)[0])
        if not path.is_dir():
            return True
    return False


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """The number of xdist workers for ``-n auto`` (in pyproject.toml's pytest options).

    The whole suite, or a directory of it, runs on :func:`_auto_workers` workers. A run that
    names test files or tests, selects with ``-k`` or shows output (``-s``) runs in this one
    process (0 workers): a few tests are over before workers would have started, and ``-s``
    output would not reach the terminal from a worker. ``-n N`` overrides both.
    """
    if config.option.capture == "no" or _names_files_or_tests(config):
        return 0
    return _auto_workers()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduling, with a scope per test except for :data:`WHOLE_MODULES`.

    (Unlike ``--dist loadgroup``, this keeps every test's id as it is, so a failure's id can be
    run again as it is printed.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).name in WHOLE_MODULES else nodeid

    return Scheduling(config, log)


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
