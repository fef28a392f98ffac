"""Durable jobs: triggers written to a store before they run.

A job survives a crash of the process that asked for it and of the process running it, and
several processes (on one host or many) share the work. :class:`JobStore` is the interface;
:class:`MemoryJobStore` (tests) and :class:`SQLiteJobStore` (the embedded default) implement it
here, ``taskbuffer.jobs.postgres.PostgresJobStore`` in the ``taskbuffer[postgres]`` extra.
"""

from __future__ import annotations

from ._errors import JobCancelledError as JobCancelledError
from ._errors import JobFailedError as JobFailedError
from ._errors import JobSchemaError as JobSchemaError
from ._memory import MemoryJobStore as MemoryJobStore
from ._sqlite import SQLiteJobStore as SQLiteJobStore
from ._store import SCHEMA_VERSION as SCHEMA_VERSION
from ._store import JobStore as JobStore
from ._url import job_store_from_url as job_store_from_url
from ._values import AttemptOutcome as AttemptOutcome
from ._values import Claim as Claim
from ._values import Job as Job
from ._values import JobAttempt as JobAttempt
from ._values import JobError as JobError
from ._values import JobOutcome as JobOutcome
from ._values import JobRequest as JobRequest
from ._values import JobSerializer as JobSerializer
from ._values import JobStatus as JobStatus
from ._values import JSONSerializer as JSONSerializer
from ._values import RenewReport as RenewReport

__all__ = (
    "SCHEMA_VERSION",
    "AttemptOutcome",
    "Claim",
    "JSONSerializer",
    "Job",
    "JobAttempt",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobOutcome",
    "JobRequest",
    "JobSchemaError",
    "JobSerializer",
    "JobStatus",
    "JobStore",
    "MemoryJobStore",
    "RenewReport",
    "SQLiteJobStore",
    "job_store_from_url",
)
