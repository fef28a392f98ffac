"""In CI (``CI=true``, as .ci/run sets it) a test that needs an external service may not skip.

The suite's conftest turns such a skip into a failure, so a CI run without redis-server (or
without the redis package) fails instead of passing with the Redis tests unrun. Outside CI
they still skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import pytest

@pytest.mark.external
def test_needs_a_server() -> None:
    pytest.skip("no server here")

def test_skips_for_another_reason() -> None:
    pytest.skip("not this platform")
"""

SKIPPING_MODULE = """
import pytest

pytest.importorskip("taskbuffer_no_such_module")
"""

SETTINGS = """
[tool.pytest.ini_options]
markers = ["external: needs an external service", "realtime: real clock"]
asyncio_default_fixture_loop_scope = "function"
"""


def _run(tmp_path: Path, *, ci: str | None) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pyproject.toml").write_text(SETTINGS, encoding="utf-8")
    (tmp_path / "test_probe.py").write_text(PROBE, encoding="utf-8")
    (tmp_path / "test_skipping_module.py").write_text(SKIPPING_MODULE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs"]
        + ["--continue-on-collection-errors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.realtime
def test_in_ci_skipped_external_tests_and_skipped_modules_fail(tmp_path: Path) -> None:
    result = _run(tmp_path, ci="true")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 1 skipped, 1 error" in result.stdout, output
    assert "an external test was skipped in CI (CI=true): Skipped: no server here" in output
    assert "a test module was skipped in CI (CI=true)" in output


@pytest.mark.realtime
def test_outside_ci_they_skip(tmp_path: Path) -> None:
    result = _run(tmp_path, ci="false")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 skipped" in result.stdout, result.stdout
