"""``@task``: a :class:`~taskbuffer.Task` from a function."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from typing_extensions import Unpack

from ._task import In, Task, TaskOptions

__all__ = ("task",)

T = TypeVar("T")


@overload
def task(function: Callable[[In], Awaitable[T]], /) -> Task[T, dict[str, Any], In]: ...
@overload
def task(function: Callable[[In], T], /) -> Task[T, dict[str, Any], In]: ...
@overload
def task(function: Callable[[], Awaitable[T]], /) -> Task[T, dict[str, Any], None]: ...
@overload
def task(function: Callable[[], T], /) -> Task[T, dict[str, Any], None]: ...
@overload
def task(function: Callable[[In, Any], Awaitable[T]], /) -> Task[T, dict[str, Any], In]: ...
@overload
def task(function: Callable[[In, Any], T], /) -> Task[T, dict[str, Any], In]: ...
@overload
def task(function: None = None, /, **options: Unpack[TaskOptions]) -> _TaskDecorator: ...
def task(
    function: Callable[..., Any] | None = None, /, **options: Unpack[TaskOptions]
) -> Task[Any] | _TaskDecorator:
    """Build a :class:`Task` from a function: ``@task`` or ``@task(name="greet", ...)``."""
    if function is not None:
        return Task(task_function=function, **options)
    return _TaskDecorator(options)


class _TaskDecorator:
    __slots__ = ("_options",)

    def __init__(self, options: TaskOptions) -> None:
        self._options = options

    @overload
    def __call__(
        self, function: Callable[[In], Awaitable[T]], /
    ) -> Task[T, dict[str, Any], In]: ...
    @overload
    def __call__(self, function: Callable[[In], T], /) -> Task[T, dict[str, Any], In]: ...
    @overload
    def __call__(
        self, function: Callable[[], Awaitable[T]], /
    ) -> Task[T, dict[str, Any], None]: ...
    @overload
    def __call__(self, function: Callable[[], T], /) -> Task[T, dict[str, Any], None]: ...
    @overload
    def __call__(
        self, function: Callable[[In, Any], Awaitable[T]], /
    ) -> Task[T, dict[str, Any], In]: ...
    @overload
    def __call__(self, function: Callable[[In, Any], T], /) -> Task[T, dict[str, Any], In]: ...
    def __call__(self, function: Callable[..., Any], /) -> Task[Any]:
        return Task(task_function=function, **self._options)
