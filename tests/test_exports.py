"""The public surface: ``taskbuffer.__all__`` is sorted and complete, and every name imports."""

from __future__ import annotations
import __future__

import importlib
import inspect
import types
from pathlib import Path

import taskbuffer


def _public_names() -> set[str]:
    """Names bound in the package that a user could import, minus submodules and __future__."""
    return {
        name
        for name, value in vars(taskbuffer).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    }


def test_all_is_a_sorted_sequence_of_unique_strings() -> None:
    names = list(taskbuffer.__all__)
    assert all(isinstance(name, str) for name in names)
    assert len(set(names)) == len(names), "duplicates in __all__"
    assert names == sorted(names), "__all__ is not sorted"


def test_every_public_name_is_in_all() -> None:
    missing = _public_names() - set(taskbuffer.__all__)
    assert not missing, f"public but not in __all__: {sorted(missing)}"


def test_every_name_in_all_can_be_imported() -> None:
    module = importlib.import_module("taskbuffer")
    for name in taskbuffer.__all__:
        assert hasattr(module, name), f"{name!r} is in __all__ but not importable"
    namespace: dict[str, object] = {}
    exec("from taskbuffer import *", namespace)
    assert set(taskbuffer.__all__) <= set(namespace)


def test_exported_classes_and_functions_are_documented() -> None:
    undocumented = [
        name
        for name in taskbuffer.__all__
        if (inspect.isclass(value := getattr(taskbuffer, name)) or inspect.isfunction(value))
        and not (value.__doc__ or "").strip()
    ]
    assert not undocumented, f"no docstring: {undocumented}"


def test_exported_objects_live_in_the_package() -> None:
    foreign = [
        name
        for name in taskbuffer.__all__
        if (inspect.isclass(value := getattr(taskbuffer, name)) or inspect.isfunction(value))
        and not value.__module__.startswith("taskbuffer")
    ]
    assert not foreign, f"re-exported from elsewhere: {foreign}"


def test_package_ships_py_typed() -> None:
    assert (Path(taskbuffer.__file__).parent / "py.typed").is_file()
