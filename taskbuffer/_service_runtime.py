"""The lifecycle state of one service, which its ``ServiceManager`` drives.

A :class:`~taskbuffer.Service` holds its options and shows its state; the state itself (where
it is in its lifecycle, the instance ``start`` returned, restarts, the last error) lives in
the service's :class:`ServiceRuntime`, whose operations (open, close, probe, enter a state)
the manager calls. ``_service.py`` hands the runtime of a service out with ``runtime_of``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._clock import now_wall
from ._service_info import ServiceState
from ._validation import reraise_interrupt_later, safe_repr, safe_str

__all__ = ("ServiceRuntime", "effective_limit", "is_cancellation")

logger = logging.getLogger("taskbuffer")

T = TypeVar("T")


def effective_limit(limit: float | None, default: float | None) -> float | None:
    """The limit to apply: the service's own, else the manager's; ``None`` = no limit."""
    chosen = default if limit is None else limit
    return None if chosen is None or chosen == math.inf else chosen


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` is the current task being cancelled, which must go on.

    A ``CancelledError`` a callback raises of its own accord while nobody cancels the task is
    a failure of that callback like any other error, and so is any ``BaseException``
    subclass; a ``KeyboardInterrupt`` or ``SystemExit`` is recorded as such, then raised again
    from the loop (:func:`reraise_interrupt_later`).
    """
    if not isinstance(error, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    """Call a plain or async callback and return its (awaited) result."""
    result = function(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class ServiceRuntime(Generic[T]):
    """Where one service is in its lifecycle, and the operations its manager runs on it."""

    __slots__ = (
        "health_check",
        "instance",
        "last_error",
        "last_health_check",
        "name",
        "opened",
        "owner",
        "restart_count",
        "start",
        "started_at",
        "state",
        "stop",
    )

    def __init__(
        self,
        name: str,
        start: Callable[[], Any],
        stop: Callable[[T], Any] | None,
        health_check: Callable[[T], Any] | None,
    ) -> None:
        self.name = name
        self.start = start
        self.stop = stop
        self.health_check = health_check
        self.state: ServiceState = "stopped"
        self.instance: T | None = None
        self.opened = False  # a start succeeded and no stop ran since (instance may be None)
        self.restart_count = 0
        self.last_error: BaseException | None = None
        self.last_health_check: float | None = None  # epoch seconds
        self.started_at: float | None = None  # epoch seconds
        self.owner: object | None = None  # the ServiceManager it is registered with

    def __repr__(self) -> str:
        return f"<ServiceRuntime {self.name!r} state={self.state!r} opened={self.opened}>"

    def enter(self, state: ServiceState, error: BaseException | None = None) -> None:
        self.state = state
        if error is not None:
            self.last_error = error

    def reset(self) -> None:
        """Forget the previous run (the manager starts afresh; nothing is open)."""
        self.state = "stopped"
        self.instance = None
        self.opened = False
        self.restart_count = 0
        self.last_error = None
        self.started_at = None

    def count_restart(self) -> int:
        self.restart_count += 1
        return self.restart_count

    async def open(self, limit: float | None) -> None:
        """Run ``start`` within ``limit`` seconds (``None``: no limit); on success the
        instance is kept.

        :raises TimeoutError: ``start`` took longer than ``limit``.
        :raises Exception: whatever ``start`` raised.
        """
        try:
            async with asyncio.timeout(limit) as window:
                instance = await _call(self.start)
        except TimeoutError:
            if window.expired():
                raise TimeoutError(
                    f"service {self.name!r} did not start within {limit:g} s"
                ) from None
            raise
        self.instance = instance
        self.opened = True
        self.started_at = now_wall()

    async def close(self, limit: float | None) -> None:
        """Run ``stop`` on the instance (within ``limit`` seconds) and drop it; an error or
        timeout is logged, not raised."""
        instance = self.instance
        self.instance = None
        self.opened = False
        self.started_at = None
        if self.stop is None:
            return
        try:
            async with asyncio.timeout(limit) as window:
                await _call(self.stop, instance)
        except TimeoutError:
            if not window.expired():
                logger.exception("stopping service %r raised", self.name)
            else:
                logger.error(
                    "stopping service %r took longer than its stop timeout (%g s); cut short",
                    self.name,
                    limit,
                )
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            logger.error("stopping service %r raised", self.name, exc_info=exc)
            reraise_interrupt_later(exc)

    async def probe(self, limit: float | None) -> tuple[str, BaseException | None] | None:
        """Run the health check once: ``None`` when healthy, else what went wrong."""
        assert self.health_check is not None
        problem: tuple[str, BaseException | None] | None
        try:
            async with asyncio.timeout(limit) as window:
                verdict = await _call(self.health_check, self.instance)
            # Inside the try: a verdict whose truth cannot be told is a failed check too.
            problem = None if verdict else (f"returned {safe_repr(verdict)}", None)
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            reraise_interrupt_later(exc)
            if isinstance(exc, TimeoutError) and window.expired():
                problem = (f"took longer than {limit or 0:g} s", None)
            else:
                problem = (f"raised {type(exc).__name__}: {safe_str(exc)}", exc)
        self.last_health_check = now_wall()
        return problem
