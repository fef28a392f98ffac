"""Exceptions raised by taskbuffer.

Every exception derives from :class:`TaskbufferError` and from the builtin that fits, so
callers can catch either::

    TaskbufferError
     ├── TaskNotFoundError            (KeyError)      unknown task name
     ├── TaskTimeoutError             (TimeoutError)  a run exceeded its ``timeout``
     ├── InvalidCronExpressionError   (ValueError)    a cron string croniter rejects
     ├── TaskManagerStoppedError      (RuntimeError)  trigger after/while ``stop()``
     ├── TaskParallelError            (ExceptionGroup) one or more tasks of a Taskparallel failed
     ├── TaskChainError               a task of a Taskchain failed
     ├── TaskExecutionError           ``add_execute_remove_task`` failed; carries the report
     ├── ServiceNotFoundError         (KeyError)      unknown service name
     ├── ServiceStartError            (RuntimeError)  ``ServiceManager.start()``: services failed
     ├── ServiceHealthCheckError      (RuntimeError)  a service failed its health checks
     ├── ServiceUnavailableError      (RuntimeError)  a task needs a service that will not run
     ├── JobFailedError               (RuntimeError)  a durable job failed; carries the job
     ├── JobCancelledError            (RuntimeError)  a durable job was cancelled; carries the job
     └── JobSchemaError               (RuntimeError)  a job store's schema is newer than the library

The three job errors live in ``taskbuffer/jobs/_errors.py`` (they carry a
:class:`~taskbuffer.jobs.Job`, and this module imports nothing of the jobs package); they are
exported from ``taskbuffer`` and ``taskbuffer.jobs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._validation import safe_str

if TYPE_CHECKING:
    from ._metadata import TaskExecutionReport

__all__ = (
    "InvalidCronExpressionError",
    "ServiceHealthCheckError",
    "ServiceNotFoundError",
    "ServiceStartError",
    "ServiceUnavailableError",
    "TaskChainError",
    "TaskExecutionError",
    "TaskManagerStoppedError",
    "TaskNotFoundError",
    "TaskParallelError",
    "TaskTimeoutError",
    "TaskbufferError",
)


class TaskbufferError(Exception):
    """Base class of every exception taskbuffer raises."""


class TaskNotFoundError(TaskbufferError, KeyError):
    """No task is registered under the given name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no task named {self.name!r} is registered with this TaskManager"


class TaskTimeoutError(TaskbufferError, TimeoutError):
    """A run took longer than its task's ``timeout``."""

    def __init__(self, task_name: str, timeout: float) -> None:
        super().__init__(f"task {task_name!r} timed out after {timeout:g} s")
        self.task_name = task_name
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_name, self.timeout))


class InvalidCronExpressionError(TaskbufferError, ValueError):
    """A cron string that cannot be parsed."""

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(
            f"invalid cron expression {expression!r}: {reason}; expected 5 fields "
            "(minute hour day-of-month month day-of-week) or 6 fields with seconds first "
            "(second minute hour day-of-month month day-of-week)"
        )
        self.expression = expression
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.expression, self.reason))


class TaskManagerStoppedError(TaskbufferError, RuntimeError):
    """The manager is stopped (or stopping) and cannot run this trigger."""


class TaskChainError(TaskbufferError):
    """A task of a :class:`~taskbuffer.Taskchain` failed; ``__cause__`` is the original error."""

    def __init__(self, chain_name: str, task_name: str, task_index: int, cause: BaseException):
        super().__init__(
            f"chain {chain_name!r} failed at task {task_name!r} (index {task_index}): "
            f"{type(cause).__name__}: {safe_str(cause)}"
        )
        self.chain_name = chain_name
        self.task_name = task_name
        self.task_index = task_index
        self._cause = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.chain_name, self.task_name, self.task_index, self._cause))


class TaskParallelError(TaskbufferError, ExceptionGroup[Exception]):
    """One or more tasks of a :class:`~taskbuffer.Taskparallel` failed; holds every error."""


class TaskExecutionError(TaskbufferError):
    """``add_execute_remove_task`` failed; ``report`` holds the run's report, error included."""

    def __init__(self, report: TaskExecutionReport, *args: Any) -> None:
        super().__init__(
            f"task {report.task_name!r} failed: "
            f"{type(report.error).__name__}: {safe_str(report.error)}",
            *args,
        )
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.report,))


class ServiceNotFoundError(TaskbufferError, KeyError):
    """No service is registered under the given name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no service named {self.name!r} is registered with this ServiceManager"


class ServiceStartError(TaskbufferError, RuntimeError):
    """``ServiceManager.start()`` could not start every service.

    ``failed`` maps the name of each service whose start failed (or passed its timeout) to
    that error; the services skipped because a dependency failed are not in it.
    """

    def __init__(self, failed: dict[str, BaseException]) -> None:
        listing = "; ".join(
            f"{name!r}: {type(error).__name__}: {safe_str(error)}" for name, error in failed.items()
        )
        count = len(failed)
        super().__init__(f"{count} service{'s' if count != 1 else ''} failed to start: {listing}")
        self.failed = dict(failed)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.failed,))


class ServiceHealthCheckError(TaskbufferError, RuntimeError):
    """A service failed ``failures`` health checks in a row; ``problem`` says how the last did.

    When the last check raised, that error is the ``__cause__``.
    """

    def __init__(self, service_name: str, failures: int, problem: str) -> None:
        super().__init__(
            f"service {service_name!r} failed {failures} health check"
            f"{'s' if failures != 1 else ''} in a row; the last {problem}"
        )
        self.service_name = service_name
        self.failures = failures
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.service_name, self.failures, self.problem))


class ServiceUnavailableError(TaskbufferError, RuntimeError):
    """A task needs a service that is not running and is not about to be."""

    def __init__(self, service_name: str, reason: str) -> None:
        super().__init__(f"service {service_name!r} is not available: {reason}")
        self.service_name = service_name
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.service_name, self.reason))
