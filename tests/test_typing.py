"""Static typing: ``mypy --strict`` checks a trigger's input against the task function's.

One mypy run (a subprocess, sharing the repository's ``.mypy_cache`` with ``mypy --strict
taskbuffer examples``) checks three files written to a temporary directory: a snippet that must
type-check, a snippet whose every line marked ``# error: <code>`` must fail with that code (and
nothing else may), and ``examples/quickstart.py`` with a wrong input type put into one trigger.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PASSES = """
from __future__ import annotations

import asyncio
from typing import Any

from taskbuffer import (
    Task,
    TaskDebounced,
    TaskManager,
    TaskOnce,
    Taskchain,
    Taskparallel,
    task,
)


async def double(x: int) -> int:
    return 2 * x


async def ready() -> str:
    return "ready"


def describe(x: int, setup: str) -> str:
    return f"{setup}: {x}"


async def maybe(x: int | None = None) -> int:
    return x or 0


async def anything(payload: Any) -> Any:
    return payload


@task
async def greet(name: str) -> str:
    return name


@task(name="tick")
async def tick() -> None:
    pass


async def main() -> None:
    doubler = Task(task_function=double)
    number: int = await doubler.trigger(2)
    number = await doubler.trigger_unbuffered(3)
    starter = Task(task_function=ready)
    text: str = await starter.trigger()
    text = await starter.trigger(None)
    text = await greet.trigger("world")
    await tick.trigger()
    text = await Task(task_function=describe).trigger(1)
    number = await Task(task_function=maybe).trigger()
    number = await Task(task_function=maybe).trigger(4)
    untyped = Task(task_function=anything)
    await untyped.trigger("a")
    await untyped.trigger(1)
    await untyped.trigger()
    await Task(task_function=lambda value: value).trigger(object())
    await Task(task_function=lambda: 1).trigger()
    await TaskOnce(task_function=double).trigger(1)
    await TaskDebounced(task_function=double, debounce_time=0.1).trigger(1)
    chain = Taskchain(task_array=[doubler, starter, greet, untyped])
    await chain.trigger("anything")
    group = Taskparallel(task_array=[doubler, starter])
    results: list[Any] = await group.trigger(1)

    manager = TaskManager()
    manager.add_task(doubler)
    manager.add_task(starter)
    result: int | None = await manager.trigger_task(doubler, 1)
    result = await manager.trigger_task_constrained(doubler, 2, priority=1)
    await manager.trigger_task(starter)
    await manager.trigger_task(untyped, "a")
    await manager.trigger_task_by_name("anything", object())
    spawned: asyncio.Task[int | None] = manager.spawn(doubler, 1)
    manager.spawn("by-name", "any input")
    print(number, text, results, result, spawned)
"""

FAILS = """
from __future__ import annotations

from taskbuffer import Task, TaskDebounced, TaskManager, TaskOnce, task


async def double(x: int) -> int:
    return 2 * x


async def ready() -> str:
    return "ready"


def describe(x: int, setup: str) -> str:
    return f"{setup}: {x}"


@task
async def greet(name: str) -> str:
    return name


async def main() -> None:
    doubler = Task(task_function=double)
    starter = Task(task_function=ready)
    await doubler.trigger("a")  # error: arg-type
    await doubler.trigger_unbuffered("a")  # error: arg-type
    await greet.trigger(1)  # error: arg-type
    await starter.trigger(1)  # error: arg-type
    await Task(task_function=describe).trigger("a")  # error: arg-type
    await TaskOnce(task_function=double).trigger("a")  # error: arg-type
    await TaskDebounced(task_function=double, debounce_time=0.1).trigger("a")  # error: arg-type
    text: str = await doubler.trigger(1)  # error: assignment

    # mypy reports these as "Cannot infer value of type parameter "In"" (the task's input
    # type, which the input does not fit): the check is there, the wording is mypy's.
    manager = TaskManager()
    await manager.trigger_task(doubler, "a")  # error: misc
    await manager.trigger_task_constrained(greet, 1)  # error: misc
    manager.spawn(doubler, "a")  # error: misc
    manager.spawn(starter, 1)  # error: misc
    print(text)
"""

_ERROR = re.compile(r"^(?P<file>[\w.]+\.py):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")
_MARK = re.compile(r"# error: (?P<code>[\w-]+)$")


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[int, str]]]:
    """Run mypy once over every snippet; the errors it reports, as (line, code) per file."""
    directory = tmp_path_factory.mktemp("typing")
    (directory / "passes.py").write_text(PASSES, encoding="utf-8")
    (directory / "fails.py").write_text(FAILS, encoding="utf-8")
    quickstart = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    right = 'await greet.trigger("world")'
    assert quickstart.count(right) == 1, "examples/quickstart.py no longer triggers greet so"
    wrong = quickstart.replace(right, "await greet.trigger(42)")
    (directory / "quickstart.py").write_text(wrong, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--show-error-codes",
            "--no-pretty",
            "--no-error-summary",
            "passes.py",
            "fails.py",
            "quickstart.py",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # this checkout's taskbuffer, not another
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 2: mypy itself failed
    errors: dict[str, set[tuple[int, str]]] = {"passes.py": set(), "fails.py": set()}
    for line in result.stdout.splitlines():
        match = _ERROR.match(line)
        if match:
            errors.setdefault(match["file"], set()).add((int(match["line"]), match["code"]))
        else:
            assert ": note: " in line, result.stdout
    return errors


def test_correct_inputs_zero_parameter_tasks_and_chains_type_check(
    mypy_errors: dict[str, set[tuple[int, str]]],
) -> None:
    assert mypy_errors["passes.py"] == set()


def test_a_wrong_input_type_fails_on_each_trigger_path(
    mypy_errors: dict[str, set[tuple[int, str]]],
) -> None:
    expected = {
        (number, match["code"])
        for number, line in enumerate(FAILS.splitlines(), start=1)
        if (match := _MARK.search(line))
    }
    assert len(expected) == 12
    assert mypy_errors["fails.py"] == expected


def test_a_wrong_input_type_in_an_example_fails_mypy(
    mypy_errors: dict[str, set[tuple[int, str]]],
) -> None:
    source = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    line = next(
        number
        for number, text in enumerate(source.splitlines(), start=1)
        if 'await greet.trigger("world")' in text
    )
    assert mypy_errors.get("quickstart.py") == {(line, "arg-type")}
