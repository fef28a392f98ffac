"""The exceptions of durable jobs (drawn in the tree of ``taskbuffer/_exceptions.py``)."""

from __future__ import annotations

from typing import Any

from .._exceptions import TaskbufferError
from ._values import Job

__all__ = ("JobCancelledError", "JobFailedError", "JobSchemaError")


class JobFailedError(TaskbufferError, RuntimeError):
    """A durable job ended ``failed``; ``job`` is its final snapshot (``job.error`` says why)."""

    def __init__(self, job: Job) -> None:
        error = job.error
        reason = "no error recorded" if error is None else f"{error.type}: {error.message}"
        super().__init__(f"job {job.id!r} of task {job.task_name!r} failed: {reason}")
        self.job = job

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job,))


class JobCancelledError(TaskbufferError, RuntimeError):
    """A durable job ended ``cancelled``; ``job`` is its final snapshot."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id!r} of task {job.task_name!r} was cancelled")
        self.job = job

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job,))


class JobSchemaError(TaskbufferError, RuntimeError):
    """A job store holds a schema newer than this taskbuffer knows; it refuses to open."""
