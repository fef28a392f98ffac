"""The waiting queue: triggers blocked by a constraint, and how freed slots reach them.

A waiting trigger (a :class:`Waiter`) claims one key in each group that applies to it. It is
*parked* in exactly one place: the heap of the first claimed key that blocks it, ordered by
priority (higher first), then arrival. When a key frees up (a run ends, a cooldown or rate
window passes), only that key's heap is looked at: its best waiter either takes slots in all
its groups at once and starts, or moves to the heap of the key that still blocks it. So a
waiter blocked on one key never holds up waiters of another, and starting or releasing costs
O(log n) in the waiters of the keys involved, however many wait elsewhere.

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
import heapq
import math
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from ._constraints import KeyState, TaskConstraintGroup

__all__ = (
    "GO",
    "Claim",
    "Shared",
    "SharingRun",
    "Waiter",
    "dispatch",
    "release",
    "sharing",
    "begin",
    "try_acquire",
)

# What a trigger claims: one key state per applicable group (each knows its group).
Claim: TypeAlias = "KeyState"

# The waiter's future resolves to GO when its slots were taken for it, or to a Shared result.
GO: Any = object()


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


def sharing(claims: list[Claim]) -> bool:
    """Whether a run with these claims is shared (one of them is a ``share-latest`` key)."""
    for st in claims:
        if st.sharers is not None:
            return True
    return False


class Waiter:
    """One trigger waiting for its keys."""

    __slots__ = ("claims", "future", "left", "owner", "parked", "priority", "seq")

    def __init__(
        self,
        claims: list[Claim],
        future: asyncio.Future[Any],
        priority: int,
        seq: int,
        owner: object,
    ) -> None:
        self.claims = claims
        self.future = future
        self.priority = priority
        self.seq = seq
        self.owner = owner  # its manager's token: the groups it claims apply while they match
        self.parked: KeyState | None = None
        self.left = False  # has stopped waiting (leave() ran)

    def __repr__(self) -> str:
        where = None if self.parked is None else self.parked.key
        return f"<Waiter priority={self.priority} seq={self.seq} parked_at={where!r}>"


def try_acquire(
    claims: list[Claim],
    now: float,
    priority: int | None = None,
    seq: float = math.inf,
    *,
    owner: object,
) -> tuple[Claim, float] | None:
    """Take a slot in every claimed key at once, or none: returns ``None`` when taken, else
    the first blocking claim and until when it blocks (``math.inf``: until a run ends).

    ``owner`` is the token of the trigger's manager: a claimed group that is no longer added
    to that manager (``group._owner``) does not constrain the trigger.

    ``(priority, seq)`` is the trigger's place in line (a newcomer's ``seq`` is infinite:
    after everyone). A free key whose queue
    still holds a waiter ranking before it counts as blocked: that happens only within one
    instant (the key's time ran out and its timer has yet to run, or a newcomer comes first
    in the loop turn), and the key's dispatch, due now, must serve that waiter first.
    """
    for st in claims:
        group = st.group
        if group._owner is not owner:
            continue
        until = group.blocked_until(st, now)
        if until is None and priority is not None and st.heap:
            head = _live_head(st)
            if head is not None and (head[0], head[1]) < (-priority, seq):
                until = now
        if until is not None:
            return st, until
    # A removed group no longer blocks, but its slot is still taken: release() gives back
    # every claim, and the group may be added again while this run goes on. Its run enters
    # rate windows when it starts (``begin``), not now: should_execute is asked first.
    for st in claims:
        st.group.take(st)
    return None


def begin(claims: list[Claim], now: float) -> None:
    """The run of a trigger whose slots were taken starts at ``now`` (rate windows count it)."""
    for st in claims:
        st.group.begin(st, now)


def park(waiter: Waiter, st: Claim, until: float) -> None:
    heapq.heappush(st.heap, (-waiter.priority, waiter.seq, waiter))
    waiter.parked = st
    if until != math.inf:
        st.group.arm_timer(st, until)


def enqueue(waiter: Waiter, blocker: Claim, until: float) -> None:
    """Register a new waiter with every key it claims and park it where it is blocked."""
    for st in waiter.claims:
        st.waiting += 1
        st.group._waiting_total += 1
        if st.sharers is not None:
            st.sharers[waiter] = None
    park(waiter, blocker, until)


def leave(waiter: Waiter, now: float) -> None:
    """The waiter stops waiting (started, shared, cancelled or failed). Idempotent."""
    if waiter.left:
        return
    waiter.left = True
    st = waiter.parked
    if st is not None:
        waiter.parked = None
        st.dead += 1
        if st.dead > 16 and st.dead * 2 > len(st.heap):
            st.heap = [entry for entry in st.heap if entry[2].parked is st]
            heapq.heapify(st.heap)
            st.dead = 0
    for claimed in waiter.claims:
        claimed.waiting -= 1
        claimed.group._waiting_total -= 1
        if claimed.sharers is not None:
            claimed.sharers.pop(waiter, None)
            if claimed.detached is not None and not claimed.sharers:
                # The last sharer of this key left: a run whose caller left too and that
                # nobody else awaits is cancelled.
                for run in list(claimed.detached):
                    if not run.abandoned and not run.has_sharers():
                        run.abandon()
        claimed.group.maybe_drop(claimed, now)


def _live_head(st: KeyState) -> tuple[int, int, Waiter] | None:
    heap = st.heap
    while heap:
        head = heap[0]
        if head[2].parked is st:
            return head
        heapq.heappop(heap)
        st.dead -= 1
    return None


def dispatch(freed: list[Claim], now: float) -> None:
    """Offer keys that may have room to the waiters parked on them, best waiter first."""
    while True:
        best: tuple[int, int, Waiter] | None = None
        best_claim: Claim | None = None
        for st in freed:
            head = _live_head(st)
            if head is not None and (best is None or head < best):
                if st.group.blocked_until(st, now) is None:
                    best, best_claim = head, st
        if best is None or best_claim is None:
            break
        heapq.heappop(best_claim.heap)
        waiter = best[2]
        waiter.parked = None
        _offer(waiter, now)
    for st in freed:
        group = st.group
        if _live_head(st) is not None:
            until = group.blocked_until(st, now)
            if until is not None and until != math.inf:
                group.arm_timer(st, until)
        group.maybe_drop(st, now)


def release(claims: list[Claim], now: float, *, ran: bool) -> None:
    """Give back the slots of a run that started (``ran``) and ended, or of a trigger that
    never started, and wake waiters."""
    for st in claims:
        if st.running > 0:
            st.group.give_back(st, now, ran=ran)
    dispatch(claims, now)


def share(claims: list[Claim], value: Any, now: float, *, owner: object) -> None:
    """Resolve the waiters of every ``share-latest`` key in ``claims`` with ``value``.

    Only groups still added to the run's manager (``owner``) share, and only with that
    manager's triggers: a group removed (or moved to another manager) since a trigger
    claimed it no longer applies to that trigger.
    """
    for st in claims:
        if st.sharers and st.group._owner is owner:
            for waiter in list(st.sharers):
                if waiter.owner is not owner:
                    continue
                leave(waiter, now)
                if not waiter.future.done():
                    waiter.future.set_result(Shared(value))


def reoffer(group: TaskConstraintGroup, now: float) -> None:
    """After ``group`` is removed, re-offer the waiters parked on its keys."""
    moved: list[Waiter] = []
    for st in list(group._state.values()):
        while (head := _live_head(st)) is not None:
            heapq.heappop(st.heap)
            head[2].parked = None
            moved.append(head[2])
    moved.sort(key=lambda w: (-w.priority, w.seq))
    for waiter in moved:
        _offer(waiter, now)


def _offer(waiter: Waiter, now: float) -> None:
    """Start an unparked waiter if all its keys have room, else park it where it is blocked."""
    if waiter.future.done():
        # Cancelled in this same loop turn, before its trigger could clean up: drop it (its
        # trigger's own leave() is then a no-op); the caller offers the slot to the next.
        leave(waiter, now)
        return
    blocked = try_acquire(waiter.claims, now, waiter.priority, waiter.seq, owner=waiter.owner)
    if blocked is None:
        leave(waiter, now)
        waiter.future.set_result(GO)
    else:
        park(waiter, *blocked)
