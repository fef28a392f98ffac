"""Admission: which trigger takes which slot, and when; the waiting queue of blocked triggers.

:class:`Admission` is the interface a manager admits its triggers through (claim keys, take
slots or park, start, release, share, fail waiters); ``LocalAdmission`` (:mod:`._waiting`) is
the in-memory implementation, over the per-key state of :mod:`._keystate`. A backend that
shares slots between processes (Redis) implements the same interface.

A waiting trigger (a :class:`Waiter`) claims one key in each group that applies to it. It is
*parked* in exactly one place: the queue of the first claimed key that blocks it, ordered by
priority (higher first), then arrival. When a key frees up (a run ends, a cooldown or rate
window passes), only that key's queue is looked at: its best waiter either takes slots in all
its groups at once and starts, or moves to the queue of the key that still blocks it. So a
waiter blocked on one key never holds up waiters of another, and starting or releasing costs
O(log n) at most in the waiters of the keys involved, however many wait elsewhere.

A key's queue is a FIFO *line* (a deque, in order) and a heap beside it: a waiter that ranks
after the line's last one (every newcomer of one priority, the common case) joins the line in
O(1); one that would rank before it (a higher priority, or a waiter moved from another key with
its old place) goes to the heap. The first waiter is the better of the two heads.

Slots are handed over at release time, before the woken trigger resumes, so a newcomer
arriving in between cannot take them (no queue jumping); a woken trigger cancelled before it
resumes gives them back, which wakes the next one.

A run that holds a ``share-latest`` key is shared: the triggers waiting for that key (its
*sharers*) await its result as much as its caller does. Such a run goes in a task of its own
(a :class:`SharingRun`); cancelling its caller only detaches the caller while sharers wait,
and the run is cancelled when the last of them leaves. A run being cancelled shares nothing:
a trigger that comes meanwhile waits for the slot and runs afresh.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from ._keystate import KeyState, KeyTable

__all__ = (
    "GO",
    "Admission",
    "Claim",
    "Claimer",
    "Entry",
    "QueuedKey",
    "Shared",
    "SharingRun",
    "Waiter",
)

# What a trigger claims: one key state per applicable group (each knows its table).
Claim: TypeAlias = "QueuedKey"
# What claims a key for a trigger: a group (an object whose ``constraint_key_for_execution``
# is ``(task, input) -> key``) and the group's key table.
Claimer: TypeAlias = "tuple[Any, KeyTable]"
# A place out of line: (-priority, seq, waiter), the order of a key's heap.
Entry: TypeAlias = "tuple[int, int, Waiter]"

# The waiter's future resolves to GO when its slots were taken for it, or to a Shared result.
GO: Any = object()


class QueuedKey(KeyState):
    """A key's state with its waiting queue (and, for ``share-latest``, its sharers)."""

    __slots__ = ("dead", "detached", "heap", "line", "sharers")

    def __init__(self, table: KeyTable, key: str) -> None:
        super().__init__(table, key)
        # Waiters parked here because this key blocks them: those that came in order in
        # ``line`` (made at the first), the others in ``heap`` as (-priority, seq, waiter).
        self.line: deque[Waiter] | None = None
        self.heap: list[Entry] = []
        self.dead = 0  # entries (in line or heap) whose waiter has already left
        self.sharers: dict[Waiter, None] | None = None  # claimants, for share-latest
        # share-latest runs of this key whose caller left, kept going for the sharers
        self.detached: list[SharingRun] | None = None

    def names(self) -> tuple[str, str]:
        """``(group name, key)``: what a run parked here waits for, as snapshots show it."""
        return (self.table.name, self.key)


class Shared:
    """A result handed to a waiter by ``share-latest`` instead of a run."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class SharingRun:
    """A run whose keys share their result (``share-latest``), in an asyncio task of its own."""

    __slots__ = ("abandoned", "began", "claims", "task")

    def __init__(self, claims: list[Claim]) -> None:
        self.claims = claims
        self.task: asyncio.Task[Any] | None = None
        self.began = False  # its coroutine started (a task cancelled before that never runs)
        self.abandoned = False  # cancelled because nobody awaits it: shares nothing

    def __repr__(self) -> str:
        return f"<SharingRun keys={[st.key for st in self.claims]!r} abandoned={self.abandoned}>"

    def has_sharers(self) -> bool:
        """Whether a trigger waits to share this run's result."""
        return any(st.sharers for st in self.claims)

    def detach(self) -> None:
        """Its caller left: the run goes on while sharers wait (``leave`` watches them)."""
        for st in self.claims:
            if st.sharers is not None:
                if st.detached is None:
                    st.detached = []
                st.detached.append(self)

    def abandon(self) -> None:
        """Cancel the run: every awaiter has left."""
        self.abandoned = True
        assert self.task is not None
        self.task.cancel()

    def end(self) -> None:
        """The run's task is done: stop watching its sharers."""
        for st in self.claims:
            if st.detached is not None and self in st.detached:
                st.detached.remove(self)
                if not st.detached:
                    st.detached = None


