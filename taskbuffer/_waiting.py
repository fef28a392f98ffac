"""The in-memory :class:`Admission`: the waiting queues live in the groups' key states.

See :mod:`._admission` for how waiters are parked and how freed slots reach them.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ._admission import GO, Admission, Claim, Claimer, QueuedKey, Shared, Waiter
from ._keystate import KeyTable, key_type_error

__all__ = ("LOCAL_ADMISSION", "LocalAdmission", "new_queued_key", "new_sharing_key")

_INF = math.inf
_new = object.__new__


def new_queued_key(table: KeyTable, key: str) -> QueuedKey:
    """A key state for a group that shares nothing."""
    return QueuedKey(table, key)


def new_sharing_key(table: KeyTable, key: str) -> QueuedKey:
    """A key state for a ``share-latest`` group: its claimants share its runs' results."""
    st = QueuedKey(table, key)
    st.sharers = {}
    return st


def _head(st: QueuedKey) -> Waiter | None:
    """The first live waiter parked on ``st`` (dropping the dead entries before it)."""
    first: Waiter | None = None
    line = st.line
    while line:
        first = line[0]
        if first.parked is st:
            break
        line.popleft()
        st.dead -= 1
        first = None
    heap = st.heap
    while heap:
        entry = heap[0]
        if entry[2].parked is st:
            if first is None:
                return entry[2]
            rank = -first.priority
            if entry[0] < rank or (entry[0] == rank and entry[1] < first.seq):
                return entry[2]
            return first
        heapq.heappop(heap)
        st.dead -= 1
    return first


def _unpark_head(st: QueuedKey, waiter: Waiter) -> None:
    """Take ``waiter``, which :func:`_head` just returned, out of ``st``'s queue."""
    line = st.line
    if line and line[0] is waiter:
        line.popleft()
    else:
        heapq.heappop(st.heap)
    waiter.parked = None


def _enqueue(st: QueuedKey, waiter: Waiter) -> None:
    """Queue ``waiter`` on ``st`` at its place: priority (higher first), then arrival."""
    line = st.line
    if line is None:
        line = st.line = deque()
    elif line:
        tail = line[-1]
        if tail.priority < waiter.priority or (
            tail.priority == waiter.priority and tail.seq > waiter.seq
        ):  # it ranks before the line's last waiter
            heapq.heappush(st.heap, (-waiter.priority, waiter.seq, waiter))
            waiter.parked = st
            return
    line.append(waiter)
    waiter.parked = st


