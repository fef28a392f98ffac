"""The exception tree: every error is a ``TaskbufferError`` and the builtin that fits."""

from __future__ import annotations

import pickle

import pytest

from taskbuffer import (
    InvalidCronExpressionError,
    TaskbufferError,
    TaskChainError,
    TaskExecutionError,
    TaskExecutionReport,
    TaskManagerStoppedError,
    TaskNotFoundError,
    TaskParallelError,
    TaskTimeoutError,
)


def test_base_is_an_exception() -> None:
    assert issubclass(TaskbufferError, Exception)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (TaskNotFoundError, KeyError),
        (TaskTimeoutError, TimeoutError),
        (InvalidCronExpressionError, ValueError),
        (TaskManagerStoppedError, RuntimeError),
        (TaskParallelError, ExceptionGroup),
        (TaskChainError, Exception),
        (TaskExecutionError, Exception),
    ],
)
def test_every_error_derives_from_the_base_and_the_fitting_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, TaskbufferError)
    assert issubclass(error, builtin)


def test_task_not_found_error_is_a_key_error_naming_the_task() -> None:
    with pytest.raises(KeyError) as caught:
        raise TaskNotFoundError("ghost")
    error = caught.value
    assert isinstance(error, TaskNotFoundError)
    assert error.name == "ghost"
    assert str(error) == "no task named 'ghost' is registered with this TaskManager"


def test_task_timeout_error_fields_and_message() -> None:
    error = TaskTimeoutError("slow", 1.5)
    assert (error.task_name, error.timeout) == ("slow", 1.5)
    assert str(error) == "task 'slow' timed out after 1.5 s"
    with pytest.raises(TimeoutError):
        raise error


def test_invalid_cron_expression_error_says_what_is_accepted() -> None:
    error = InvalidCronExpressionError("* * *", "3 fields")
    assert error.expression == "* * *"
    message = str(error)
    assert message.startswith("invalid cron expression '* * *': 3 fields")
    assert "5 fields" in message and "6 fields with seconds first" in message
    with pytest.raises(ValueError):
        raise error


def test_task_manager_stopped_error_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="stopped"):
        raise TaskManagerStoppedError("the manager is stopped")


def test_task_chain_error_fields_and_message() -> None:
    cause = ValueError("bad input")
    error = TaskChainError("pipeline", "parse", 2, cause)
    assert (error.chain_name, error.task_name, error.task_index) == ("pipeline", "parse", 2)
    assert str(error) == "chain 'pipeline' failed at task 'parse' (index 2): ValueError: bad input"


def test_task_parallel_error_is_an_exception_group() -> None:
    errors = [ValueError("a"), KeyError("b")]
    group = TaskParallelError("2 of 3 tasks failed", errors)
    assert list(group.exceptions) == errors
    assert group.message == "2 of 3 tasks failed"
    matched, rest = group.split(ValueError)
    assert matched is not None and rest is not None
    assert [str(e) for e in matched.exceptions] == ["a"]
    with pytest.raises(TaskbufferError):
        raise group


def test_task_execution_error_carries_the_report() -> None:
    cause = RuntimeError("disk full")
    report = TaskExecutionReport(
        task_name="backup",
        start_time=10.0,
        end_time=12.5,
        duration=2.5,
        steps=[],
        steps_completed=[],
        progress=0,
        result=None,
        error=cause,
    )
    error = TaskExecutionError(report)
    assert error.report is report
    assert str(error) == "task 'backup' failed: RuntimeError: disk full"
    assert report.to_dict()["error"] == "disk full"


@pytest.mark.parametrize(
    "error",
    [
        TaskNotFoundError("missing"),
        TaskTimeoutError("slow", 1.5),
        InvalidCronExpressionError("* *", "needs 5 or 6 fields"),
        TaskChainError("etl", "parse", 1, ValueError("bad row")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_exceptions_survive_pickling(error: Exception) -> None:
    # Errors cross process boundaries (multiprocessing, executors): they must unpickle.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    for name, value in vars(error).items():
        if isinstance(value, BaseException):  # exceptions compare by identity: compare text
            assert repr(getattr(copy, name)) == repr(value)
        else:
            assert getattr(copy, name) == value
