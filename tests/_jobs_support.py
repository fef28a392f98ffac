"""Backends of the shared job store suite (not a test module).

A backend makes stores on a fresh, empty database and knows how to tamper with one for the
schema-version test. ``memory`` and ``sqlite`` live here. The PostgreSQL backend is the pg
helper's hook: ``tests/_pg_support.py`` provides a plain function
``job_backend(request: pytest.FixtureRequest) -> Backend`` (not a fixture: fixtures of a helper
module are invisible to pytest) that returns an object with the three methods below, on its
own server (started once per session, for example kept in ``request.config.stash``, and
stopped with ``request.session``'s finalizer or ``atexit``), a fresh database or schema per
``make`` call. It may call ``pytest.skip`` when PostgreSQL is not installed. When the module
or the function is missing, the ``postgres`` parameter skips; CI turns the skip of an
external test into a failure.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_asyncio

from taskbuffer.jobs import JobStore, MemoryJobStore, SQLiteJobStore

__all__ = ("Backend", "MemoryBackend", "Picky", "SQLiteBackend", "backend", "store")


class Picky:
    """A serializer: JSON, but once ``picky`` is set, a stored "unreadable" cannot be read
    back (as if another serializer had written it)."""

    picky = False

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()

    def loads(self, data: bytes) -> Any:
        if self.picky and data == b'"unreadable"':
            raise ValueError("not a value this serializer reads")
        return json.loads(data)


class Backend(Protocol):
    name: str

    def make(self, **options: Any) -> JobStore:
        """A new store (not opened) on a new, empty database."""

    def another(self, store: JobStore, **options: Any) -> JobStore:
        """A second store object (not opened) on ``store``'s database, as another process
        would have (the memory backend returns ``store`` itself)."""

    async def force_schema_version(self, store: JobStore, version: int) -> None:
        """Record ``version`` as the schema version of ``store``'s (opened) database."""


class MemoryBackend:
    name = "memory"

    def make(self, **options: Any) -> JobStore:
        return MemoryJobStore(**options)

    def another(self, store: JobStore, **options: Any) -> JobStore:
        return store

    async def force_schema_version(self, store: JobStore, version: int) -> None:
        assert isinstance(store, MemoryJobStore)
        store.schema_version = version


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def make(self, **options: Any) -> JobStore:
        self.count += 1
        return SQLiteJobStore(self.directory / f"jobs-{self.count}.db", **options)

    def another(self, store: JobStore, **options: Any) -> JobStore:
        assert isinstance(store, SQLiteJobStore)
        return SQLiteJobStore(store.path, **options)

    async def force_schema_version(self, store: JobStore, version: int) -> None:
        assert isinstance(store, SQLiteJobStore)
        with sqlite3.connect(store.path) as connection:
            connection.execute(
                "UPDATE taskbuffer_meta SET value = ? WHERE key = 'schema_version'",
                (str(version),),
            )
        connection.close()


# ----------------------------------------------------------------------------- fixtures
# Test modules import these two fixtures (``from _jobs_support import backend, store``).

try:  # the pg helper's module; without it the postgres param skips
    _pg_support: Any = importlib.import_module("_pg_support")
except ImportError:
    _pg_support = None

BACKENDS = [
    pytest.param("memory"),
    # SQLite's calls run on a real thread: real I/O, so these run on the real clock.
    pytest.param("sqlite", marks=pytest.mark.realtime),
    pytest.param("postgres", marks=[pytest.mark.external, pytest.mark.realtime]),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend of the shared suite in turn."""
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "sqlite":
        return SQLiteBackend(tmp_path)
    hook = getattr(_pg_support, "job_backend", None)
    if hook is None:
        pytest.skip("tests/_pg_support.py provides no job_backend(request) hook")
    pg: Backend = hook(request)
    return pg


@pytest_asyncio.fixture
async def store(backend: Backend) -> AsyncIterator[JobStore]:
    """An opened store on a fresh database, closed after the test."""
    made = backend.make(lease=30.0)
    await made.open()
    try:
        yield made
    finally:
        with contextlib.suppress(Exception):
            await made.close()