class LocalAdmission(Admission):
    """Admission within one process and event loop: the state lives in the key tables."""

    __slots__ = ()

    def claim(
        self, claimers: Sequence[Claimer], task: Any, input: Any, loop: asyncio.AbstractEventLoop
    ) -> list[Claim]:
        claims: list[Claim] = []
        try:
            for group, table in claimers:
                # (the group's get_constraint_key, inlined: a call less per group and trigger)
                key = group.constraint_key_for_execution(task, input)
                if key is not None:
                    if type(key) is not str and not isinstance(key, str):
                        raise key_type_error(table.name, key)
                    # A key with state in the table's loop: ensure()'s work, without the call.
                    st = table.states.get(key) if table.loop is loop else None
                    if st is None:
                        st = table.ensure(key, loop)
                    if claims:
                        claims.append(st)
                    else:  # a list of one, not of four (append's room): kept while it waits
                        claims = [st]
        except BaseException:  # a KeyboardInterrupt or one of the user's own too
            self.drop(claims, loop.time())
            raise
        return claims

    def acquire(
        self,
        claims: list[Claim],
        now: float,
        priority: int | None = None,
        seq: float = math.inf,
        *,
        owner: object,
    ) -> tuple[Claim, float] | None:
        # ``(priority, seq)`` is the trigger's place in line (a newcomer's ``seq`` is
        # infinite: after everyone). A free key whose queue still holds a waiter ranking
        # before it counts as blocked: that happens only within one instant (the key's time
        # ran out and its timer has yet to run, or a newcomer comes first in the loop turn),
        # and the key's dispatch, due now, must serve that waiter first.
        for st in claims:
            table = st.table
            if table.owner is not owner:
                continue
            if st.running >= table.max_concurrent:  # (blocked_until's first test, inlined)
                return st, _INF
            until = table.blocked_until(st, now) if table.timed else None
            if until is None and priority is not None and (st.line or st.heap):
                head = _head(st)
                if head is not None and (
                    head.priority > priority or (head.priority == priority and head.seq < seq)
                ):
                    until = now
            if until is not None:
                return st, until
        # A removed group no longer blocks, but its slot is still taken: release() gives
        # back every claim, and the group may be added again while this run goes on. Its run
        # enters rate windows when it starts (``begin``), not now: should_execute is first.
        for st in claims:
            st.table.take(st)
        return None

    def park(
        self,
        claims: list[Claim],
        blocked: tuple[Claim, float],
        future: asyncio.Future[Any],
        run: Any,
        seq: int,
        owner: object,
    ) -> Waiter:
        waiter = _new(Waiter)  # (see Waiter: no __init__)
        waiter.claims = claims
        waiter.future = future
        waiter.run = run
        waiter.priority = run.priority
        waiter.seq = seq
        waiter.owner = owner
        waiter.left = False
        for st in claims:
            st.waiting += 1
            st.table.waiting_total += 1
            if st.sharers is not None:
                st.sharers[waiter] = None
        st, until = blocked  # (inlined _park: every waiter comes this way)
        # (_enqueue for a newcomer, inlined: it comes after every waiter of its priority)
        line = st.line
        if line is None:
            line = st.line = deque()
        if line and line[-1].priority < waiter.priority:
            heapq.heappush(st.heap, (-waiter.priority, seq, waiter))
        else:
            line.append(waiter)
        waiter.parked = st
        run.blocked_by = st  # named as (group, key) only when a snapshot needs it
        if until != math.inf:
            st.table.arm_timer(st, until)
        return waiter

    def _park(self, waiter: Waiter, st: Claim, until: float) -> None:
        _enqueue(st, waiter)
        waiter.run.blocked_by = st
        if until != math.inf:
            st.table.arm_timer(st, until)

    def leave(self, waiter: Waiter, now: float) -> None:
        if waiter.left:
            return
        waiter.left = True
        st = waiter.parked
        if st is not None:
            waiter.parked = None
            st.dead += 1
            line = st.line
            if st.dead > 16 and st.dead * 2 > (len(line) if line else 0) + len(st.heap):
                # In place: a dispatch going on (that made this waiter leave) holds them.
                if line:
                    live = [w for w in line if w.parked is st]
                    line.clear()
                    line.extend(live)
                st.heap[:] = [entry for entry in st.heap if entry[2].parked is st]
                heapq.heapify(st.heap)
                st.dead = 0
        for claimed in waiter.claims:
            claimed.waiting -= 1
            claimed.table.waiting_total -= 1
            if claimed.sharers is not None:
                claimed.sharers.pop(waiter, None)
                if claimed.detached is not None and not claimed.sharers:
                    # The last sharer of this key left: a run whose caller left too and that
                    # nobody else awaits is cancelled.
                    for run in list(claimed.detached):
                        if not run.abandoned and not run.has_sharers():
                            run.abandon()
            if not (claimed.running or claimed.waiting):
                claimed.table.maybe_drop(claimed, now)

    def drop(self, claims: list[Claim], now: float) -> None:
        for st in claims:
            st.table.maybe_drop(st, now)

    def begin(self, claims: list[Claim], now: float) -> None:
        for st in claims:
            table = st.table
            table.begin(st, now)
            if table.rate_limit is not None and (st.line or st.heap):
                # A waiter parked while this place was pending waits for no timer: the
                # place now leaves the window at a known instant.
                until = table.blocked_until(st, now)
                if until is not None and until != math.inf:
                    table.arm_timer(st, until)

    def release(self, claims: list[Claim], now: float, *, ran: bool) -> None:
        for st in claims:
            if st.running > 0:
                st.table.give_back(st, now, ran=ran)
        self.dispatch(claims, now)

    def sharing(self, claims: list[Claim]) -> bool:
        for st in claims:
            if st.sharers is not None:
                return True
        return False

    def share(self, claims: list[Claim], value: Any, now: float, *, owner: object) -> None:
        # Only groups still added to the run's manager (``owner``) share, and only with that
        # manager's triggers: a group removed (or moved to another manager) since a trigger
        # claimed it no longer applies to that trigger.
        for st in claims:
            if st.sharers and st.table.owner is owner:
                for waiter in list(st.sharers):
                    if waiter.owner is not owner:
                        continue
                    self.leave(waiter, now)
                    if not waiter.future.done():
                        waiter.future.set_result(Shared(value))

    def dispatch(self, freed: list[Claim], now: float) -> None:
        if len(freed) == 1:
            # One key (most releases): start its best waiters while it has room.
            st = freed[0]
            table = st.table
            line = st.line
            while True:
                # The live first waiter: the line's first, unless it left or the heap has any.
                waiter = line[0] if line and not st.heap else None
                if waiter is None or waiter.parked is not st:
                    waiter = _head(st)
                    if waiter is None:
                        break
                if st.running >= table.max_concurrent:  # (blocked_until's first test)
                    break
                if table.timed:
                    until = table.blocked_until(st, now)
                    if until is not None:
                        if until != _INF:
                            table.arm_timer(st, until)
                        break
                if line and line[0] is waiter:  # (_unpark_head, inlined)
                    line.popleft()
                else:
                    heapq.heappop(st.heap)
                waiter.parked = None
                if len(waiter.claims) == 1 and not waiter.future.done():
                    # Its one key (this one) has room, and it came first in the key's line:
                    # what _offer's acquire would find. It takes the slot and starts.
                    table.take(st)
                    if st.sharers is None:  # leave()'s work here (it is unparked already)
                        waiter.left = True
                        st.waiting -= 1
                        table.waiting_total -= 1
                    else:
                        self.leave(waiter, now)
                    waiter.future.set_result(GO)
                else:
                    self._offer(waiter, now)
            if not (st.running or st.waiting):  # (maybe_drop's first test, inlined)
                table.maybe_drop(st, now)
            return
        self._dispatch_many(freed, now)

    def _dispatch_many(self, freed: list[Claim], now: float) -> None:
        """``dispatch`` of several keys: the best waiter of them all goes first, each time."""
        while True:
            best: Waiter | None = None
            best_claim: Claim | None = None
            for st in freed:
                head = _head(st) if st.line or st.heap else None
                if head is not None and (
                    best is None
                    or head.priority > best.priority
                    or (head.priority == best.priority and head.seq < best.seq)
                ):
                    table = st.table  # blocked_until's tests, the first one inlined:
                    if st.running < table.max_concurrent and (
                        not table.timed or table.blocked_until(st, now) is None
                    ):
                        best, best_claim = head, st
            if best is None or best_claim is None:
                break
            _unpark_head(best_claim, best)
            self._offer(best, now)
        for st in freed:
            table = st.table
            # Only a cooldown or a rate window (a key under its cap) blocks until a time.
            if table.timed and st.running < table.max_concurrent and _head(st) is not None:
                until = table.blocked_until(st, now)
                if until is not None and until != _INF:
                    table.arm_timer(st, until)
            if not (st.running or st.waiting):  # (maybe_drop's first test, inlined)
                table.maybe_drop(st, now)

    def reoffer(self, table: KeyTable, now: float) -> None:
        moved: list[Waiter] = []
        for st in list(table.states.values()):
            while (head := _head(st)) is not None:
                _unpark_head(st, head)
                moved.append(head)
        moved.sort(key=lambda w: (-w.priority, w.seq))
        for waiter in moved:
            self._offer(waiter, now)

    def _offer(self, waiter: Waiter, now: float) -> None:
        """Start an unparked waiter if all its keys have room, else park it where blocked."""
        if waiter.future.done():
            # Cancelled in this same loop turn, before its trigger could clean up: drop it
            # (its trigger's own leave() is then a no-op); the caller offers the slot on.
            self.leave(waiter, now)
            return
        blocked = self.acquire(waiter.claims, now, waiter.priority, waiter.seq, owner=waiter.owner)
        if blocked is None:
            self.leave(waiter, now)
            waiter.future.set_result(GO)
        else:
            self._park(waiter, *blocked)

    def fail_waiters(
        self, tables: Sequence[KeyTable], owner: object, error: Callable[[], BaseException]
    ) -> None:
        waiters: list[Waiter] = []
        for table in tables:
            for st in table.states.values():
                if st.line:
                    waiters.extend(w for w in st.line if w.parked is st and w.owner is owner)
                waiters.extend(
                    entry[2]
                    for entry in st.heap
                    if entry[2].parked is st and entry[2].owner is owner
                )
        if not waiters:
            return
        now = asyncio.get_running_loop().time()
        for waiter in waiters:
            self.leave(waiter, now)
            if waiter.future.done():  # cancelled in this loop turn; its trigger cleans up
                continue
            waiter.future.set_exception(error())
            waiter.future.exception()  # the trigger's awaiter gets it; do not log it as lost


# The in-memory admission holds no state of its own (it lives in the key tables): one will do.
LOCAL_ADMISSION = LocalAdmission()
