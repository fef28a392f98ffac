"""Runs that several triggers share, under random triggers and cancellations.

Every kind of shared run (buffered joiners, ``TaskOnce`` waiters, debounced triggers,
``share-latest`` waiters) is driven through a random program: new triggers, cancellations of
callers still waiting, a few loop turns, or a step of virtual time. Each run takes one
second; a cancelled run may wind down over a loop turn. Checked:

* every caller whose cancellation we did not ask for gets a run's result, never a
  ``CancelledError`` (a run is cancelled only when all its awaiters were cancelled, and a
  new trigger never joins a run being cancelled);
* per kind, the result comes from the run it should (``TaskOnce``: the one successful
  run; a buffer: one run at a time; ``share-latest``: a run that succeeds resolves every
  trigger that waited for it, and a run is cancelled only once every trigger that awaited
  it had been cancelled);
* at the end nothing is left: no asyncio task but the test's, no shared run or per-key
  state, no count in the manager or the group.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import looptime
from _constraint_support import idle, settle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskbuffer import Task, TaskConstraintGroup, TaskDebounced, TaskManager, TaskOnce

RUN_SECONDS = 1.0

Action = tuple[str, int]
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("trigger"), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 7)),
        st.tuples(st.just("turns"), st.integers(0, 3)),
        st.tuples(st.just("advance"), st.sampled_from([1, 2, 4, 6])),  # quarter seconds
    ),
    min_size=1,
    max_size=40,
)


@dataclass
class Caller:
    cid: int
    task: asyncio.Task[Any] | None = None
    entered: int = 0
    cancel_requested: int | None = None
    left: int | None = None
    result: Any = None


@dataclass
class Run:
    rid: int
    input: int
    started: int
    ended: int | None = None
    cancelled: bool = False


@dataclass
class World:
    slow_wind_down: bool
    clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    callers: list[Caller] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    active: int = 0
    max_active: int = 0

    def tick(self) -> int:
        return next(self.clock)

    async def work(self, x: int) -> tuple[int, int]:
        run = Run(rid=len(self.runs), input=x, started=self.tick())
        self.runs.append(run)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(RUN_SECONDS)
        except asyncio.CancelledError:
            run.cancelled = True
            if self.slow_wind_down:
                await asyncio.sleep(0)
            raise
        finally:
            self.active -= 1
            run.ended = self.tick()
        return (run.rid, x)


class Kind:
    """One kind of shared run: how to trigger it, and what it must leave behind."""

    def __init__(self, name: str, world: World, option: int) -> None:
        self.name = name
        self.manager: TaskManager | None = None
        self.group: TaskConstraintGroup | None = None
        self.task: Task[Any, Any]
        if name == "once":
            self.task = TaskOnce(task_function=world.work)
        elif name == "buffered":
            self.task = Task(task_function=world.work, buffered=True, buffer_max=option)
        elif name == "debounced":
            self.task = TaskDebounced(task_function=world.work, debounce_time=0.5)
        else:
            self.group = TaskConstraintGroup(
                name="shared",
                constraint_key_for_execution=lambda task, x: "k",
                max_concurrent=1,
                cooldown=0.5 * (option - 1),
                result_sharing="share-latest",
            )
            self.manager = TaskManager()
            self.manager.add_constraint_group(self.group)
            self.task = Task(name="t", task_function=world.work)

    async def trigger(self, x: int) -> Any:
        if self.manager is not None:
            return await self.manager.trigger_task(self.task, x)
        return await self.task.trigger(x)

    def assert_nothing_left(self) -> None:
        assert asyncio.all_tasks() == {asyncio.current_task()}
        task: Any = self.task
        if self.name == "once":
            assert task._once_run is None
        elif self.name == "buffered":
            assert not task._buffer._runs
        elif self.name == "debounced":
            assert task._pipeline is None or task._pipeline.batch is None
        else:
            assert self.manager is not None and self.group is not None
            stats = self.manager.statistics()
            assert (stats.running, stats.waiting) == (0, 0)
            assert self.group.statistics() == idle(self.group)


async def play(kind_name: str, option: int, slow_wind_down: bool, actions: list[Action]) -> None:
    world = World(slow_wind_down=slow_wind_down)
    kind = Kind(kind_name, world, option)

    async def call(caller: Caller) -> None:
        caller.entered = world.tick()
        try:
            caller.result = await kind.trigger(caller.cid)
        finally:
            caller.left = world.tick()

    for action, arg in actions:
        if action == "trigger":
            caller = Caller(cid=len(world.callers))
            world.callers.append(caller)
            caller.task = asyncio.ensure_future(call(caller))
            await asyncio.sleep(0)  # it enters (its trigger runs up to its first wait)
        elif action == "cancel":
            waiting = [c for c in world.callers if c.task is not None and not c.task.done()]
            if waiting:
                victim = waiting[arg % len(waiting)]
                assert victim.task is not None
                if victim.cancel_requested is None:
                    victim.cancel_requested = world.tick()
                victim.task.cancel()
        elif action == "turns":
            for _ in range(arg):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(arg / 4)

    async with asyncio.timeout(3600):
        for caller in world.callers:
            assert caller.task is not None
            await asyncio.wait((caller.task,))
        await asyncio.sleep(10)  # cooldowns and debounce timers run out
        await settle()
    check(kind, world)
    kind.assert_nothing_left()


def check(kind: Kind, world: World) -> None:
    for caller in world.callers:
        assert caller.task is not None and caller.task.done()
        if caller.task.cancelled():
            assert caller.cancel_requested is not None, (
                f"caller {caller.cid} got a CancelledError it never asked for"
            )
        else:
            assert caller.task.exception() is None
            rid, _ = caller.result
            assert not world.runs[rid].cancelled
    results = {c.result for c in world.callers if c.result is not None}
    if kind.name == "once":
        assert len(results) <= 1
        assert sum(not run.cancelled for run in world.runs) <= 1
    if kind.name in ("once", "buffered", "share-latest"):
        assert world.max_active <= 1
    if kind.name == "share-latest":
        check_share_latest(world)


def check_share_latest(world: World) -> None:
    """With one key and ``max_concurrent=1``, the awaiters of a run are its caller and
    every trigger that came while it ran (unless it was already being cancelled)."""
    for run in world.runs:
        assert run.ended is not None
        own = world.callers[run.input]
        joined = [c for c in world.callers if run.started < c.entered < run.ended]
        awaiters = [own, *joined]
        if not run.cancelled:
            for caller in awaiters:
                if caller.cancel_requested is None:
                    assert caller.result == (run.rid, run.input), (
                        f"caller {caller.cid} waited for run {run.rid} but got {caller.result}"
                    )
            continue
        # Cancelled: at some moment (a cancellation request, before the run saw it) every
        # awaiter that had come by then was cancelled; later ones are newcomers that must
        # not join it.
        requests = sorted(c.cancel_requested for c in awaiters if c.cancel_requested is not None)
        assert any(
            moment < run.ended
            and all(
                c.cancel_requested is not None and c.cancel_requested <= moment
                for c in awaiters
                if c.entered <= moment
            )
            for moment in requests
        ), f"run {run.rid} was cancelled while a trigger still awaited it"


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["once", "buffered", "debounced", "share-latest"]),
    option=st.integers(1, 3),
    slow_wind_down=st.booleans(),
    actions=ACTIONS,
)
def test_shared_runs_under_random_triggers_and_cancellations(
    kind: str, option: int, slow_wind_down: bool, actions: list[Action]
) -> None:
    loop = looptime.new_event_loop(start=0)
    try:
        loop.run_until_complete(play(kind, option, slow_wind_down, actions))
    finally:
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
