"""A hypothesis state machine that drives a ``TaskManager`` through random sequences of
triggers, completions, failures, cancellations (running and waiting), constraint-group
additions and removals, and virtual-time advances (some to the exact end of a rate window
or cooldown), with triggers whose ``should_execute`` takes its time and then says yes, no,
raises or is cancelled (a start that never runs), and checks the constraint semantics after
every step.

The machine is synchronous and owns a looptime event loop (virtual time, starting at 0);
each step runs the loop until nothing more is ready (``settle``) or, for a time advance,
for that many virtual seconds. Every run blocks on a future the machine resolves, so the
machine decides when runs end. Each trigger gets its own ``Task`` (its ``data`` holds the
trigger's keys), so every event and every call can be traced to its trigger. Instants are
compared in ticks of the virtual clock (a microsecond), where they are exact.

Checked:

* at every admission (the moment a trigger's slots are taken and ``should_execute`` is
  asked): for each group in force that the trigger claims, the runs of that key stay
  within ``max_concurrent``, the key's cooldown is over, and its rate window has room;
* after every step: each group's running and waiting counts match the model, and no key
  holds more runs than ``max_concurrent``;
* after every step: no key of a rate-limited group ever had more than ``max_per_window``
  starts in any half-open window of ``window`` seconds (a run's start is the instant its
  task function begins, after a slow ``should_execute``; starts that never ran do not count);
* priority-then-FIFO among triggers that waited with identical claims: a trigger is never
  admitted while one that ranks before it (higher priority, or same priority and earlier)
  still waits for the same keys;
* every outcome: a run's own result, a ``share-latest`` result of a run of a shared key
  that succeeded while it waited, ``None`` after ``should_execute`` said no, the injected
  error (of the run or of a slow check), a cancellation we asked for, or
  ``TaskManagerStoppedError`` after a ``stop()``;
* overlapping ``stop()`` calls (with and without timeout and drain) and runs that trigger
  another task through the manager: every ``stop()`` returns, by its own deadline on
  virtual time; a run cancelled by a stop emits ``cancelled`` at every nested level, counts
  no error and is never retried;
* at teardown, after letting everything finish: every awaiter has settled, the manager
  counts nothing, every group (including removed ones) holds no per-key state, and no
  asyncio task is left.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

import looptime
from _constraint_support import settle
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from taskbuffer import (
    RateLimit,
    Task,
    TaskConstraintGroup,
    TaskEvent,
    TaskManager,
    TaskManagerStoppedError,
)

KEY_SLOTS = 3  # each trigger carries one key choice per slot; each group reads one slot
KEYS = ("x", "y", None)
MAX_GROUPS = 4
HORIZON = 10.0  # longer than any cooldown or rate window
TICKS_PER_SECOND = 1_000_000  # looptime's resolution: its instants are whole ticks


def ticks(seconds: float) -> int:
    return round(seconds * TICKS_PER_SECOND)


class InjectedError(Exception):
    """The error the machine makes a run fail with."""


class CheckError(Exception):
    """The error the machine makes a slow ``should_execute`` raise."""


@dataclass(frozen=True)
class GroupSpec:
    name: str
    slot: int
    cap: float
    cooldown: float
    rate: tuple[int, float] | None
    sharing: bool


@dataclass
class Trigger:
    tid: int
    priority: int
    keys: tuple[str | None, ...]
    allow: bool
    claims: frozenset[tuple[str, str]]  # (group name, key) for the groups in force
    arrival: int  # clock of the machine's event counter
    caller: asyncio.Task[Any] | None = None
    queued: bool = False
    admitted: int | None = None  # event counter at admission
    cancel_requested: int | None = None
    started: float | None = None
    ended: float | None = None
    completed: int | None = None  # event counter when its run succeeded
    outcome: str | None = None  # "result", "shared", "skipped", "failed", "cancelled"
    value: Any = None
    gate: asyncio.Future[str] | None = None
    events: list[str] = field(default_factory=list)
    # A slow should_execute waits for this verdict (True, False, or CheckError).
    check: asyncio.Future[bool] | None = None
    admitted_at: float | None = None  # loop time its slots were taken
    in_force: frozenset[tuple[str, str]] = frozenset()  # claims of groups in force then


@dataclass
class StopCall:
    """One ``manager.stop()`` call the machine made."""

    timeout: float | None
    drain: bool
    called: float  # loop time of the call
    task: asyncio.Task[None]
    returned: float | None = None  # loop time it returned at


@dataclass
class NestedRun:
    """An outer task (with retries) whose run triggers an inner task through the manager;
    the inner run blocks on ``gate``. Both are exempt from every group."""

    nid: int
    outer: Task[Any, Any]
    inner: Task[Any, Any]
    outer_events: list[str] = field(default_factory=list)
    inner_events: list[str] = field(default_factory=list)
    caller: asyncio.Task[Any] | None = None
    gate: asyncio.Future[str] | None = None
    outcome: str | None = None  # "result", "stopped"


STOP_TIMEOUTS = st.sampled_from([None, None, 0.0, 0.5, 2.0])
NO_KEYS = (None,) * KEY_SLOTS

# Built once: strategies made inside rules would be re-validated on every draw.
SPEC_FIELDS = st.tuples(
    st.integers(0, KEY_SLOTS - 1),  # slot
    st.sampled_from([1, 1, 2, 3, math.inf]),  # max_concurrent
    st.sampled_from([0.0, 0.0, 1.0, 2.0, 0.3]),  # cooldown
    st.one_of(st.none(), st.tuples(st.integers(1, 3), st.sampled_from([1.0, 3.0, 5.0, 0.3, 0.7]))),
    st.booleans(),  # share-latest (odd-numbered groups only)
)
SpecFields = tuple[int, float, float, "tuple[int, float] | None", bool]


def make_spec(index: int, fields: SpecFields) -> GroupSpec:
    slot, cap, cooldown, rate, sharing = fields
    return GroupSpec(
        name=f"g{index}",
        slot=slot,
        cap=cap,
        cooldown=cooldown,
        rate=rate,
        sharing=sharing and index % 2 == 1,
    )


T = TypeVar("T")


def pick(data: st.DataObject, items: list[T]) -> T:
    return items[data.draw(st.integers(0, len(items) - 1))]


class ConstraintMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = looptime.new_event_loop(start=0)
        self.manager = TaskManager()
        self.specs: dict[str, GroupSpec] = {}
        self.groups: dict[str, TaskConstraintGroup] = {}  # every group ever added
        self.active: list[str] = []  # names of the groups in force, in order
        self.group_count = 0
        self.triggers: list[Trigger] = []
        self.counter = 0
        # Per (group, key): the runs that claimed it ended at these times; each end comes
        # with the triggers that may already have held a slot of the key when it came
        # (woken, not yet resumed), for which that end does not start a cooldown.
        self.ends: dict[tuple[str, str], list[tuple[float, frozenset[int]]]] = {}
        self.starts: dict[tuple[str, str], list[float]] = {}
        # Broken rules seen inside the loop (where raising would only fail the trigger);
        # the ``no_violations`` invariant reports them after the step.
        self.violations: list[str] = []
        self.stops: list[StopCall] = []
        self.stopped = False  # a stop() was called since the last start()
        self.stopped_at: dict[int, int] = {}  # tid -> event counter of its TaskManagerStoppedError
        self.nested: list[NestedRun] = []

    # ----------------------------------------------------------------------- plumbing

    def tick(self) -> int:
        self.counter += 1
        return self.counter

    def run(self, coro: Any) -> Any:
        async def guarded() -> Any:
            async with asyncio.timeout(3600):
                return await coro

        return self.loop.run_until_complete(guarded())

    def step(self) -> None:
        self.run(settle())

    def now(self) -> float:
        return self.loop.time()

    def add_group(self, spec: GroupSpec) -> None:
        def key(task: Task[Any, Any], x: Any, slot: int = spec.slot) -> str | None:
            value: str | None = task.data["keys"][slot]
            return value

        group = TaskConstraintGroup(
            name=spec.name,
            constraint_key_for_execution=key,
            max_concurrent=spec.cap,
            cooldown=spec.cooldown,
            should_execute=self.should_execute,
            rate_limit=None
            if spec.rate is None
            else RateLimit(max_per_window=spec.rate[0], window=spec.rate[1]),
            result_sharing="share-latest" if spec.sharing else "none",
        )
        self.manager.add_constraint_group(group)
        self.specs[spec.name] = spec
        self.groups[spec.name] = group
        self.active.append(spec.name)

    # -------------------------------------------------------------- admission checks

    async def should_execute(self, task: Task[Any, Any], x: Any) -> bool:
        if task.data["tid"] is None:  # a task of a NestedRun, not a Trigger
            return True
        tid: int = task.data["tid"]
        trigger = self.triggers[tid]
        if trigger.admitted is None:
            self.admit(trigger)
        if trigger.check is not None:
            return await trigger.check  # asked once per group; the verdict is the same
        return trigger.allow

    def running_on(self, claim: tuple[str, str]) -> int:
        """Slots of ``claim`` held: runs, and triggers in a slow check."""
        runs = sum(
            1
            for t in self.triggers
            if claim in t.claims and t.started is not None and t.ended is None
        )
        return runs + sum(1 for t in self.checking() if claim in t.claims)

    def admit(self, trigger: Trigger) -> None:
        now = self.now()
        admitted = self.tick()
        trigger.admitted_at = now
        trigger.in_force = frozenset(c for c in trigger.claims if c[0] in self.active)
        for claim in trigger.claims:
            name, key = claim
            if name not in self.active:
                continue  # a removed group no longer constrains
            spec = self.specs[name]
            if self.running_on(claim) + 1 > spec.cap:
                self.violations.append(f"trigger {trigger.tid} admitted over the cap of {claim}")
            if spec.cooldown:
                for end, held_before in self.ends.get(claim, []):
                    if (
                        ticks(now) < ticks(end) + ticks(spec.cooldown)
                        and trigger.tid not in held_before
                    ):
                        self.violations.append(
                            f"trigger {trigger.tid} admitted at {now} inside the cooldown of "
                            f"{claim} (a run ended at {end})"
                        )
            if spec.rate is not None:
                cap, window = spec.rate
                recent = [
                    s for s in self.starts.get(claim, []) if ticks(s) > ticks(now) - ticks(window)
                ]
                if len(recent) >= cap:
                    self.violations.append(
                        f"trigger {trigger.tid} admitted at {now} over the rate window of "
                        f"{claim}: starts {recent}"
                    )
        trigger.admitted = admitted  # after the checks: its own slot is not another's

    async def work(self, trigger: Trigger) -> str:
        if trigger.admitted is None:  # no group was in force to ask should_execute
            self.admit(trigger)
        now = self.now()
        trigger.started = now
        for claim in trigger.in_force:  # the window counts the instant the run starts
            self.starts.setdefault(claim, []).append(now)
        trigger.gate = self.loop.create_future()
        try:
            value = await trigger.gate
            trigger.completed = self.tick()
            return value
        finally:
            now = self.now()
            for claim in trigger.claims:
                self.ends.setdefault(claim, []).append((now, self.holding_before(claim)))
            trigger.ended = now

    def holding_before(self, claim: tuple[str, str]) -> frozenset[int]:
        """Waiting triggers of ``claim`` that may hold a slot already (woken by an earlier
        release of this same instant but not resumed yet): the group counts more slots
        taken than the model has runs started."""
        name, key = claim
        started = self.running_on(claim)  # includes the run that is ending
        if self.groups[name].get_running_count(key) <= started:
            return frozenset()
        return frozenset(t.tid for t in self.waiting() if claim in t.claims)

    async def call(self, trigger: Trigger, task: Task[Any, Any]) -> None:
        trigger.arrival = self.tick()
        try:
            value = await self.manager.trigger_task_constrained(
                task, None, priority=trigger.priority
            )
        except InjectedError:
            trigger.outcome = "failed"
            return
        except TaskManagerStoppedError:
            trigger.outcome = "stopped"
            self.stopped_at[trigger.tid] = self.tick()
            return
        except CheckError:
            trigger.outcome = "check-failed"
            return
        except asyncio.CancelledError:
            trigger.outcome = "cancelled"
            raise
        except Exception as error:
            trigger.outcome = "error"
            self.violations.append(f"trigger {trigger.tid} raised {error!r}")
            return
        trigger.value = value
        if value is None:
            trigger.outcome = "skipped"
        elif value == f"r{trigger.tid}":
            trigger.outcome = "result"
        else:
            trigger.outcome = "shared"

    # -------------------------------------------------------------------------- rules

    @initialize(first=SPEC_FIELDS, second=SPEC_FIELDS, two=st.booleans())
    def start_with_groups(self, first: SpecFields, second: SpecFields, two: bool) -> None:
        self.add_group(make_spec(0, first))
        self.group_count = 1
        if two:
            self.add_group(make_spec(1, second))
            self.group_count = 2

    @rule(
        priority=st.sampled_from([0, 0, 0, 1, 5, -2]),
        keys=st.tuples(*[st.sampled_from(KEYS) for _ in range(KEY_SLOTS)]),
        allow=st.sampled_from([True, True, True, True, False]),
    )
    def trigger(
        self, priority: int, keys: tuple[str | None, ...], allow: bool, slow: bool = False
    ) -> None:
        tid = len(self.triggers)
        claims = frozenset(
            (name, key) for name in self.active if (key := keys[self.specs[name].slot]) is not None
        )
        trigger = Trigger(
            tid=tid, priority=priority, keys=keys, allow=allow, claims=claims, arrival=0
        )
        if slow:
            trigger.check = self.loop.create_future()
        self.triggers.append(trigger)

        async def function() -> str:
            return await self.work(trigger)

        task = Task(name=f"t{tid}", task_function=function, data={"tid": tid, "keys": keys})
        task.event_subject.subscribe(lambda event: self.on_event(trigger, event))
        trigger.caller = self.loop.create_task(self.call(trigger, task))
        self.step()

    def on_event(self, trigger: Trigger, event: TaskEvent) -> None:
        trigger.events.append(event.type)
        if event.type == "queued":
            trigger.queued = True

    def running(self) -> list[Trigger]:
        return [t for t in self.triggers if t.gate is not None and not t.gate.done()]

    def waiting(self) -> list[Trigger]:
        return [
            t
            for t in self.triggers
            if t.admitted is None and t.caller is not None and not t.caller.done()
        ]

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        trigger = pick(data, self.running())
        assert trigger.gate is not None
        trigger.gate.set_result(f"r{trigger.tid}")
        self.step()

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        trigger = pick(data, self.running())
        assert trigger.gate is not None
        trigger.gate.set_exception(InjectedError(f"run {trigger.tid} failed"))
        self.step()

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def cancel_running(self, data: st.DataObject) -> None:
        trigger = pick(data, self.running())
        assert trigger.caller is not None
        trigger.cancel_requested = self.tick()
        trigger.caller.cancel()
        self.step()

    @precondition(lambda self: bool(self.waiting()))
    @rule(data=st.data())
    def cancel_waiting(self, data: st.DataObject) -> None:
        trigger = pick(data, self.waiting())
        assert trigger.caller is not None
        trigger.cancel_requested = self.tick()
        trigger.caller.cancel()
        self.step()

    @precondition(lambda self: len(self.active) < MAX_GROUPS)
    @rule(fields=SPEC_FIELDS)
    def add_new_group(self, fields: SpecFields) -> None:
        spec = make_spec(self.group_count, fields)
        self.group_count += 1
        self.run(self._add(spec))

    async def _add(self, spec: GroupSpec) -> None:
        self.add_group(spec)
        await settle()

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def remove_group(self, data: st.DataObject) -> None:
        name = pick(data, self.active)
        self.run(self._remove(name))

    async def _remove(self, name: str) -> None:
        self.manager.remove_constraint_group(name)
        self.active.remove(name)
        await settle()

    @rule(seconds=st.sampled_from([0.5, 1.0, 1.0, 2.0, 5.0, 0.1, 0.3]))
    def advance(self, seconds: float) -> None:
        async def advance() -> None:
            await asyncio.sleep(seconds)
            await settle()

        self.run(advance())

    # ------------------------------------------------------ stops and nested triggers

    def start_stop(self, timeout: float | None, drain: bool) -> None:
        task = self.loop.create_task(self.manager.stop(timeout=timeout, drain=drain))
        call = StopCall(timeout=timeout, drain=drain, called=self.now(), task=task)

        def returned(_: asyncio.Task[None]) -> None:
            call.returned = self.now()

        task.add_done_callback(returned)
        self.stops.append(call)
        self.stopped = True

    @rule(
        timeout=STOP_TIMEOUTS,
        drain=st.booleans(),
        overlapping=st.one_of(st.none(), st.tuples(STOP_TIMEOUTS, st.booleans())),
    )
    def stop(
        self,
        timeout: float | None,
        drain: bool,
        overlapping: tuple[float | None, bool] | None,
    ) -> None:
        """One stop() call, or two at once; a stop still under way overlaps them too."""
        self.start_stop(timeout, drain)
        if overlapping is not None:
            self.start_stop(*overlapping)
        self.step()

    @precondition(lambda self: self.stopped and all(c.task.done() for c in self.stops))
    @rule()
    def start_again(self) -> None:
        self.run(self.manager.start())
        self.stopped = False
        self.step()

    @rule()
    def nested_trigger(self) -> None:
        nid = len(self.nested)

        async def inner_function() -> str:
            pair.gate = self.loop.create_future()
            return await pair.gate

        async def outer_function() -> Any:
            return await self.manager.trigger_task(pair.inner)

        data = {"tid": None, "keys": NO_KEYS}
        pair = NestedRun(
            nid=nid,
            outer=Task(
                name=f"outer{nid}",
                task_function=outer_function,
                data=data,
                retries=2,
                retry_delay=1.0,
            ),
            inner=Task(name=f"inner{nid}", task_function=inner_function, data=data),
        )
        pair.outer.event_subject.subscribe(lambda event: pair.outer_events.append(event.type))
        pair.inner.event_subject.subscribe(lambda event: pair.inner_events.append(event.type))
        self.nested.append(pair)
        pair.caller = self.loop.create_task(self.call_nested(pair))
        self.step()

    async def call_nested(self, pair: NestedRun) -> None:
        try:
            value = await self.manager.trigger_task(pair.outer)
        except TaskManagerStoppedError:
            pair.outcome = "stopped"
            return
        except Exception as error:
            self.violations.append(f"nested run {pair.nid} raised {error!r}")
            return
        pair.outcome = "result"
        if value != f"n{pair.nid}":
            self.violations.append(f"nested run {pair.nid} returned {value!r}")

    def nested_gates(self) -> list[NestedRun]:
        return [p for p in self.nested if p.gate is not None and not p.gate.done()]

    @precondition(lambda self: bool(self.nested_gates()))
    @rule(data=st.data())
    def complete_nested(self, data: st.DataObject) -> None:
        pair = pick(data, self.nested_gates())
        assert pair.gate is not None
        pair.gate.set_result(f"n{pair.nid}")
        self.step()

    def nested_running(self) -> int:
        return sum(p.outer.running + p.inner.running for p in self.nested)

    @invariant()
    def stops_return_by_their_deadline(self) -> None:
        now = self.now()
        for i, call in enumerate(self.stops):
            if call.task.done():
                assert not call.task.cancelled() and call.task.exception() is None, i
            if call.timeout is None:
                continue
            deadline = call.called + call.timeout
            if now >= deadline:
                assert call.task.done(), f"stop() {i} ({call}) not returned at {now}"
            if call.returned is not None:
                assert call.returned <= deadline, f"stop() {i} returned late: {call}"

    @invariant()
    def stopped_outcomes_come_from_a_stop(self) -> None:
        for trigger in self.triggers:
            if trigger.outcome != "stopped":
                continue
            assert self.stops, f"trigger {trigger.tid} got TaskManagerStoppedError unstopped"
            assert "failed" not in trigger.events, (trigger.tid, trigger.events)
            if trigger.started is not None:
                # Its run was cancelled by a stop: cancelled, not failed.
                assert trigger.events[-1] == "cancelled", (trigger.tid, trigger.events)

    @invariant()
    def nested_runs_are_cancelled_by_stop_never_failed_or_retried(self) -> None:
        for pair in self.nested:
            for task, events in ((pair.outer, pair.outer_events), (pair.inner, pair.inner_events)):
                assert "failed" not in events and "retrying" not in events, (task, events)
                assert task.error_count == 0, task
            if pair.outcome == "result":
                assert pair.outer_events == ["started", "completed"], pair
                assert pair.inner_events == ["started", "completed"], pair
            elif pair.outcome == "stopped":
                assert self.stops
                # Refused at once (no run), or cancelled at every level.
                assert pair.outer_events in ([], ["started", "cancelled"]), pair
                assert pair.inner_events in ([], ["started", "cancelled"]), pair
                assert bool(pair.outer_events) == bool(pair.inner_events), pair

    # ------------------------------------------ slow checks, starts that never run, boundaries

    def checking(self) -> list[Trigger]:
        """Triggers holding their slots inside a slow ``should_execute``."""
        return [
            t
            for t in self.triggers
            if t.check is not None
            and t.admitted is not None
            and t.started is None
            and t.caller is not None
            and not t.caller.done()
        ]

    def pending_checks(self) -> list[Trigger]:
        return [t for t in self.triggers if t.check is not None and not t.check.done()]

    @rule(
        priority=st.sampled_from([0, 0, 1, -2]),
        keys=st.tuples(*[st.sampled_from(KEYS) for _ in range(KEY_SLOTS)]),
    )
    def trigger_with_a_slow_check(self, priority: int, keys: tuple[str | None, ...]) -> None:
        """Its should_execute waits for ``answer_check``: its slots (and its place in the
        rate window) are held meanwhile, and it may never run."""
        self.trigger(priority, keys, True, slow=True)

    @rule(
        count=st.integers(2, 8),
        keys=st.tuples(*[st.sampled_from(KEYS) for _ in range(KEY_SLOTS)]),
        slow=st.booleans(),
    )
    def trigger_several(self, count: int, keys: tuple[str | None, ...], slow: bool) -> None:
        """Several triggers of the same keys at one instant: a queue for windows and
        cooldowns to work through, one boundary after another."""
        for _ in range(count):
            self.trigger(0, keys, True, slow=slow)

    @precondition(lambda self: bool(self.pending_checks()))
    @rule(data=st.data(), verdict=st.sampled_from(["yes", "no", "raise"]))
    def answer_check(self, data: st.DataObject, verdict: str) -> None:
        trigger = pick(data, self.pending_checks())
        assert trigger.check is not None
        if verdict == "yes":
            trigger.check.set_result(True)
        elif verdict == "no":
            trigger.allow = False
            trigger.check.set_result(False)
        else:
            trigger.check.set_exception(CheckError(f"check of {trigger.tid} failed"))
            trigger.check.exception()  # its trigger may never ask: not an unretrieved error
        self.step()

    @precondition(lambda self: bool(self.checking()))
    @rule(data=st.data())
    def cancel_in_check(self, data: st.DataObject) -> None:
        trigger = pick(data, self.checking())
        assert trigger.caller is not None
        trigger.cancel_requested = self.tick()
        trigger.caller.cancel()
        self.step()

    def boundaries(self) -> list[int]:
        """Instants (ticks) still to come where a start leaves a rate window or a cooldown
        ends, for the groups in force."""
        now = ticks(self.now())
        found: set[int] = set()
        for name in self.active:
            spec = self.specs[name]
            if spec.rate is not None:
                length = ticks(spec.rate[1])
                for claim, starts in self.starts.items():
                    if claim[0] == name:
                        found.update(ticks(s) + length for s in starts)
            if spec.cooldown:
                for claim, ends in self.ends.items():
                    if claim[0] == name:
                        found.update(ticks(end) + ticks(spec.cooldown) for end, _ in ends)
        return sorted(b for b in found if b > now)

    @precondition(lambda self: bool(self.boundaries()))
    @rule(data=st.data())
    def advance_to_a_boundary(self, data: st.DataObject) -> None:
        """Advance the virtual clock to the exact end of a rate window or a cooldown."""
        target = pick(data, self.boundaries())

        async def advance() -> None:
            await asyncio.sleep((target - ticks(self.now())) / TICKS_PER_SECOND)
            await settle()

        self.run(advance())

    # --------------------------------------------------------------------- invariants

    @invariant()
    def no_violations(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def rate_windows_hold(self) -> None:
        """No key ever had more than ``max_per_window`` starts in a half-open window of
        ``window`` seconds (starts that never ran do not count)."""
        for (name, key), starts in self.starts.items():
            rate = self.specs[name].rate
            if rate is None:
                continue
            cap, length = rate[0], ticks(rate[1])
            instants = sorted(ticks(s) for s in starts)
            for i in range(cap, len(instants)):
                assert instants[i] - instants[i - cap] >= length, (
                    f"{cap + 1} starts of {(name, key)} within {rate[1]} s: "
                    f"{[t / TICKS_PER_SECOND for t in instants[i - cap : i + 1]]}"
                )

    @invariant()
    def counts_match_the_model(self) -> None:
        running = self.running()
        waiting = self.waiting()
        stats = self.manager.statistics()
        nested = self.nested_running()
        assert stats.running == len(running) + nested, (stats, [t.tid for t in running], nested)
        assert stats.waiting == len(waiting), (stats, [t.tid for t in waiting])
        holding = running + self.checking()
        for name, group in self.groups.items():
            g = group.statistics()
            assert g.running == sum(1 for t in holding if any(c[0] == name for c in t.claims))
            assert g.waiting == sum(1 for t in waiting if any(c[0] == name for c in t.claims))
            if name in self.active:
                spec = self.specs[name]
                for key in ("x", "y"):
                    assert group.get_running_count(key) <= spec.cap

    @invariant()
    def outcomes_are_legitimate(self) -> None:
        for trigger in self.triggers:
            if trigger.outcome is None:
                continue
            if trigger.outcome == "result":
                assert trigger.started is not None and trigger.completed is not None
            elif trigger.outcome == "skipped":
                assert not trigger.allow and trigger.started is None
            elif trigger.outcome == "failed":
                assert trigger.started is not None
            elif trigger.outcome == "check-failed":
                assert trigger.started is None and trigger.check is not None
                assert trigger.check.done() and trigger.check.exception() is not None
            elif trigger.outcome == "cancelled":
                assert trigger.cancel_requested is not None
                if trigger.queued and trigger.admitted is None:
                    assert trigger.events[-1] == "cancelled"
            elif trigger.outcome == "stopped":
                pass  # see stopped_outcomes_come_from_a_stop
            else:
                self.check_shared(trigger)

    def check_shared(self, trigger: Trigger) -> None:
        assert trigger.outcome == "shared"
        assert trigger.admitted is None and trigger.started is None
        source = self.triggers[int(str(trigger.value)[1:])]
        assert source.completed is not None
        shared_keys = {
            claim for claim in trigger.claims & source.claims if self.specs[claim[0]].sharing
        }
        assert shared_keys, f"{trigger.tid} got {source.tid}'s result without a shared key"
        assert trigger.arrival < source.completed

    def check_order(self) -> None:
        """Priority then FIFO among triggers that waited with identical claims."""

        def resolved(t: Trigger) -> int | None:
            if t.admitted is not None:
                return t.admitted
            if t.cancel_requested is not None:
                return t.cancel_requested
            if t.outcome == "shared":
                return self.triggers[int(str(t.value)[1:])].completed
            return self.stopped_at.get(t.tid)

        queued = [t for t in self.triggers if t.queued and t.admitted is not None]
        everyone = [t for t in self.triggers if t.queued]
        for later in queued:
            assert later.admitted is not None
            for earlier in everyone:
                if earlier is later or earlier.claims != later.claims:
                    continue
                ranks_first = (earlier.priority, -earlier.arrival) > (
                    later.priority,
                    -later.arrival,
                )
                if not ranks_first or earlier.arrival > later.admitted:
                    continue
                done = resolved(earlier)
                assert done is not None and done < later.admitted, (
                    f"trigger {later.tid} (priority {later.priority}) was admitted while "
                    f"{earlier.tid} (priority {earlier.priority}, earlier) still waited "
                    f"for the same keys {sorted(later.claims)}"
                )

    @invariant()
    def priority_then_fifo(self) -> None:
        self.check_order()

    # ----------------------------------------------------------------------- teardown

    def drain(self) -> None:
        async def drain() -> None:
            for _ in range(1000):
                await settle()
                pending = [t for t in self.triggers if t.caller is not None and not t.caller.done()]
                if not pending and not self.unsettled_stops_and_nested():
                    break
                for trigger in self.running():
                    assert trigger.gate is not None
                    trigger.gate.set_result(f"r{trigger.tid}")
                for pair in self.nested_gates():
                    assert pair.gate is not None
                    pair.gate.set_result(f"n{pair.nid}")
                for trigger in self.pending_checks():
                    assert trigger.check is not None
                    trigger.check.set_result(True)
                await settle()
                await asyncio.sleep(HORIZON)
            else:
                raise AssertionError("triggers never settled")
            await asyncio.sleep(HORIZON)  # every cooldown and rate window runs out
            await settle()

        self.run(drain())

    def unsettled_stops_and_nested(self) -> bool:
        return any(not c.task.done() for c in self.stops) or any(
            p.caller is not None and not p.caller.done() for p in self.nested
        )

    def teardown(self) -> None:
        try:
            self.drain()
            self.no_violations()
            assert not self.unsettled_stops_and_nested()
            self.stops_return_by_their_deadline()
            self.nested_runs_are_cancelled_by_stop_never_failed_or_retried()
            self.rate_windows_hold()
            for trigger in self.triggers:
                assert trigger.caller is not None and trigger.caller.done()
                assert trigger.outcome is not None
            self.counts_match_the_model()
            self.outcomes_are_legitimate()
            self.check_order()
            stats = self.manager.statistics()
            assert (stats.running, stats.waiting) == (0, 0)
            for group in self.groups.values():
                assert group.statistics().tracked_keys == 0, group.statistics()
                assert group.statistics().running == group.statistics().waiting == 0
            leftover = asyncio.all_tasks(self.loop)
            assert not leftover, leftover
        finally:
            self.close()

    def close(self) -> None:
        leftover = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            self.loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        for trigger in self.triggers:
            if (
                trigger.caller is not None
                and trigger.caller.done()
                and not trigger.caller.cancelled()
            ):
                trigger.caller.exception()  # retrieved: no "never retrieved" log
        for task in [c.task for c in self.stops] + [p.caller for p in self.nested if p.caller]:
            if task.done() and not task.cancelled():
                task.exception()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


ConstraintMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_constraint_groups_under_random_operations = ConstraintMachine.TestCase