class Waiter:
    """One trigger's run waiting for its keys.

    ``run`` is the run that waits (the manager's; here only its ``priority`` is read and its
    ``blocked_by`` kept up to date: the :class:`QueuedKey` it is parked on).

    An admission's ``park`` makes it and sets every field: it has no ``__init__`` (calling a
    class with a Python ``__init__`` costs a frame, about a thousand instructions per waiter).
    """

    __slots__ = ("claims", "future", "left", "owner", "parked", "priority", "run", "seq")

    claims: list[Claim]
    future: asyncio.Future[Any]
    run: Any
    priority: int
    seq: int
    owner: object  # its manager's token: the groups it claims apply while they match
    parked: QueuedKey | None
    left: bool  # has stopped waiting (leave() ran)

    def __repr__(self) -> str:
        where = None if self.parked is None else self.parked.key
        return f"<Waiter priority={self.priority} seq={self.seq} parked_at={where!r}>"


class Admission(ABC):
    """How a manager's triggers claim keys, take slots, wait for them and give them back.

    All times are loop times. ``owner`` is the token of the trigger's manager: a key table
    whose ``owner`` is another no longer constrains the trigger.
    """

    __slots__ = ()

    @abstractmethod
    def claim(
        self, claimers: Sequence[Claimer], task: Any, input: Any, loop: asyncio.AbstractEventLoop
    ) -> list[Claim]:
        """The keys ``(task, input)`` claims; a key function that raises claims nothing."""

    @abstractmethod
    def acquire(
        self,
        claims: list[Claim],
        now: float,
        priority: int | None = None,
        seq: float = math.inf,
        *,
        owner: object,
    ) -> tuple[Claim, float] | None:
        """Take a slot in every claimed key at once, or none: ``None`` when taken, else the
        first blocking claim and until when it blocks (``math.inf``: until a run ends)."""

    @abstractmethod
    def park(
        self,
        claims: list[Claim],
        blocked: tuple[Claim, float],
        future: asyncio.Future[Any],
        run: Any,
        seq: int,
        owner: object,
    ) -> Waiter:
        """Queue a blocked trigger; its ``future`` gets :data:`GO` (its slots were taken
        for it) or a :class:`Shared` result."""

    @abstractmethod
    def leave(self, waiter: Waiter, now: float) -> None:
        """The waiter stops waiting (started, shared, cancelled or failed). Idempotent."""

    @abstractmethod
    def drop(self, claims: list[Claim], now: float) -> None:
        """Claims that took no slot are given up (their key function or check failed)."""

    @abstractmethod
    def begin(self, claims: list[Claim], now: float) -> None:
        """The run of a trigger whose slots were taken starts (rate windows count it)."""

    @abstractmethod
    def release(self, claims: list[Claim], now: float, *, ran: bool) -> None:
        """Give back the slots of a run that started (``ran``) and ended, or of a trigger
        that never started, and wake waiters."""

    @abstractmethod
    def sharing(self, claims: list[Claim]) -> bool:
        """Whether a run with these claims is shared (one is a ``share-latest`` key)."""

    @abstractmethod
    def share(self, claims: list[Claim], value: Any, now: float, *, owner: object) -> None:
        """Resolve the waiters of every ``share-latest`` key in ``claims`` with ``value``."""

    @abstractmethod
    def dispatch(self, freed: list[Claim], now: float) -> None:
        """Offer keys that may have room to the triggers waiting for them."""

    @abstractmethod
    def reoffer(self, table: KeyTable, now: float) -> None:
        """After the group of ``table`` is removed, re-offer the triggers parked on it."""

    @abstractmethod
    def fail_waiters(
        self, tables: Sequence[KeyTable], owner: object, error: Callable[[], BaseException]
    ) -> None:
        """Fail every trigger of ``owner`` waiting on ``tables`` with a fresh ``error()``."""
