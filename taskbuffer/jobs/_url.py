"""Stores named by URL: ``sqlite:///rel.db``, ``sqlite:////abs.db``, ``postgresql://...``."""

from __future__ import annotations

from typing import Any

from .._validation import safe_repr
from ._store import JobStore

__all__ = ("job_store_from_url", "sqlite_path_from_url")


def job_store_from_url(url: str, **options: Any) -> JobStore:
    """The store a URL names, built with ``options`` (``lease``, ``retention``, ``serializer``).

    ``sqlite:///jobs.db`` is relative to the working directory and ``sqlite:////abs/jobs.db``
    absolute (as SQLAlchemy spells them); ``postgresql://`` (or ``postgres://``) loads
    ``taskbuffer.jobs.postgres``, which needs the ``taskbuffer[postgres]`` extra.

    :raises ValueError: an unknown scheme or a URL without a path.
    """
    if not isinstance(url, str):
        raise TypeError(f"job_store URL must be a str, not {safe_repr(url)}")
    if url.startswith("sqlite:"):
        from ._sqlite import SQLiteJobStore

        return SQLiteJobStore(sqlite_path_from_url(url), **options)
    if url.startswith(("postgresql://", "postgres://", "postgresql+")):
        # The extra's module, loaded only when asked for (by name: the core never imports it).
        from importlib import import_module

        postgres = import_module("taskbuffer.jobs.postgres")
        store: JobStore = postgres.PostgresJobStore(url, **options)
        return store
    raise ValueError(
        f"job_store URL {url!r} has an unknown scheme: expected sqlite:///path.db, "
        "sqlite:////absolute/path.db or postgresql://user@host/db"
    )


def sqlite_path_from_url(url: str) -> str:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL.

    :raises ValueError: not a ``sqlite:///`` URL, or no path in it.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"job_store URL {url!r} is not a SQLite URL: expected sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    return url[len(prefix) :]
