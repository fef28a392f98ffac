"""taskbuffer: async task orchestration on asyncio.

Tasks, chains, parallel groups, debounced and run-once tasks, run under a ``TaskManager`` that
enforces key-based constraints, schedules cron runs and streams every lifecycle event through
a reactivex ``Subject``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._chain import Taskchain as Taskchain
from ._constraints import ConstraintGroupStatistics as ConstraintGroupStatistics
from ._constraints import RateLimit as RateLimit
from ._constraints import TaskConstraintGroup as TaskConstraintGroup
from ._debounced import TaskDebounced as TaskDebounced
from ._decorator import task as task
from ._events import EventSubject as EventSubject
from ._events import TaskEvent as TaskEvent
from ._events import TaskEventType as TaskEventType
from ._exceptions import InvalidCronExpressionError as InvalidCronExpressionError
from ._exceptions import ServiceHealthCheckError as ServiceHealthCheckError
from ._exceptions import ServiceNotFoundError as ServiceNotFoundError
from ._exceptions import ServiceStartError as ServiceStartError
from ._exceptions import ServiceUnavailableError as ServiceUnavailableError
from ._exceptions import TaskbufferError as TaskbufferError
from ._exceptions import TaskChainError as TaskChainError
from ._exceptions import TaskExecutionError as TaskExecutionError
from ._exceptions import TaskManagerStoppedError as TaskManagerStoppedError
from ._exceptions import TaskNotFoundError as TaskNotFoundError
from ._exceptions import TaskParallelError as TaskParallelError
from ._exceptions import TaskTimeoutError as TaskTimeoutError
from ._manager import TaskManager as TaskManager
from ._manager import TaskManagerStatistics as TaskManagerStatistics
from ._metadata import ScheduledTaskInfo as ScheduledTaskInfo
from ._metadata import TaskExecutionReport as TaskExecutionReport
from ._metadata import TaskMetadata as TaskMetadata
from ._metadata import TaskStatus as TaskStatus
from ._once import TaskOnce as TaskOnce
from ._parallel import Taskparallel as Taskparallel
from ._run import RunInfo as RunInfo
from ._run import RunState as RunState
from ._run import current_run as current_run
from ._steps import StepSpec as StepSpec
from ._steps import StepStatus as StepStatus
from ._steps import TaskStep as TaskStep
from ._steps import TaskStepInfo as TaskStepInfo
from ._task import Task as Task
from ._task import TaskOptions as TaskOptions

if _TYPE_CHECKING:
    from ._service import Service as Service
    from ._service import ServiceEvent as ServiceEvent
    from ._service import ServiceEventType as ServiceEventType
    from ._service import ServiceMetadata as ServiceMetadata
    from ._service import ServiceOptions as ServiceOptions
    from ._service import ServiceState as ServiceState
    from ._service import service as service
    from ._service_manager import ServiceManager as ServiceManager
    from ._service_manager import ServiceManagerStatistics as ServiceManagerStatistics
    from .jobs import Job as Job
    from .jobs import JobAttempt as JobAttempt
    from .jobs import JobCancelledError as JobCancelledError
    from .jobs import JobError as JobError
    from .jobs import JobFailedError as JobFailedError
    from .jobs import JobSchemaError as JobSchemaError
    from .jobs import JobStore as JobStore
    from .jobs import MemoryJobStore as MemoryJobStore
    from .jobs import SQLiteJobStore as SQLiteJobStore

# Services load on first use (PEP 562): an application that only runs tasks never pays for
# importing them. Type checkers see the imports above.
_LAZY = {
    "Service": "._service",
    "ServiceEvent": "._service",
    "ServiceEventType": "._service",
    "ServiceMetadata": "._service",
    "ServiceOptions": "._service",
    "ServiceState": "._service",
    "service": "._service",
    "ServiceManager": "._service_manager",
    "ServiceManagerStatistics": "._service_manager",
    # Durable jobs likewise load when first named (a manager without a store never needs them).
    "Job": ".jobs",
    "JobAttempt": ".jobs",
    "JobCancelledError": ".jobs",
    "JobError": ".jobs",
    "JobFailedError": ".jobs",
    "JobSchemaError": ".jobs",
    "JobStore": ".jobs",
    "MemoryJobStore": ".jobs",
    "SQLiteJobStore": ".jobs",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taskbuffer' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


# The release, as in pyproject.toml (tests/test_package.py keeps the two equal). A literal, not
# importlib.metadata: that import alone costs a fifth of ``import taskbuffer``.
__version__ = "0.1.0"

__all__ = [
    "ConstraintGroupStatistics",
    "EventSubject",
    "InvalidCronExpressionError",
    "Job",
    "JobAttempt",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobSchemaError",
    "JobStore",
    "MemoryJobStore",
    "RateLimit",
    "RunInfo",
    "RunState",
    "SQLiteJobStore",
    "ScheduledTaskInfo",
    "Service",
    "ServiceEvent",
    "ServiceEventType",
    "ServiceHealthCheckError",
    "ServiceManager",
    "ServiceManagerStatistics",
    "ServiceMetadata",
    "ServiceNotFoundError",
    "ServiceOptions",
    "ServiceStartError",
    "ServiceState",
    "ServiceUnavailableError",
    "StepSpec",
    "StepStatus",
    "Task",
    "TaskChainError",
    "TaskConstraintGroup",
    "TaskDebounced",
    "TaskEvent",
    "TaskEventType",
    "TaskExecutionError",
    "TaskExecutionReport",
    "TaskManager",
    "TaskManagerStatistics",
    "TaskManagerStoppedError",
    "TaskMetadata",
    "TaskNotFoundError",
    "TaskOnce",
    "TaskOptions",
    "TaskParallelError",
    "TaskStatus",
    "TaskStep",
    "TaskStepInfo",
    "TaskTimeoutError",
    "TaskbufferError",
    "Taskchain",
    "Taskparallel",
    "current_run",
    "service",
    "task",
]
