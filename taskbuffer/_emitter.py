"""Where a task's events go: its own subject, and the subjects it forwards them to."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._clock import now_wall
from ._events import (
    EventSubject,
    PendingEvent,
    TaskEvent,
    on_subscribers_changed,
    route_for,
    subscriber_raised,
)
from ._validation import error_message

if TYPE_CHECKING:
    from ._events import TaskEventType
    from ._metadata import TaskStatus
    from ._run import Run
    from ._snapshot import Capture

__all__ = (
    "STALE",
    "EventSource",
    "emit",
    "forward_events",
    "listened",
    "send",
    "stop_forwarding",
)


def send(route: Callable[[TaskEvent], None], capture: Capture) -> None:
    """Hand one event, ``capture`` until somebody reads it, to ``route``."""
    event = PendingEvent()
    event.capture = capture
    try:
        route(event)
    except BaseException as exc:  # a sole subscriber's (deliver_all shields the rest)
        subscriber_raised(event, exc)


class EventSource:
    """The event-routing half of a task: its subject, the subjects it forwards to, and the
    cached route an emission takes (``None`` while nobody listens)."""

    __slots__ = ("__weakref__", "_event_subject", "_route", "_sink_counts", "_sinks")

    def __init__(self) -> None:
        self._event_subject = EventSubject()
        # Other subjects that receive this task's events: the task_subject of each manager it
        # is registered with, or that a chain or parallel holding it is registered with (see
        # _add_sink). Each subject once, however many ways lead to it; a tuple so that
        # emitting never sees it change mid-iteration. _sink_counts says how many ways lead
        # to each (None while there is none).
        self._sinks: tuple[EventSubject, ...] = ()
        self._sink_counts: dict[EventSubject, int] | None = None
        # Where events go: None (nobody listens), a sole subscriber's callback, a delivery
        # to every subject, or STALE (subscribers changed: the next emission works it out).
        self._route: Callable[[TaskEvent], None] | None = STALE
        _owners[self._event_subject] = weakref.ref(self)

    @property
    def event_subject(self) -> EventSubject:
        """The reactivex subject carrying this task's :class:`TaskEvent` s."""
        return self._event_subject

    def _capture(
        self,
        kind: TaskEventType,
        timestamp: float,
        step_name: str | None,
        error: str | None,
        status: TaskStatus,
        run: Run | None,
    ) -> Capture:
        raise NotImplementedError  # the task's runner knows its state

    def _status(self) -> TaskStatus:
        raise NotImplementedError

    def _emit(
        self,
        type: TaskEventType,
        status: TaskStatus | None,
        run: Run | None = None,
        *,
        step_name: str | None = None,
        error: BaseException | str | None = None,
        timestamp: float | None = None,
    ) -> None:
        route = self._route
        if route is STALE:
            route = self._reroute()
        if route is not None:  # nothing is built unless somebody listens
            send(
                route,
                self._capture(
                    type,
                    now_wall() if timestamp is None else timestamp,
                    step_name,
                    None if error is None else error_message(error),
                    status or self._status(),
                    run,
                ),
            )

    def _listened(self) -> bool:
        """Whether anybody would receive an event now."""
        route = self._route
        if route is STALE:
            route = self._reroute()
        return route is not None

    def _add_sink(self, subject: EventSubject) -> None:
        """Forward this task's events to ``subject`` (a manager's) besides its own, and its
        members' events too (see ``_members``).

        Counted: a task reached by several ways (registered itself, a member of two
        registered chains...) delivers each event to ``subject`` once, until as many
        ``_drop_sink(subject)`` calls have undone them all.
        """
        counts = self._sink_counts
        if counts is None:
            counts = self._sink_counts = {}
        held = counts.get(subject, 0)
        counts[subject] = held + 1
        if not held:
            _forwarders(subject).add(self)
            self._sinks = (*self._sinks, subject)
            _changed()
            self._route = STALE
            for member in self._members():
                member._add_sink(subject)

    def _drop_sink(self, subject: EventSubject) -> None:
        """Undo one ``_add_sink(subject)``; the last one stops the forwarding."""
        counts = self._sink_counts
        held = 0 if counts is None else counts.get(subject, 0)
        if not held:
            return
        assert counts is not None
        if held > 1:
            counts[subject] = held - 1
            return
        del counts[subject]
        if not counts:
            self._sink_counts = None
        self._sinks = tuple(s for s in self._sinks if s is not subject)
        _forwarders(subject).discard(self)
        _changed()
        self._route = STALE
        for member in self._members():
            member._drop_sink(subject)

    def _members(self) -> Iterable[EventSource]:
        """The tasks this one runs as parts of itself, whose events go where its own go
        (a chain's or a parallel's tasks; none for a plain task)."""
        return ()

    def _reroute(self) -> Callable[[TaskEvent], None] | None:
        """Work out where events go now, and remember it until subscribers change.

        Subscribers may change in another thread while the route is worked out: the change
        then marks the route stale before this stores it, so a route worked out while
        ``_changes`` moved is stored as stale again (the next emission works it out anew).
        """
        seen = _changes
        route = self._route = route_for((self._event_subject, *self._sinks))
        if _changes != seen:
            self._route = STALE
        return route


# Whose cached routes a subject's subscribers decide: the task that owns it (its
# event_subject) and the tasks that forward to it (a manager's task_subject: see _add_sink).
# A change of a subject's subscribers marks only those stale: subscribing to one task costs
# the same however many tasks there are.
_owners: weakref.WeakKeyDictionary[EventSubject, weakref.ref[EventSource]] = (
    weakref.WeakKeyDictionary()
)
_forwarding: weakref.WeakKeyDictionary[EventSubject, weakref.WeakSet[EventSource]] = (
    weakref.WeakKeyDictionary()
)
# How many times subscribers or forwarding changed (see EventSource._reroute).
_changes = 0


def _forwarders(subject: EventSubject) -> weakref.WeakSet[EventSource]:
    forwarders = _forwarding.get(subject)
    if forwarders is None:
        forwarders = _forwarding[subject] = weakref.WeakSet()
    return forwarders


def _changed() -> None:
    global _changes
    _changes += 1


def _routes_changed(subject: EventSubject) -> None:
    _changed()  # before the routes are marked (see EventSource._reroute)
    owner = _owners.get(subject)
    source = None if owner is None else owner()
    if source is not None:
        source._route = STALE
    forwarders = _forwarding.get(subject)
    if forwarders:
        for source in list(forwarders):
            source._route = STALE


on_subscribers_changed(_routes_changed)


def STALE(event: TaskEvent) -> None:
    """The route of a task whose route is not known: a marker, compared by identity (an
    emission works the route out first: nothing is built for an event nobody receives)."""
    raise AssertionError("STALE is a marker, never a route to deliver along")


def forward_events(source: EventSource, subject: EventSubject) -> None:
    """Forward ``source``'s events (and its members') to ``subject``; counted (see
    ``EventSource._add_sink``)."""
    source._add_sink(subject)


def stop_forwarding(source: EventSource, subject: EventSubject) -> None:
    """Undo one :func:`forward_events`."""
    source._drop_sink(subject)


def emit(
    source: EventSource,
    type: TaskEventType,
    run: Run | None,
    *,
    status: TaskStatus | None = None,
    error: BaseException | str | None = None,
) -> None:
    """Emit an event of ``source`` about ``run`` (for the manager and the scheduler)."""
    source._emit(type, status, run, error=error)


def listened(source: EventSource) -> bool:
    """Whether an event of ``source`` would reach anybody now."""
    return source._listened()
