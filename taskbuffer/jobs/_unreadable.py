"""Claimed jobs that a store cannot read: they fail at once instead of stranding their claim.

A job whose stored input the serializer's ``loads`` refuses (another serializer wrote it, or
the data is damaged) would be refused the same way on every try. Raising from the claim would
leave every job that the claim took held by nobody until their leases ran out, then claimed
together again, each lost attempt counted, until all of them failed as lost. Instead the claim
hands the worker the jobs it can read, and ends each unreadable one ``failed`` with the
serializer's error (logged on the ``taskbuffer`` logger), as every engine does alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from ._store import JobStore
from ._values import Claim, JobError, JobOutcome

__all__ = ("end_unreadable", "readable_claims")

logger = logging.getLogger("taskbuffer")

Row = TypeVar("Row")


def readable_claims(
    rows: Iterable[Row],
    claim_of: Callable[[Row], Claim],
    names: Callable[[Row], tuple[str, str]],
) -> tuple[list[Claim], list[JobOutcome]]:
    """The claims that ``claim_of`` makes of claimed ``rows``, and the outcomes that end the
    claim of each row it cannot read (``names(row)``: that job's id and token), to commit with
    :func:`end_unreadable` once the claim has committed."""
    claims: list[Claim] = []
    unreadable: list[JobOutcome] = []
    for row in rows:
        try:
            claims.append(claim_of(row))
        except Exception as error:  # whatever loads() raises; an interrupt goes on up
            job_id, token = names(row)
            failed = JobOutcome(
                job_id=job_id, token=token, outcome="failed", error=JobError.from_exception(error)
            )
            unreadable.append(failed)
    return claims, unreadable


async def end_unreadable(store: JobStore, outcomes: Sequence[JobOutcome], *, now: float) -> None:
    """Log and commit ``outcomes`` of :func:`readable_claims`, once the claim has committed. A
    store that fails now leaves those jobs to their leases (claimed again once they run out,
    as after any lost claim); one that is down waits for its reconnection, as every call does
    (the claim's other jobs then wait with it, and their leases may run out: as for any job
    held through an outage longer than the lease)."""
    if not outcomes:
        return
    for outcome in outcomes:  # logged once the claim has committed (it may fail, and be retried)
        error = outcome.error
        assert error is not None
        logger.error(
            "job %r: its stored input cannot be read (%s: %s); it fails without running",
            outcome.job_id,
            error.type,
            error.message,
        )
    ids = [outcome.job_id for outcome in outcomes]
    try:
        applied = await store.finish(outcomes, now=now)
    except Exception:
        logger.exception(
            "failing the unreadable job(s) %s did not commit; they are claimed again once "
            "their leases run out",
            ids,
        )
        return
    for job_id, ok in zip(ids, applied, strict=True):
        if not ok:
            logger.warning("job %r: no longer held by this claim; not failed here", job_id)
