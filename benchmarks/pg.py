"""Where the benchmarks get a PostgreSQL server: the test suite's ``tests/_pg_server.py``.

Each measuring process that needs PostgreSQL starts its own durable server (fsync and
synchronous commits on, as in production) in a temporary directory, and removes it after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

__all__ = ("load_pg_server", "postgres_dsn", "postgres_missing")

ROOT = Path(__file__).resolve().parent.parent


def load_pg_server() -> ModuleType:
    """``tests/_pg_server.py``, loaded by path (``tests`` is not a package)."""
    name = "_pg_server"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "_pg_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot be measured here, or ``None`` when it can."""
    if importlib.util.find_spec("asyncpg") is None:
        return "asyncpg is not installed (pip install 'taskbuffer[postgres]')"
    if load_pg_server().find_bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    return None


@contextlib.contextmanager
def postgres_dsn() -> Iterator[str]:
    """The URL of a fresh durable server's ``postgres`` database, for the ``with`` block."""
    with load_pg_server().running_server(durable=True) as server:
        yield server.dsn
