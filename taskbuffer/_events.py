"""Lifecycle events and the subject that carries them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass
from functools import partial
from typing import Any, Generic, Literal, SupportsIndex, TypeAlias

from reactivex import abc
from reactivex.observer.autodetachobserver import AutoDetachObserver
from reactivex.subject import Subject
from reactivex.subject.innersubscription import InnerSubscription
from typing_extensions import TypeVar

from ._metadata import TaskMetadata
from ._run import RunInfo
from ._snapshot import Capture, event_field, event_fields, metadata, run_info, task_name
from ._validation import reraise_interrupt_later

__all__ = (
    "EventSubject",
    "PendingEvent",
    "TaskEvent",
    "TaskEventType",
    "deliver",
    "deliver_all",
    "on_subscribers_changed",
    "route_for",
    "subscriber_raised",
)

logger = logging.getLogger("taskbuffer")

# Called whenever the subscribers of any EventSubject change: each task caches where its
# events go (see _emitter.EventSource), and this tells the tasks whose events go through
# that subject that the cache may be wrong.
_on_change: list[Callable[[EventSubject[Any]], None]] = []


def on_subscribers_changed(callback: Callable[[EventSubject[Any]], None]) -> None:
    """Call ``callback(subject)`` whenever the subscribers of an :class:`EventSubject`
    change."""
    _on_change.append(callback)


def _bump(subject: EventSubject[Any]) -> None:
    for callback in _on_change:
        callback(subject)


# "missed": cron ticks were missed while the event loop was blocked and are coalesced into the
# run that follows; ``error`` carries the message (how many were missed).
TaskEventType: TypeAlias = Literal[
    "started",
    "step",
    "completed",
    "failed",
    "queued",
    "skipped",
    "retrying",
    "cancelled",
    "missed",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskEvent:
    """One lifecycle event of a task, with snapshots of the task and of the run it belongs to
    (``run`` is ``None`` only for an event not tied to one run, such as ``missed``)."""

    type: TaskEventType
    task: TaskMetadata
    timestamp: float
    step_name: str | None = None
    error: str | None = None
    run: RunInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values."""
        return {
            "type": self.type,
            "task": self.task.to_dict(),
            "timestamp": self.timestamp,
            "step_name": self.step_name,
            "error": self.error,
            "run": None if self.run is None else self.run.to_dict(),
        }


_TASK_SLOT = TaskEvent.__dict__["task"]
_RUN_SLOT = TaskEvent.__dict__["run"]
_SETTERS = tuple(
    TaskEvent.__dict__[name].__set__ for name in ("type", "timestamp", "step_name", "error")
)


def _frozen(self: PendingEvent, value: Any = None) -> None:
    raise FrozenInstanceError("cannot assign to or delete a field of a TaskEvent")


def _captured(name: str) -> property:
    return property(event_field(name), _frozen, _frozen)


class PendingEvent(TaskEvent):
    """A :class:`TaskEvent` that is one :class:`~taskbuffer._snapshot.Capture` until somebody
    reads its ``task`` or ``run``.

    Emitting stores a single object (the event's fields and a copy of the task's and the run's
    state) instead of writing six fields and building two snapshots; the values are those of
    emission time either way. ``type``, ``timestamp``, ``step_name`` and ``error`` read from
    the capture; the first read of ``run`` builds that snapshot alone; the first read of
    ``task`` (or a comparison, copy or pickle) builds both, fills the fields, and the instance
    becomes a plain ``TaskEvent``.

    Emitting is ``event = PendingEvent(); event.capture = capture``, both at C speed: no
    dataclass ``__init__``, and a plain slot store. ``capture`` is the ``task`` slot under
    another name; the frozen dataclass's ``__setattr__``/``__delattr__`` are replaced by
    object's so that CPython can specialise that store. The public fields stay frozen: here
    they are properties whose setter and deleter raise ``FrozenInstanceError``.
    """

    __slots__ = ()
    __init__ = object.__init__
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    capture: Capture = _TASK_SLOT

    type = _captured("type")
    timestamp = _captured("timestamp")
    step_name = _captured("step_name")
    error = _captured("error")

    def _read_run(self) -> RunInfo | None:
        info = run_info(self.capture)
        _RUN_SLOT.__set__(self, info)
        # From now on ``run`` is the plain slot: a class with this one's layout that reads it.
        object.__setattr__(self, "__class__", _RunReadEvent)
        return info

    run = property(_read_run, _frozen, _frozen)

    def _materialise(self) -> TaskMetadata:
        capture = self.capture
        task = metadata(capture)
        if type(self) is PendingEvent:  # its run snapshot not read yet: built now
            _RUN_SLOT.__set__(self, run_info(capture))
        for setter, value in zip(_SETTERS, event_fields(capture), strict=True):
            setter(self, value)
        _TASK_SLOT.__set__(self, task)
        object.__setattr__(self, "__class__", TaskEvent)
        return task

    task = property(_materialise, _frozen, _frozen)

    def __eq__(self, other: object) -> bool:
        _ = self.task  # materialise, which also makes this a plain TaskEvent
        return TaskEvent.__eq__(self, other)

    __hash__ = TaskEvent.__hash__

    def __repr__(self) -> str:
        _ = self.task  # materialise first: it shows as the TaskEvent it is
        return TaskEvent.__repr__(self)

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        _ = self.task  # materialise first: copies and pickles are plain TaskEvents
        return self.__reduce_ex__(protocol)


class _RunReadEvent(PendingEvent):
    """A :class:`PendingEvent` whose ``run`` has been read (and so is set): only ``task`` is
    still pending."""

    __slots__ = ()
    run = TaskEvent.__dict__["run"]


