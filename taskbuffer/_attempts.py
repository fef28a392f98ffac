"""How one attempt of a run executes: setup, pre-task, function, after-task; and the retry
policy and time limit around attempts.

``Attempts`` is the innermost base of :class:`~taskbuffer.Task`: it owns how the task's
function is called and retried. ``TaskRunner`` (``_runner.py``) wraps attempts into runs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from ._emitter import EventSource
from ._exceptions import TaskTimeoutError
from ._validation import (
    check_count,
    check_error_filter,
    check_number,
    check_seconds,
    reraise_interrupt_later,
    safe_repr,
)

if TYPE_CHECKING:
    from ._run import Run

__all__ = ("Attempts",)

logger = logging.getLogger("taskbuffer")

Linked = Any  # a pre- or after-task reference: a Task or a callable returning one


def _arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments to pass: 0, 1 (input) or 2 (input, setup value)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: give them the input
        return 1
    positional = required = 0
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return 2
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional += 1
            required += param.default is param.empty
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            raise TypeError(
                f"task_function {fn!r} has a required keyword-only parameter {param.name!r}; "
                "it is called with 0, 1 (input) or 2 (input, setup value) positional arguments"
            )
    if required > 2:
        raise TypeError(
            f"task_function {safe_repr(fn)} requires {required} positional parameters; it is "
            "called with 0, 1 (input) or 2 (input, setup value) positional arguments"
        )
    return min(positional, 2)


def _call_of(function: Callable[..., Any], task: Attempts) -> Callable[[Any], Any]:
    """One callable taking the input, so a run never re-decides how to call the function."""
    arity = _arity(function)
    if arity == 1:
        return function
    if arity == 0:
        return lambda _input: function()
    return lambda input: function(input, task._setup_value)


class Attempts(EventSource):
    """The attempt half of a task (see the module docstring)."""

    __slots__ = (
        "_after_task",
        "_call",
        "_is_async",
        "_linked",
        "_bare",
        "_plain",
        "_pre_task",
        "_retries",
        "_retry_backoff",
        "_retry_delay",
        "_retry_jitter",
        "_retry_max_delay",
        "_retry_on",
        "_setup",
        "_setup_done",
        "_setup_task",
        "_setup_value",
        "_sync_warned",
        "_timeout",
        "catch_errors",
    )

    def _init_attempts(
        self,
        function: Callable[..., Any],
        *,
        linked: Callable[[Any, set[Any]], Coroutine[Any, Any, Any]],
        pre_task: Linked | None,
        after_task: Linked | None,
        setup: Callable[[], Any] | None,
        catch_errors: bool,
        timeout: float | None,
        retries: int,
        retry_delay: float,
        retry_backoff: float,
        retry_on: Any,
        retry_jitter: float,
        retry_max_delay: float | None,
    ) -> None:
        """Check and set how attempts execute."""
        check_count("retries", retries, minimum=0)
        check_number("retry_backoff", retry_backoff, minimum=1)
        # math.inf means no limit and is stored as None, which keeps to_dict() JSON-clean.
        timeout = check_seconds("timeout", timeout, positive=True, infinite=True, none=True)
        retry_delay = check_seconds("retry_delay", retry_delay) or 0.0
        retry_on = check_error_filter("retry_on", retry_on)
        check_number("retry_jitter", retry_jitter, minimum=0, maximum=1)
        retry_max_delay = check_seconds(
            "retry_max_delay", retry_max_delay, infinite=True, none=True
        )
        for label, ref in (("pre_task", pre_task), ("after_task", after_task)):
            if ref is not None and not isinstance(ref, Attempts) and not callable(ref):
                raise TypeError(
                    f"{label} must be a Task or a callable returning one, not {safe_repr(ref)}"
                )
        if setup is not None and not callable(setup):
            raise TypeError(f"task_setup must be callable or None, not {safe_repr(setup)}")
        EventSource.__init__(self)
        self._sync_warned = False  # see _warn_sync_timeout
        self._linked = linked  # how this task runs as another's pre- or after-task
        self._pre_task = pre_task
        self._after_task = after_task
        self._setup = setup
        self._setup_done = False
        self._setup_value: Any = None
        self._setup_task: asyncio.Task[None] | None = None
        self.catch_errors = catch_errors
        self._timeout = timeout
        self._retries = retries
        self._retry_delay = retry_delay
        self._retry_backoff = float(retry_backoff)
        self._retry_on = retry_on  # a tuple of classes, or a predicate
        self._retry_jitter = float(retry_jitter)
        self._retry_max_delay = retry_max_delay
        self._call = _call_of(function, self)
        # Nothing around the call: _perform calls it in place.
        self._plain = not (setup or pre_task or after_task or retries or timeout is not None)
        self._is_async = inspect.iscoroutinefunction(function)
        self._bare = self._plain and self._is_async  # awaited in place: the hot path

    def _task_name(self) -> str:
        name: str | None = getattr(self, "name", None)
        return name or "unnamed"

    async def _attempts(self, input: Any, visited: set[Any] | None, run: Run) -> Any:
        delay = self._retry_delay
        attempt = 0
        visited_before = frozenset(visited or ())
        while True:
            if attempt and visited is not None:
                # Every attempt starts from the pre-task: forget what a failed attempt visited.
                visited.intersection_update(visited_before)
            try:
                if self._timeout is None:
                    return await self._attempt(input, visited)
                return await self._attempt_with_timeout(input, visited, self._timeout)
            except Exception as exc:
                # Only an Exception is retried: a cancellation or an interrupt ends the run.
                if attempt >= self._retries or not self._should_retry(exc):
                    raise
                attempt += 1
                run.attempt = attempt + 1  # the retrying event announces the next attempt
                self._emit("retrying", "running", run, error=exc)
                logger.debug("task %r attempt %d failed; retrying", self._task_name(), attempt)
                pause = self._pause(delay)
                if pause > 0:
                    await asyncio.sleep(pause)
                delay *= self._retry_backoff

    def _should_retry(self, error: Exception) -> bool:
        """Whether ``retry_on`` lets ``error`` be retried.

        A predicate that raises is a bug of its own, logged; the run then fails with the
        error it was asked about (retrying on a broken predicate could retry forever-failing
        work, and raising the predicate's error would hide the run's own).
        """
        retry_on = self._retry_on
        if isinstance(retry_on, tuple):
            return isinstance(error, retry_on)
        try:
            return bool(retry_on(error))
        except BaseException as exc:  # the run's own error goes on; this one is logged
            logger.error(
                "task %r: retry_on %s raised; the error is not retried",
                self._task_name(),
                safe_repr(retry_on),
                exc_info=exc,
            )
            reraise_interrupt_later(exc)
            return False

    def _pause(self, delay: float) -> float:
        """The pause before a retry whose unjittered delay is ``delay``: times the jitter
        factor, then capped at ``retry_max_delay``."""
        jitter = self._retry_jitter
        if jitter:
            factor = random.uniform(1 - jitter, 1 + jitter)
            delay = delay * factor if factor else 0.0  # inf * 0 would be NaN
        cap = self._retry_max_delay
        if cap is not None and delay > cap:
            delay = cap
        return delay

    async def _attempt_with_timeout(
        self, input: Any, visited: set[Any] | None, seconds: float
    ) -> Any:
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await self._attempt(input, visited)
        except TimeoutError:
            if deadline.expired():
                raise TaskTimeoutError(self._task_name(), seconds) from None
            raise

    async def _attempt(self, input: Any, visited: set[Any] | None) -> Any:
        if self._setup is not None and not self._setup_done:
            await self._ensure_setup()
        pre, after = self._pre_task, self._after_task
        if pre is not None or after is not None:
            if visited is None:
                visited = {self}
            else:
                visited.add(self)
            if pre is not None:
                pre_task = _resolve(pre, "pre_task")
                if pre_task not in visited:
                    visited.add(pre_task)
                    await pre_task._linked(input, visited)
        value = self._call(input)
        if self._is_async or inspect.isawaitable(value):
            result = await cast(Awaitable[Any], value)
        else:
            result = value
            if self._timeout is not None and not self._sync_warned:
                self._sync_warned = True
                self._warn_sync_timeout(self._timeout)
        if after is not None:
            assert visited is not None
            after_task = _resolve(after, "after_task")
            if after_task not in visited:
                visited.add(after_task)
                await after_task._linked(result, visited)
        return result

    def _warn_sync_timeout(self, timeout: float) -> None:
        raise NotImplementedError  # Task's: it knows the function's definition

    async def _ensure_setup(self) -> None:
        """Run ``task_setup`` once; concurrent first runs share one setup."""
        loop = asyncio.get_running_loop()
        setup_task = self._setup_task
        if setup_task is None or setup_task.get_loop() is not loop:
            setup_task = self._setup_task = loop.create_task(self._do_setup())
        await asyncio.shield(setup_task)

    async def _do_setup(self) -> None:
        assert self._setup is not None
        try:
            value = self._setup()
            if inspect.isawaitable(value):
                value = await value
        except BaseException:
            self._setup_task = None  # the next run tries again
            raise
        self._setup_value = value
        self._setup_done = True
        self._setup_task = None


def _resolve(ref: Linked, label: str) -> Attempts:
    if isinstance(ref, Attempts):
        return ref
    resolved = ref()
    if not isinstance(resolved, Attempts):
        raise TypeError(f"{label} factory must return a Task, not {safe_repr(resolved)}")
    return resolved
