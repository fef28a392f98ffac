"""``MODULE:ATTRIBUTE`` arguments of the command line: the object they name."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, TypeVar

__all__ = ("load_target",)

T = TypeVar("T")


def load_target(spec: str, kind: type[T]) -> T:
    """Import ``MODULE:ATTRIBUTE`` and return it as a ``kind``; an attribute that is a
    function of no arguments is called and its result used. The working directory is
    importable, as with ``python -m``.

    :raises argparse.ArgumentTypeError: a malformed spec, a module or attribute that cannot be
        found, or an object that is not a ``kind``.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise argparse.ArgumentTypeError(f"expected MODULE:ATTRIBUTE, not {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise argparse.ArgumentTypeError(f"cannot import {module_name!r}: {exc}") from exc
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise argparse.ArgumentTypeError(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not isinstance(value, kind) and callable(value):
        value = value()
    if not isinstance(value, kind):
        raise argparse.ArgumentTypeError(
            f"{spec} is not a {kind.__name__} (nor a function returning one): "
            f"{type(value).__name__}"
        )
    return value
