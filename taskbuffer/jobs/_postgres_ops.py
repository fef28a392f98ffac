"""The PostgreSQL job store's multi-statement operations on one connection (see
:mod:`taskbuffer.jobs.postgres`): a worker's busy cycle, and the refresh of the statistics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from . import _postgres_sql as sql
from ._postgres_link import Connection
from ._values import JobOutcome, ordered_id

__all__ = ("applied_outcomes", "finish_and_claim_rows", "refresh_statistics", "token_prefix")


def applied_outcomes(rows: Sequence[asyncpg.Record]) -> set[tuple[str, str]]:
    """The (id, token) of each outcome that a finish applied."""
    return {(row["id"], row["token"]) for row in rows}


def token_prefix() -> str:
    """The first part of the lease tokens of one claim statement (each try its own): the
    start of a fresh :func:`ordered_id`, unique with the seq of the job that follows it."""
    return ordered_id()[:24]


async def finish_and_claim_rows(
    connection: Connection,
    outcomes: Sequence[JobOutcome],
    finish: tuple[Any, ...],
    claim: tuple[Any, ...],
) -> tuple[set[tuple[str, str]], list[asyncpg.Record]]:
    """Finish and claim in one statement: BUSY, or FINISH_AND_CLAIM (which reaps and records
    releases) when a job is given back. When BUSY finds that another job's lease ran out it
    only finishes, and CLAIM (which reaps first) claims after it. ``finish`` and ``claim``
    are the parameters of FINISH and CLAIM (without the token prefix)."""
    if all(o.outcome != "released" for o in outcomes):
        names, limit, worker_id, lease = claim[1:5]
        rows = await connection.fetch(
            sql.BUSY, *finish, names, limit, worker_id, lease, token_prefix()
        )
        if rows[0]["lapsed"]:  # (rare: a worker died or hung) its outcomes are committed
            claimed = await connection.fetch(sql.CLAIM, *claim, token_prefix())
            return _done(rows[0]), claimed
    else:
        rows = await connection.fetch(sql.FINISH_AND_CLAIM, *finish, *claim, token_prefix())
    return _done(rows[0]), [row for row in rows if row["id"] is not None]


def _done(first: asyncpg.Record) -> set[tuple[str, str]]:
    """The (id, token) of the outcomes that the busy statement whose first row this is applied."""
    return set(zip(first["done_ids"] or (), first["done_tokens"] or (), strict=True))


def refresh_statistics(added: int) -> Callable[[Connection], Awaitable[None]]:
    """ANALYZE the jobs table when a batch of ``added`` jobs at least doubled it since its
    statistics were taken (none yet: -1): else, until autovacuum's next pass (up to a minute),
    the planner takes the queue for tiny and each claim sorts every queued job."""

    async def refresh(connection: Connection) -> None:
        analyzed = await connection.fetchval(sql.ANALYZED_ROWS)
        if analyzed is None or analyzed <= added:
            await connection.execute(sql.ANALYZE)

    return refresh
