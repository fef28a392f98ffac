"""The package as distributed: its version, its licence, and what importing it costs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import taskbuffer

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_is_the_one_in_pyproject() -> None:
    assert isinstance(taskbuffer.__version__, str)
    assert taskbuffer.__version__ == PYPROJECT["project"]["version"]


def test_license_file_is_the_mit_license_that_pyproject_declares() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 taskbuffer contributors" in text
    assert "Permission is hereby granted, free of charge" in text


def test_sdist_ships_the_license_and_the_docs() -> None:
    include = PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    assert {"LICENSE", "docs", "README.md", "taskbuffer"} <= set(include)


def _modules_loaded_by(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    # A plain interpreter, as a user's: not one that coverage measures (CI measures the
    # subprocesses of the suite, and coverage loads modules of its own, uuid among them).
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return set(result.stdout.split())


# Not needed to import taskbuffer or to build its objects: loaded when first used.
LAZY = {
    "croniter",
    "dateutil",
    "reactivex.operators",
    "uuid",
    "importlib.metadata",
    "redis",
    "taskbuffer._service",
    "taskbuffer._service_graph",
    "taskbuffer._service_info",
    "taskbuffer._service_manager",
    "taskbuffer._service_runtime",
    "taskbuffer._service_supervisor",
}


def test_import_and_building_objects_load_no_optional_machinery() -> None:
    loaded = _modules_loaded_by(
        "import taskbuffer as tb\n"
        "m = tb.TaskManager()\n"
        "t = tb.Task(task_function=lambda: None, name='t')\n"
        "d = tb.TaskDebounced(task_function=lambda: None, debounce_time=1.0)\n"
        "m.add_task(t)\n"
    )
    assert "taskbuffer" in loaded
    assert not LAZY & loaded, f"loaded eagerly: {sorted(LAZY & loaded)}"


def test_using_services_loads_them() -> None:
    loaded = _modules_loaded_by("import taskbuffer as tb\nm = tb.ServiceManager()\n")
    assert {"taskbuffer._service", "taskbuffer._service_manager"} <= loaded


def test_parsing_a_cron_string_loads_croniter() -> None:
    loaded = _modules_loaded_by(
        "import taskbuffer as tb\n"
        "m = tb.TaskManager()\n"
        "m.add_and_schedule_task(tb.Task(task_function=lambda: None, name='t'), '* * * * *')\n"
    )
    assert "croniter" in loaded
