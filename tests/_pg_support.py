"""PostgreSQL fixtures of the test suite (not a test module; ``conftest.py`` imports them).

``postgres_server``: one server per test session (:class:`_pg_server.PostgresServer`), skipped
where PostgreSQL is not installed; tests using it are marked ``external``, so CI fails rather
than skips them. ``postgres_job_backend``: the shared job store suite's PostgreSQL backend
(see ``_jobs_support.py``), which gives each store it makes a fresh schema of its own.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from _pg_server import PostgresServer, find_bindir

if TYPE_CHECKING:
    from taskbuffer.jobs import JobStore

__all__ = ("PostgresBackend", "postgres_job_backend", "postgres_server")

_schemas = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test session, started in a temporary directory.

    Tests that stop or restart it must leave it running. Each test should work in a schema
    or database of its own (``create_schema``, ``create_database``).
    """
    if find_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


class PostgresBackend:
    """The shared job store suite's backend: every :meth:`make` gets a fresh schema."""

    name = "postgres"

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.dsns: dict[int, str] = {}

    def new_dsn(self) -> str:
        """The URL of a fresh, empty schema on the session's server."""
        return self.server.create_schema(f"jobs_{next(_schemas)}")

    def make(self, **options: Any) -> JobStore:
        return self._store(self.new_dsn(), **options)

    def another(self, store: JobStore, **options: Any) -> JobStore:
        return self._store(self.dsns[id(store)], **options)

    def _store(self, dsn: str, **options: Any) -> JobStore:
        from taskbuffer.jobs.postgres import PostgresJobStore

        made = PostgresJobStore(dsn, **options)
        self.dsns[id(made)] = dsn
        return made

    async def force_schema_version(self, store: JobStore, version: int) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.dsns[id(store)])
        try:
            await connection.execute(
                "UPDATE taskbuffer_meta SET value = $1 WHERE key = 'schema_version'", str(version)
            )
        finally:
            await asyncio.shield(connection.close())


@pytest.fixture
def postgres_job_backend(postgres_server: PostgresServer) -> PostgresBackend:
    """The PostgreSQL backend of the shared job store suite."""
    pytest.importorskip("asyncpg")
    return PostgresBackend(postgres_server)
