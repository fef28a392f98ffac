"""Races around a ``max_concurrent=1`` key, and cancellation at every await of a trigger.

The first part ports the race cases of CPython's ``Lib/test/test_asyncio/test_locks.py``
(``LockTests.test_cancel_race``, ``test_cancel_release_race``, ``test_finished_waiter_cancelled``,
the no-queue-jumping rule behind ``Lock.acquire``'s fast path, and the ``Semaphore`` tests
``test_acquire_cancel_before_awoken`` / ``test_acquire_hang``) to constraint groups: a key with
``max_concurrent=1`` is a lock, a trigger waiting for it is a waiter. Each race is written
deterministically: the two halves happen in one synchronous callback, so they fall in the
same loop turn by construction.

The second part cancels a constrained trigger at each point where it can be suspended
(waiting for a slot, for a cooldown, inside an async ``should_execute``, inside the task
function, after being woken but before resuming) and checks that nothing leaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from _constraint_support import Gates, event_types, idle, settle

from taskbuffer import RateLimit, Task, TaskConstraintGroup, TaskEvent, TaskManager

Record = Callable[[Task[Any, Any]], list[TaskEvent]]


def lock_group(**options: Any) -> TaskConstraintGroup:
    return TaskConstraintGroup(
        name="lock", constraint_key_for_execution=lambda task, x: "k", max_concurrent=1, **options
    )


def setup(**options: Any) -> tuple[TaskManager, TaskConstraintGroup, Gates, Task[Any]]:
    group = lock_group(**options)
    manager = TaskManager()
    manager.add_constraint_group(group)
    gates = Gates()
    return manager, group, gates, Task(name="t", task_function=gates.function)


def spawn(coro: Any) -> asyncio.Task[Any]:
    return asyncio.ensure_future(coro)


async def cancelled(task: asyncio.Task[Any]) -> None:
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(60):
            await task
    assert task.cancelled()


def only_this_task_left() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


# ---------------------------------------------------------------------- CPython lock races


@pytest.mark.parametrize("release_first", [True, False])
async def test_cancel_race(release_first: bool) -> None:
    """LockTests.test_cancel_race: A holds the key, B and C wait; B is cancelled and A
    releases in the same turn. C must get the key (not lost to the cancelled B).

    With ``release_first`` A's task resumes (and releases) before B's task has seen its
    cancellation: the release finds B's waiter cancelled but still queued.
    """
    manager, group, gates, t = setup()
    a = spawn(manager.trigger_task(t, "A"))
    await gates.wait_started("A")
    b = spawn(manager.trigger_task(t, "B"))
    c = spawn(manager.trigger_task(t, "C"))
    await settle()

    def race() -> None:
        if release_first:
            gates.finish("A")  # A's run ends (and releases) when its task resumes
            b.cancel()
        else:
            b.cancel()
            gates.finish("A")

    asyncio.get_running_loop().call_soon(race)
    assert await a == "A"
    await cancelled(b)
    await gates.wait_started("C")
    assert gates.started == ["A", "C"]
    assert group.get_running_count("k") == 1
    gates.finish("C")
    assert await c == "C"
    assert group.statistics() == idle(group)
    only_this_task_left()


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_cancel_release_race(cancel_first: bool) -> None:
    """LockTests.test_cancel_release_race (bpo-32734): the key is held, t1-t3 wait; in one
    callback t1 is cancelled and the key released. Exactly one of t2/t3 (t2) gets it."""
    manager, group, gates, t = setup()
    assert group.acquire_slot("k")  # t0 holds the lock
    t1, t2, t3 = (spawn(manager.trigger_task(t, x)) for x in ("t1", "t2", "t3"))
    await settle()
    assert group.statistics().waiting == 3

    def trigger() -> None:
        if cancel_first:
            t1.cancel()
            group.release_slot("k")
        else:
            group.release_slot("k")  # hands the slot to t1 ...
            t1.cancel()  # ... which is cancelled before it resumes: it hands it on

    asyncio.get_running_loop().call_soon(trigger)
    await cancelled(t1)
    await gates.wait_started("t2")
    await settle()
    assert not t2.done() and not t3.done()
    assert gates.started == ["t2"]
    assert group.get_running_count("k") == 1
    assert group.statistics().waiting == 1
    t3.cancel()
    await cancelled(t3)
    gates.finish("t2")
    assert await t2 == "t2"
    assert group.statistics() == idle(group)
    only_this_task_left()


async def test_finished_waiter_cancelled(record: Record) -> None:
    """LockTests.test_finished_waiter_cancelled: A ends, B is woken (its slot taken for
    it) and cancelled before it resumes. C must still start; B never runs."""
    manager, group, gates, t = setup()
    loop = asyncio.get_running_loop()
    events = record(t)
    a = spawn(manager.trigger_task(t, "A"))
    await gates.wait_started("A")
    b = spawn(manager.trigger_task(t, "B"))
    c = spawn(manager.trigger_task(t, "C"))
    await settle()
    seen: list[tuple[int, int]] = []

    def cancel_b() -> None:
        # A has released by now and B holds the slot, but B has not resumed yet.
        seen.append((group.statistics().waiting, group.get_running_count("k")))
        b.cancel()

    def on_event(event: TaskEvent) -> None:
        if event.type == "completed":
            # Emitted in A's last step, before its slot is released: this callback is
            # queued ahead of B's wake-up, which the release schedules.
            loop.call_soon(cancel_b)

    subscription = t.event_subject.subscribe(on_event)
    try:
        gates.finish("A")
        assert await a == "A"
        await cancelled(b)
    finally:
        subscription.dispose()
    assert seen == [(1, 1)]  # only C still waits; the slot was B's
    await gates.wait_started("C")
    assert gates.started == ["A", "C"]
    gates.finish("C")
    assert await c == "C"
    assert event_types(events).count("cancelled") == 1
    assert group.statistics() == idle(group)
    only_this_task_left()


async def test_a_woken_waiter_cancelled_in_the_releasing_step_hands_the_slot_on() -> None:
    """The same race with the cancel issued from inside A's task function, right before its
    run returns and releases: the cancelled B is skipped and C starts."""
    manager, group, gates, t0 = setup()
    b_holder: list[asyncio.Task[Any]] = []

    async def releasing(x: str) -> str:
        if x == "A":
            await gates.function("A")
            b_holder[0].cancel()
        return x

    t = Task(name="r", task_function=releasing)
    a = spawn(manager.trigger_task(t, "A"))
    await gates.wait_started("A")
    b = spawn(manager.trigger_task(t0, "B"))
    c = spawn(manager.trigger_task(t0, "C"))
    b_holder.append(b)
    await settle()
    gates.finish("A")
    assert await a == "A"
    await cancelled(b)
    await gates.wait_started("C")
    assert gates.started == ["A", "C"]
    gates.finish("C")
    await c
    assert group.statistics() == idle(group)


async def test_a_newcomer_between_release_and_wake_does_not_jump_the_queue(
    record: Record,
) -> None:
    """Lock.acquire's fast path is taken only when nobody waits: a trigger that looks at the
    key after it was released but before the woken B resumed must queue behind B."""
    manager, group, gates, t = setup()
    events = record(t)
    assert group.acquire_slot("k")  # t0 holds the lock
    b = spawn(manager.trigger_task(t, "B"))
    await settle()
    newcomer: list[asyncio.Task[Any]] = []

    def arrive_and_release() -> None:
        # C's first step is queued before B's wake-up (which the release queues), so C
        # looks at the key after the release and before B resumes.
        newcomer.append(spawn(manager.trigger_task(t, "C")))
        group.release_slot("k")

    asyncio.get_running_loop().call_soon(arrive_and_release)
    await gates.wait_started("B")
    await settle()
    assert gates.started == ["B"]
    assert group.get_running_count("k") == 1
    assert event_types(events) == ["queued", "queued", "started"]  # B, C queued; B started
    gates.finish("B")
    await gates.wait_started("C")
    gates.finish("C")
    assert list(await asyncio.gather(b, newcomer[0])) == ["B", "C"]
    assert group.statistics() == idle(group)


async def test_a_newcomer_in_the_releasing_step_does_not_jump_the_queue() -> None:
    """The same, with the release and the newcomer's first step in one loop turn: A's task
    function starts C's trigger and returns; C runs before B resumes and must queue."""
    manager, group, gates, t = setup()
    spawned: list[asyncio.Task[Any]] = []

    async def releasing(x: str) -> str:
        await gates.function(x)
        spawned.append(spawn(manager.trigger_task(t, "C")))
        return x

    a = spawn(manager.trigger_task(Task(name="r", task_function=releasing), "A"))
    await gates.wait_started("A")
    b = spawn(manager.trigger_task(t, "B"))
    await settle()
    gates.finish("A")
    assert await a == "A"
    await gates.wait_started("B")
    await settle()
    assert gates.started == ["A", "B"]
    assert group.get_running_count("k") == 1
    gates.finish("B")
    await gates.wait_started("C")
    gates.finish("C")
    assert list(await asyncio.gather(b, spawned[0])) == ["B", "C"]
    assert group.statistics() == idle(group)