# The event type an EventSubject carries: TaskEvent unless said otherwise (ServiceEvent).
E = TypeVar("E", default=TaskEvent)


def deliver(subject: Subject[E], event: E) -> None:
    """``subject.on_next(event)``, minus reactivex's per-call lock, and shielded (see
    :func:`subscriber_raised`). Events are emitted from the event loop's thread only."""
    if subject.is_stopped or subject.is_disposed:
        return
    # A snapshot: an observer subscribed during this event gets the next one, not this one.
    # One unsubscribed during it gets nothing more (its AutoDetachObserver is stopped).
    for observer in tuple(subject.observers):
        try:
            observer.on_next(event)
        except BaseException as exc:
            subscriber_raised(event, exc)


def deliver_all(subjects: tuple[Subject[TaskEvent], ...], event: TaskEvent) -> None:
    """:func:`deliver` to each of ``subjects`` in turn, with the observers of all of them taken
    before the first is called: what subscribers change while the event is delivered (even
    on another of the subjects) applies from the next event."""
    batches = [
        tuple(subject.observers)
        for subject in subjects
        if not (subject.is_stopped or subject.is_disposed)
    ]
    for observers in batches:
        for observer in observers:
            try:
                observer.on_next(event)
            except BaseException as exc:
                subscriber_raised(event, exc)


def route_for(subjects: tuple[EventSubject, ...]) -> Callable[[TaskEvent], None] | None:
    """Where events for ``subjects`` go now: ``None`` while nobody listens, a sole subscriber's
    callback (called without reactivex's per-event frames), or :func:`deliver_all` to them."""
    listening = [s for s in subjects if s.observers]
    if not listening:
        return None
    if len(listening) == 1 and listening[0]._sole is not None:
        return listening[0]._sole
    return partial(deliver_all, subjects)


def subscriber_raised(event: Any, error: BaseException) -> None:
    """What happens when a subscriber raises: it never reaches the emitter.

    Whatever a subscriber raises, ``BaseException`` subclasses included, is logged with its
    traceback on the ``taskbuffer`` logger; the subscriber stays subscribed and the other
    subscribers still get the event. ``KeyboardInterrupt`` and ``SystemExit`` are then raised
    again from a callback of the running event loop (as asyncio treats them when a callback
    raises them): the emitting code finishes what it was doing first, so the run's
    bookkeeping (counts, status, slots, events) is complete before they propagate out of the
    loop. With no running loop they are raised again at once.
    """
    try:
        logger.error(
            "an event subscriber raised on a %r event of %s",
            event.type,
            _source(event),
            exc_info=error,
        )
    except Exception:  # a broken handler or formatter is the logging setup's problem
        pass
    reraise_interrupt_later(error)


def _source(event: Any) -> str:
    """What emitted ``event``, for the log; a task's name is read without building its
    metadata snapshot."""
    if isinstance(event, PendingEvent):
        return f"task {task_name(event.capture)!r}"
    if isinstance(event, TaskEvent):
        return f"task {event.task.name!r}"
    return f"service {event.service.name!r}"  # a ServiceEvent


class EventSubject(Subject[E], Generic[E]):
    """A reactivex ``Subject`` whose subscribers cannot break the emitter or each other.

    A subscriber that raises is logged on the ``taskbuffer`` logger and stays subscribed; the
    remaining subscribers still receive the event and the run goes on (``KeyboardInterrupt``
    and ``SystemExit`` propagate afterwards, from the event loop: see ``subscriber_raised``).
    A subscription made while an event is being delivered receives the events after it; an
    unsubscription takes effect at once.

    ``_sole`` is the emitter's fast path: while exactly one callback is subscribed (through
    ``subscribe()``, which wraps it in an ``AutoDetachObserver``), it is that callback, called
    without reactivex's per-event frames; otherwise it is ``None`` and events go through
    :func:`deliver`. It is kept in step with every change of ``observers``: subscribe,
    unsubscribe, completion, error and dispose.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sole: Callable[[E], None] | None = None

    def on_next(self, value: E) -> None:
        deliver(self, value)

    def _subscribe_core(
        self,
        observer: abc.ObserverBase[E],
        scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        with self.lock:
            if not (self.is_stopped or self.is_disposed):
                self.observers.append(observer)
                self._find_sole()
                return _Subscription(self, observer)
        # Stopped or disposed: reactivex's own answer (completes, errors, or raises).
        return super()._subscribe_core(observer, scheduler)

    def _find_sole(self) -> None:
        observers = self.observers
        # An AutoDetachObserver is only ever stopped on its way out of ``observers``, so its
        # callback can be called without its ``is_stopped`` check.
        if len(observers) == 1 and type(observers[0]) is AutoDetachObserver:
            self._sole = observers[0]._on_next
        else:
            self._sole = None
        _bump(self)

    def _on_completed_core(self) -> None:
        self._sole = None
        _bump(self)
        super()._on_completed_core()
        _bump(self)  # (again: a route worked out meanwhile, in another thread, may be old)

    def _on_error_core(self, error: Exception) -> None:
        self._sole = None
        _bump(self)
        super()._on_error_core(error)
        _bump(self)  # (again: a route worked out meanwhile, in another thread, may be old)

    def dispose(self) -> None:
        self._sole = None
        super().dispose()
        _bump(self)


class _Subscription(InnerSubscription):
    """Reactivex's subscription to a subject, which also keeps ``EventSubject._sole`` right."""

    def __init__(self, subject: EventSubject[Any], observer: abc.ObserverBase[Any]) -> None:
        super().__init__(subject, observer)
        self.event_subject = subject

    def dispose(self) -> None:
        super().dispose()
        if not self.event_subject.is_disposed:
            self.event_subject._find_sole()
