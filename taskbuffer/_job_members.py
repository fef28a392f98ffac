"""The public job members of :class:`~taskbuffer.TaskManager`, as a base class.

They live here so the manager's module stays about triggers; each delegates to the manager's
:class:`~taskbuffer._manager_jobs.JobSide` and raises ``RuntimeError`` naming the
``job_store`` option when the manager was built without one.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager_jobs import JobSide
    from ._task import Task
    from .jobs import Job, JobAttempt, JobStatus

__all__ = ("JobMembers",)


class JobMembers:
    """Durable job members of a manager (see the "Durable jobs" section of the README)."""

    __slots__ = ()

    _jobs: JobSide | None

    def _job_side(self, member: str) -> JobSide:
        side = self._jobs
        if side is None:
            raise RuntimeError(
                f"TaskManager.{member}() needs a job store: build the manager with "
                "TaskManager(job_store=...) (a JobStore, or a URL such as sqlite:///jobs.db)"
            )
        return side

    async def enqueue(
        self,
        task_or_name: Task[Any, Any] | str,
        input: Any = None,
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: float | None = None,
        dedupe_key: str | None = None,
        max_attempts: int = 3,
    ) -> Job:
        """Store a job for a registered task; returns once it is committed.

        A naive ``run_at`` is read in the manager's time zone; ``run_at`` and ``delay``
        (seconds) are exclusive. While a job with the same ``dedupe_key`` is queued or
        running, that job is returned instead of storing another. ``max_attempts`` bounds the
        claims whose lease was lost.

        :raises TaskNotFoundError: the task is not registered on this manager.
        :raises TypeError: the serializer cannot encode ``input`` (the message says where).
        :raises RuntimeError: the manager has no job store.
        """
        return await self._job_side("enqueue").enqueue(
            task_or_name,
            input,
            priority=priority,
            run_at=run_at,
            delay=delay,
            dedupe_key=dedupe_key,
            max_attempts=max_attempts,
        )

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or ``None``."""
        return await self._job_side("get_job").get_job(job_id)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        task_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally of one status and one task, ``limit`` from ``offset``."""
        side = self._job_side("list_jobs")
        return await side.list_jobs(status=status, task_name=task_name, limit=limit, offset=offset)

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job: a queued one at once, a running one on whichever worker holds it
        (within one lease-renewal interval). False when it has finished already (or is
        unknown)."""
        return await self._job_side("cancel_job").cancel_job(job_id)

    async def retry_job(self, job_id: str) -> Job:
        """Put a failed or cancelled job back to ``queued`` (its attempts start again).

        :raises KeyError: no such job.
        :raises ValueError: the job is neither failed nor cancelled.
        """
        return await self._job_side("retry_job").retry_job(job_id)

    async def wait_for_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the API contract names it so
    ) -> Job:
        """Wait until the job has finished (any outcome) and return it.

        :raises TimeoutError: ``timeout`` seconds passed first.
        :raises KeyError: no such job.
        """
        return await self._job_side("wait_for_job").wait_for_job(job_id, timeout)

    async def job_result(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the API contract names it so
    ) -> Any:
        """Wait for the job and return its result.

        :raises JobFailedError: it failed (``.job`` holds it, ``.job.error`` why).
        :raises JobCancelledError: it was cancelled.
        :raises TimeoutError: ``timeout`` seconds passed first.
        """
        from .jobs import JobCancelledError, JobFailedError

        job = await self._job_side("job_result").wait_for_job(job_id, timeout)
        if job.status == "failed":
            raise JobFailedError(job)
        if job.status == "cancelled":
            raise JobCancelledError(job)
        return job.result

    async def get_job_attempts(self, job_id: str) -> list[JobAttempt]:
        """The audit trail of a job: every claim, who made it, when, and how it ended."""
        return await self._job_side("get_job_attempts").get_job_attempts(job_id)