async def test_a_newcomer_while_a_cooldown_wakes_the_waiter_does_not_jump_the_queue() -> None:
    """A waiter woken by its cooldown timer owns the slot before a newcomer of the same
    instant can look at the key."""
    loop = asyncio.get_running_loop()
    manager, group, gates, t = setup(cooldown=2)
    a = spawn(manager.trigger_task(t, "A"))
    await gates.wait_started("A")
    gates.finish("A")
    await a
    b = spawn(manager.trigger_task(t, "B"))
    await settle()
    spawned: list[asyncio.Task[Any]] = []
    loop.call_at(2.0, lambda: spawned.append(spawn(manager.trigger_task(t, "C"))))
    await gates.wait_started("B")
    await settle()
    assert gates.started == ["A", "B"] and gates.start_times["B"] == 2.0
    gates.finish("B")
    await gates.wait_started("C")
    assert gates.start_times["C"] == 4.0
    gates.finish("C")
    await asyncio.gather(b, spawned[0])


async def test_semaphore_acquire_cancel_before_awoken() -> None:
    """SemaphoreTests.test_acquire_cancel_before_awoken, with max_concurrent=2: both slots
    are released and the two first waiters cancelled in one callback; the two others
    must get the slots."""
    group = TaskConstraintGroup(
        name="sem", constraint_key_for_execution=lambda t, x: "k", max_concurrent=2
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    gates = Gates()
    t = Task(name="t", task_function=gates.function)
    assert group.acquire_slot("k") and group.acquire_slot("k")
    waiters = {x: spawn(manager.trigger_task(t, x)) for x in ("t1", "t2", "t3", "t4")}
    await settle()

    def trigger() -> None:
        group.release_slot("k")
        group.release_slot("k")
        waiters["t1"].cancel()
        waiters["t2"].cancel()

    asyncio.get_running_loop().call_soon(trigger)
    await cancelled(waiters["t1"])
    await cancelled(waiters["t2"])
    await gates.wait_started("t3")
    await gates.wait_started("t4")
    assert group.get_running_count("k") == 2
    gates.finish("t3")
    gates.finish("t4")
    assert list(await asyncio.gather(waiters["t3"], waiters["t4"])) == ["t3", "t4"]
    assert group.statistics() == idle(group)


async def test_semaphore_acquire_hang() -> None:
    """SemaphoreTests.test_acquire_hang: a waiter cancelled just before the release must
    not swallow the release; the next waiter gets it."""
    manager, group, gates, t = setup()
    assert group.acquire_slot("k")
    t1 = spawn(manager.trigger_task(t, "t1"))
    t2 = spawn(manager.trigger_task(t, "t2"))
    await settle()
    t1.cancel()
    group.release_slot("k")
    await cancelled(t1)
    await gates.wait_started("t2")
    gates.finish("t2")
    assert await t2 == "t2"
    assert group.statistics() == idle(group)


async def test_cancelling_every_waiter_in_the_releasing_turn_leaves_the_key_free() -> None:
    manager, group, gates, t = setup(cooldown=1)
    assert group.acquire_slot("k")
    waiters = [spawn(manager.trigger_task(t, x)) for x in range(5)]
    await settle()

    def trigger() -> None:
        group.release_slot("k")
        for waiter in waiters:
            waiter.cancel()

    asyncio.get_running_loop().call_soon(trigger)
    for waiter in waiters:
        await cancelled(waiter)
    assert gates.started == []
    await asyncio.sleep(1)
    assert group.statistics() == idle(group)
    only_this_task_left()


# ------------------------------------------------------- cancellation at every await point


class Victim:
    """A trigger that passes through every await a constrained trigger can meet: a queue
    behind a running run (cap), a cooldown, a rate window, an async ``should_execute``
    and a task function that sleeps; and the groups it passes through."""

    def __init__(self, *, share: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.checks: list[tuple[str, float]] = []
        self.runs: list[tuple[str, float]] = []
        self.lock = TaskConstraintGroup(
            name="lock",
            constraint_key_for_execution=lambda task, x: "k",
            max_concurrent=1,
            cooldown=1,
            should_execute=self.check,
        )
        self.rate = TaskConstraintGroup(
            name="rate",
            constraint_key_for_execution=lambda task, x: "k",
            rate_limit=RateLimit(max_per_window=2, window=10),
            result_sharing="share-latest" if share else "none",
        )
        self.manager = TaskManager()
        self.manager.add_constraint_group(self.lock)
        self.manager.add_constraint_group(self.rate)
        self.task = Task(name="victim", task_function=self.work)

    async def check(self, task: Task[Any, Any], x: Any) -> bool:
        self.checks.append((x, self.loop.time()))
        await asyncio.sleep(0.5)
        return True

    async def work(self, x: str) -> str:
        self.runs.append((x, self.loop.time()))
        await asyncio.sleep(2)
        await asyncio.sleep(0)
        return x

    def groups(self) -> tuple[TaskConstraintGroup, ...]:
        return (self.lock, self.rate)

    async def assert_clean(self) -> None:
        """Nothing leaked: no run, no waiter, no key state once time has passed, and a new
        trigger still runs."""
        stats = self.manager.statistics()
        assert (stats.running, stats.waiting) == (0, 0)
        await asyncio.sleep(20)  # every cooldown and window is over
        for group in self.groups():
            assert group.statistics() == idle(group)
        only_this_task_left()
        start = self.loop.time()
        assert await self.manager.trigger_task(self.task, "after") == "after"
        assert self.runs[-1] == ("after", start + 0.5)
        await asyncio.sleep(20)
        for group in self.groups():
            assert group.statistics() == idle(group)


@pytest.mark.parametrize("delay", [0.0, 0.25, 0.5, 1.0, 2.0, 2.5, 3.0, 3.5, 4.5, 5.0, 5.5])
@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
async def test_cancelling_a_trigger_anywhere_leaks_nothing(
    record: Record, delay: float, yields: int
) -> None:
    """Two triggers: "first" runs over [0.5, 2.5) (after a 0.5 s check); "victim" waits
    for it, then for the cooldown until 3.5, is checked until 4.0 and runs until 6.0. The
    victim is cancelled at ``delay`` (virtual seconds) plus ``yields`` loop turns, which
    lands on every await it passes through."""
    v = Victim()
    events = record(v.task)
    first = spawn(v.manager.trigger_task(v.task, "first"))
    victim = spawn(v.manager.trigger_task(v.task, "victim"))
    await asyncio.sleep(delay)
    for _ in range(yields):
        await asyncio.sleep(0)
    victim.cancel()
    outcome: str | None
    try:
        async with asyncio.timeout(60):
            outcome = await victim
    except asyncio.CancelledError:
        outcome = None
    assert await first == "first"
    types = event_types(events)
    if outcome is None:
        assert victim.cancelled()
        assert types.count("cancelled") == ("queued" in types or len(v.checks) == 1)
    else:  # it finished before the cancellation landed
        assert outcome == "victim"
        assert "cancelled" not in types
    await v.assert_clean()


async def test_cancel_while_waiting_for_a_slot(record: Record) -> None:
    v = Victim()
    events = record(v.task)
    first = spawn(v.manager.trigger_task(v.task, "first"))
    await asyncio.sleep(1)  # first runs; the victim will queue behind it
    victim = spawn(v.manager.trigger_task(v.task, "victim"))
    await settle()
    assert v.lock.statistics().waiting == 1
    victim.cancel()
    await cancelled(victim)
    assert v.lock.statistics().waiting == v.rate.statistics().waiting == 0
    assert event_types(events)[-2:] == ["queued", "cancelled"]
    assert await first == "first"
    assert [x for x, _ in v.runs] == ["first"]
    await v.assert_clean()


async def test_cancel_while_waiting_for_a_cooldown(record: Record) -> None:
    v = Victim()
    events = record(v.task)
    assert await v.manager.trigger_task(v.task, "first") == "first"
    victim = spawn(v.manager.trigger_task(v.task, "victim"))
    await asyncio.sleep(0.5)
    assert v.lock.get_cooldown_remaining("k") == 0.5
    assert v.lock.statistics().waiting == 1
    victim.cancel()
    await cancelled(victim)
    assert event_types(events)[-2:] == ["queued", "cancelled"]
    assert v.checks == [("first", 0.0)]
    await v.assert_clean()


async def test_cancel_while_waiting_for_the_rate_window(record: Record) -> None:
    v = Victim()
    events = record(v.task)
    for x in ("r1", "r2"):
        assert await v.manager.trigger_task(v.task, x) == x
    victim = spawn(v.manager.trigger_task(v.task, "victim"))
    await asyncio.sleep(1)
    assert v.rate.get_rate_limit_delay("k") > 0
    assert v.rate.statistics().waiting == 1
    victim.cancel()
    await cancelled(victim)
    assert event_types(events)[-2:] == ["queued", "cancelled"]
    await v.assert_clean()


async def test_cancel_inside_an_async_should_execute(record: Record) -> None:
    v = Victim()
    events = record(v.task)
    victim = spawn(v.manager.trigger_task(v.task, "victim"))
    await asyncio.sleep(0.25)
    assert v.checks == [("victim", 0.0)]
    assert v.lock.get_running_count("k") == 1
    victim.cancel()
    await cancelled(victim)
    assert event_types(events) == ["cancelled"]
    assert events[0].error
    assert v.runs == []
    # The trigger never ran: no cooldown recorded, the key is free at once.
    assert v.lock.get_cooldown_remaining("k") == 0.0
    assert v.lock.get_running_count("k") == 0
    assert v.lock.can_run("k")
    await v.assert_clean()


async def test_cancel_inside_the_task_function(record: Record) -> None:
    v = Victim()
    events = record(v.task)
    victim = spawn(v.manager.trigger_task(v.task, "victim"))
    follower = spawn(v.manager.trigger_task(v.task, "follower"))
    await asyncio.sleep(1)
    assert v.runs == [("victim", 0.5)]
    victim.cancel()
    await cancelled(victim)
    assert event_types(events)[:3] == ["queued", "started", "cancelled"]
    assert v.task.error_count == 0
    # The cancelled run ended at t=1: the follower starts after the cooldown and its check.
    assert await follower == "follower"
    assert v.runs[-1] == ("follower", 2.5)
    await v.assert_clean()


async def test_cancel_a_woken_trigger_before_it_resumes(record: Record) -> None:
    v = Victim()
    events = record(v.task)
    first = spawn(v.manager.trigger_task(v.task, "first"))
    victim = spawn(v.manager.trigger_task(v.task, "victim"))
    third = spawn(v.manager.trigger_task(v.task, "third"))
    await settle()
    # The cooldown of "first" ends at 3.5; the timer hands the slot to the victim then.
    v.loop.call_at(3.5, lambda: v.loop.call_soon(victim.cancel))
    await cancelled(victim)
    assert v.loop.time() == 3.5
    assert await first == "first"
    assert await third == "third"
    assert [x for x, _ in v.runs] == ["first", "third"]
    assert v.runs[1] == ("third", 4.0)  # no cooldown was recorded for the victim
    assert event_types(events).count("cancelled") == 1
    await v.assert_clean()


async def test_cancel_a_share_latest_waiter() -> None:
    v = Victim(share=True)
    first = spawn(v.manager.trigger_task(v.task, "first"))
    await asyncio.sleep(1)
    sharers = [spawn(v.manager.trigger_task(v.task, x)) for x in ("s1", "s2")]
    await settle()
    sharers[0].cancel()
    await cancelled(sharers[0])
    assert await first == "first"
    assert await sharers[1] == "first"  # resolved with first's result, without running
    assert [x for x, _ in v.runs] == ["first"]
    await v.assert_clean()


async def test_cancelling_the_caller_of_a_share_latest_run_detaches_it_while_a_sharer_waits(
    record: Record,
) -> None:
    v = Victim(share=True)
    events = record(v.task)
    first = spawn(v.manager.trigger_task(v.task, "first"))
    await asyncio.sleep(1)
    sharer = spawn(v.manager.trigger_task(v.task, "sharer"))
    await settle()
    first.cancel()
    await cancelled(first)
    # The sharer still awaits the run: it goes on, and the sharer gets its result.
    assert await sharer == "first"
    assert [x for x, _ in v.runs] == ["first"]
    assert "cancelled" not in event_types(events)
    await v.assert_clean()


async def test_a_share_latest_run_is_cancelled_once_its_caller_and_its_sharer_are(
    record: Record,
) -> None:
    v = Victim(share=True)
    events = record(v.task)
    first = spawn(v.manager.trigger_task(v.task, "first"))
    await asyncio.sleep(1)
    sharer = spawn(v.manager.trigger_task(v.task, "sharer"))
    await settle()
    first.cancel()
    await cancelled(first)
    sharer.cancel()
    await cancelled(sharer)
    await settle()
    assert event_types(events)[-2:] == ["cancelled", "cancelled"]  # the sharer, the run
    assert v.lock.get_running_count("k") == 0
    assert [x for x, _ in v.runs] == ["first"]
    await v.assert_clean()


# ------------------------------------------------------------ more same-turn cancellations


async def test_a_share_latest_waiter_cancelled_in_the_sharing_turn() -> None:
    """The run succeeds and shares its result while a waiter is being cancelled in the same
    turn: the cancellation wins for that waiter, the others get the result."""
    manager, group, gates, t = setup(result_sharing="share-latest")
    first = spawn(manager.trigger_task(t, "first"))
    await gates.wait_started("first")
    doomed = spawn(manager.trigger_task(t, "doomed"))
    kept = spawn(manager.trigger_task(t, "kept"))
    await settle()

    def race() -> None:
        doomed.cancel()
        gates.finish("first", "result")

    asyncio.get_running_loop().call_soon(race)
    assert await first == "result"
    await cancelled(doomed)
    assert await kept == "result"
    assert gates.started == ["first"]
    assert group.statistics() == idle(group)
    only_this_task_left()


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_a_shared_waiter_cancelled_before_it_resumes(cancel_first: bool) -> None:
    """A waiter already resolved by ``share-latest`` (or about to be) and cancelled before it
    resumes ends cancelled and holds nothing."""
    manager, group, gates, t = setup(result_sharing="share-latest")
    loop = asyncio.get_running_loop()
    first = spawn(manager.trigger_task(t, "first"))
    await gates.wait_started("first")
    waiter = spawn(manager.trigger_task(t, "waiter"))
    await settle()

    def on_event(event: TaskEvent) -> None:
        if event.type == "completed":  # before the share, in the run's last step
            if cancel_first:
                waiter.cancel()
            else:
                loop.call_soon(waiter.cancel)  # after the share, before the waiter resumes

    subscription = t.event_subject.subscribe(on_event)
    try:
        gates.finish("first")
        assert await first == "first"
        await cancelled(waiter)
    finally:
        subscription.dispose()
    assert group.statistics() == idle(group)
    only_this_task_left()


async def test_a_waiter_cancelled_as_stop_fails_the_queue() -> None:
    """stop() fails the queue right after a waiter's cancellation was requested (its future
    is cancelled, its trigger has not cleaned up yet): the waiter ends cancelled."""
    manager, group, gates, t = setup()
    first = spawn(manager.trigger_task(t, "first"))
    await gates.wait_started("first")
    waiter = spawn(manager.trigger_task(t, "waiter"))
    await settle()
    stopping: list[asyncio.Task[None]] = []

    def race() -> None:
        stopping.append(spawn(manager.stop()))  # its first step runs before the waiter's
        waiter.cancel()

    asyncio.get_running_loop().call_soon(race)
    await cancelled(waiter)
    gates.finish("first")
    await first
    await stopping[0]
    assert group.statistics() == idle(group)
    only_this_task_left()


async def test_a_waiter_cancelled_while_its_only_blocking_group_is_removed() -> None:
    manager, group, gates, t = setup()
    assert group.acquire_slot("k")
    waiters = [spawn(manager.trigger_task(t, x)) for x in ("w1", "w2")]
    await settle()

    def race() -> None:
        waiters[0].cancel()
        manager.remove_constraint_group("lock")

    asyncio.get_running_loop().call_soon(race)
    await cancelled(waiters[0])
    await gates.wait_started("w2")
    gates.finish("w2")
    assert await waiters[1] == "w2"
    group.release_slot("k")
    assert group.statistics() == idle(group)
    only_this_task_left()


async def test_many_cancelled_waiters_do_not_disturb_the_order_of_the_rest() -> None:
    """Cancelled waiters leave dead entries behind in the key's queue until they are swept;
    the live ones still start by priority, then arrival."""
    manager, group, gates, t = setup()
    assert group.acquire_slot("k")
    waiters = {i: spawn(manager.trigger_task_constrained(t, i, priority=i % 3)) for i in range(60)}
    await settle()
    for i in range(60):
        if i % 4:
            waiters[i].cancel()
    for i in range(60):
        if i % 4:
            await cancelled(waiters[i])
    assert group.statistics().waiting == 15
    group.release_slot("k")
    survivors = [i for i in range(60) if not i % 4]
    expected = sorted(survivors, key=lambda i: (-(i % 3), i))
    for i in expected:
        await gates.wait_started(i)
        gates.finish(i)
    assert gates.started == expected
    assert list(await asyncio.gather(*(waiters[i] for i in survivors))) == survivors
    assert group.statistics() == idle(group)
