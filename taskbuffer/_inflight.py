"""What a :class:`TaskManager` has in flight: its runs, the triggers it admitted or queued.

The manager counts them so that ``stop()`` knows when it is idle, remembers in which asyncio
tasks its runs go on so that ``stop(timeout=...)`` can cancel exactly those, and which slots
each of those tasks holds so that a nested trigger that would wait for itself is refused.
"""

from __future__ import annotations

import asyncio
import itertools
from functools import partial
from typing import Any, Literal, TypeAlias

from ._admission import GO, Admission, Claim, SharingRun, Waiter
from ._clock import now_wall, wall_anchor
from ._emitter import emit, listened
from ._exceptions import TaskManagerStoppedError
from ._run import QueuedRun, Run, RunInfo
from ._runner import run_task

__all__ = ("InFlight", "other_loop_error")

Ended: TypeAlias = Literal["failed", "cancelled", "skipped"]  # how a run ends without running


def other_loop_error() -> RuntimeError:
    """A trigger or stop() from another event loop than that of the runs in flight."""
    return RuntimeError(
        "this TaskManager has runs in flight in another event loop (another "
        "thread?); a TaskManager serves one event loop at a time: use one "
        "TaskManager per loop, or let the other loop's runs finish first"
    )


class InFlight:
    """A manager's runs and triggers in flight, and the future ``stop()`` waits on."""

    __slots__ = (
        "active",
        "admission",
        "admitted",
        "anchor",
        "anchored",
        "callers",
        "held",
        "idle",
        "loop",
        "owner",
        "running",
        "runs",
        "seq",
        "stop_cancelled",
        "waiting",
    )

    def __init__(self, admission: Admission, owner: object) -> None:
        self.admission = admission
        self.owner = owner  # the manager's token as the owner of its triggers
        self.seq = itertools.count()  # waiters' arrival order
        # Caller asyncio tasks with a constrained run of ours in flight (past the queue), so
        # that stop(timeout=...) can cancel exactly those (and the tasks of plain runs, see
        # ``runs``); in the order their runs began (see cancel_runs). The value: the claims
        # of the task's outermost run (None or empty if it claimed no key).
        self.active: dict[asyncio.Task[Any], list[Claim] | None] = {}
        # The loop of every asyncio task in ``active`` and ``runs`` (see check_loop), or a
        # stale one.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_cancelled: set[asyncio.Task[Any]] = set()
        # Per caller asyncio task, the claims of its constrained runs in flight nested in
        # its outermost one (whose claims ``active`` keeps), outermost first: a nested trigger
        # that needs a slot only its own callers hold would wait forever (see
        # check_self_deadlock).
        self.held: dict[asyncio.Task[Any], list[list[Claim]]] = {}
        # A share-latest run's own asyncio task -> the asyncio task of the caller that awaits
        # it (until the caller leaves): its callers' slots are held for it too.
        self.callers: dict[asyncio.Task[Any], asyncio.Task[Any]] = {}
        self.running = 0  # constrained runs running (plain ones: see ``runs``)
        self.waiting = 0
        # Triggers past the queue (holding their slots) and not yet finished: in
        # should_execute, or running. stop() waits for them too.
        self.admitted = 0
        # The manager's runs that wait or run, in the order they were triggered. The value:
        # the asyncio task of a plain run (a by-name trigger without constraint groups, see
        # TaskManager.trigger_task_by_name), which ``active`` does not hold, and which no
        # counter counts (one dict write per trigger and not five); None for a constrained
        # one, which the counters count as long as it is here (so that ``runs`` is empty
        # when nothing is in flight).
        self.runs: dict[Run, asyncio.Task[Any] | None] = {}
        self.idle: asyncio.Future[None] | None = None  # what stop() calls wait on
        # The wall-clock anchor of the loop ``anchored`` (see _clock), for queued instants.
        self.anchored: asyncio.AbstractEventLoop | None = None
        self.anchor = 0.0

    def __repr__(self) -> str:
        return f"<InFlight running={self.running_total()} waiting={self.waiting}>"

    def running_total(self) -> int:
        """How many runs are running: constrained ones, and plain ones (see ``runs``)."""
        return self.running + sum(1 for caller in self.runs.values() if caller is not None)

    def busy(self) -> bool:
        """Whether a run, a waiting trigger or an admitted one is in flight."""
        return bool(self.running or self.waiting or self.admitted or self.runs)

    def check_idle(self) -> None:
        """Resolve ``idle`` once nothing is in flight."""
        idle = self.idle
        if (
            idle is not None
            and not idle.done()
            and not self.running
            and not self.waiting
            and not self.admitted
            and not self.runs  # (plain runs)
        ):
            idle.set_result(None)

    def check_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """A trigger in ``loop`` (which is not ``self.loop``) whose asyncio task is not
        tracked yet: refuse it while runs of another loop are in flight."""
        if self.in_other_loop(loop):
            raise other_loop_error()
        self.loop = loop

    def in_other_loop(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether runs of a loop other than ``loop`` are in flight."""
        # The oldest constrained and plain runs in flight; every one is in the same loop
        # (checked as it came).
        for caller in self.active:
            if caller.get_loop() is not loop:
                return True
            break
        for plain in self.runs.values():
            if plain is not None:
                return plain.get_loop() is not loop
        return False

    def in_run(self, task: asyncio.Task[Any]) -> bool:
        """Whether a run of ours is in flight in the asyncio task ``task``."""
        return task in self.active or any(caller is task for caller in self.runs.values())

    def nested(self, current: asyncio.Task[Any], run: Run) -> bool:
        """Whether ``run``, in flight in ``current``, is nested in another plain run of ours
        there (a constrained run around it is in ``active``)."""
        return any(caller is current and other is not run for other, caller in self.runs.items())

    def end_admitted(self, current: asyncio.Task[Any], tracked: bool) -> None:
        """An admitted trigger of ``current`` ended."""
        if tracked:
            del self.active[current]
        self.admitted -= 1
        if self.idle is not None:
            self.check_idle()

    def cancel_runs(self) -> None:
        """A stop's deadline passed: cancel the runs' asyncio tasks, each once."""
        # Outermost first: a run that awaits a run of another asyncio task cancels that one
        # before that one handles stop's cancellation (see raise_if_stopping). Constrained
        # runs first, then plain ones (of a manager that has both, a plain run that awaits a
        # constrained run of another asyncio task is cancelled after it).
        for caller in [*self.active, *self.runs.values()]:
            if caller is not None and caller not in self.stop_cancelled:  # once per stop
                self.stop_cancelled.add(caller)
                caller.cancel()
        self.check_idle()

    def raise_if_stopping(self, current: asyncio.Task[Any], run: Run) -> None:
        """Turn a cancellation that ``stop(timeout=...)`` caused into its error.

        Called at the trigger of ``run`` that tracks ``current`` (the outermost constrained
        one, or a plain one); only the outermost of them acts (see ``nested``): the runs
        nested inside it must see the cancellation as such (no retry, no failure), all the
        way up.
        Only stop's own cancellation becomes the error: one that someone else asked for too
        goes on as such. That is also how runs nested across asyncio tasks (a buffered or
        TaskOnce run, a parallel's children, a task a run spawned and awaits) stay cancelled:
        the run around such a task, cancelled first (see cancel_runs), cancels it as well.
        """
        if current in self.stop_cancelled:
            if self.nested(current, run):
                return
            self.stop_cancelled.discard(current)
            if current.cancelling() > 1:
                return
            current.uncancel()
            raise TaskManagerStoppedError(
                f"task {run.task.name!r} was cancelled because the TaskManager stopped"
            ) from None

    def plain_cancelled(self, current: asyncio.Task[Any], run: Run) -> None:
        """A plain run in ``current`` was cancelled: see raise_if_stopping."""
        if current not in self.active:  # else a constrained run around it handles it
            self.raise_if_stopping(current, run)

    def active_runs(self, task_name: str | None) -> list[RunInfo]:
        """Snapshots of the runs in flight: running ones in the order they were triggered,
        then waiting ones in the order they would start (priority, then arrival)."""
        runs = [r for r in self.runs if task_name is None or r.task.name == task_name]
        waiting = [r for r in runs if r.state == "waiting"]
        waiting.sort(key=lambda r: -r.priority)  # stable: arrival order within a priority
        return [r.info() for r in runs if r.state != "waiting"] + [r.info() for r in waiting]

    @staticmethod
    def end(run: Run, state: Ended, error: BaseException | str | None = None) -> None:
        """``run`` ended before or instead of running; an event of its ``state`` says so."""
        run.state = state
        run.finished = now_wall()
        emit(run.task, state, run, status="failed" if state == "failed" else None, error=error)

    def claim_failed(self, run: Run, exc: BaseException) -> None:
        """A key function raised: the trigger fails (a cancellation is no failure)."""
        if not isinstance(exc, asyncio.CancelledError):
            self.end(run, "failed", exc)

    def park(
        self,
        run: QueuedRun,
        claims: list[Claim],
        blocked: tuple[Claim, float],
        loop: asyncio.AbstractEventLoop,
        now: float,
        current: asyncio.Task[Any] | None,
    ) -> Waiter:
        """Queue a blocked trigger's run (after refusing one that would wait for itself):
        ``now`` is the loop's time, ``current`` the trigger's asyncio task."""
        if current in self.active:  # a nested trigger (the outermost one is not in yet)
            self.check_self_deadlock(run, claims, current)
        if loop is not self.anchored:  # (loop_to_wall, without its calls per waiter)
            self.anchor = wall_anchor(loop)
            self.anchored = loop
        run.queued = self.anchor + now
        waiter = self.admission.park(
            claims, blocked, loop.create_future(), run, next(self.seq), self.owner
        )
        self.waiting += 1
        if listened(run.task):
            emit(run.task, "queued", run)
        return waiter

    def waiting_failed(
        self,
        run: Run,
        waiter: Waiter,
        exc: BaseException,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """A waiting trigger was cancelled, or failed by stop(): it ends, as it began, seen."""
        if isinstance(exc, asyncio.CancelledError):
            future = waiter.future
            if future.cancelled():  # still in the queue
                self.admission.leave(waiter, loop.time())
            elif future.exception() is None and future.result() is GO:
                # Woken, then cancelled before it could run: hand the slots on.
                self.admission.release(waiter.claims, loop.time(), ran=False)
            self.end(run, "cancelled", "cancelled while waiting")
        elif isinstance(exc, TaskManagerStoppedError):
            self.end(run, "cancelled", "the TaskManager stopped")

    def shared(self, run: Run) -> None:
        """A waiting run received another run's result (``share-latest``): it completed
        without having started."""
        run.state = "completed"
        run.finished = now_wall()
        emit(run.task, "completed", run)

    def refuse(self, run: Run) -> None:
        """An admitted trigger is refused: stop(timeout=...) ran out."""
        self.end(run, "cancelled", "the TaskManager stopped")
        raise TaskManagerStoppedError(
            f"task {run.task.name!r} was not started because the TaskManager stopped"
        )

    def run_failed(
        self,
        run: Run,
        exc: BaseException,
        tracked: asyncio.Task[Any] | None,
        started: bool,
    ) -> None:
        """An admitted trigger raised: ``started`` says whether it ran (or was refused)."""
        if isinstance(exc, asyncio.CancelledError):
            if not started:  # cancelled inside an async should_execute
                self.end(run, "cancelled", "cancelled before it started")
            if tracked is not None:  # a nested level lets the cancellation reach the runs
                self.raise_if_stopping(tracked, run)
        elif not started:  # should_execute raised (or the loop check)
            self.end(run, "failed", exc)

    def check_self_deadlock(
        self, run: Run, claims: list[Claim], current: asyncio.Task[Any] | None
    ) -> None:
        """Refuse a blocked trigger that waits for a key only its own callers hold.

        The runs in flight in the calling asyncio task (the run that triggers, and the runs
        that triggered it) wait for this trigger, so slots they hold are never given back
        while it waits.
        """
        held = self._held_by(current)  # type: ignore[arg-type]
        if not held:
            return
        caller = self.callers.get(current)  # type: ignore[arg-type]
        while caller is not None:
            # A share-latest run in a task of its own: its caller's runs wait for it too
            # (their list of a run's claims is the very list its own task holds).
            held.extend(c for c in self._held_by(caller) if not any(c is h for h in held))
            caller = self.callers.get(caller)
        for st in claims:
            table = st.table
            if table.owner is not self.owner:  # removed: it no longer blocks
                continue
            mine = sum(1 for outer in held for claim in outer if claim is st)
            if mine and mine >= table.max_concurrent:
                error = RuntimeError(
                    f"task {run.task.name!r} would wait forever for key {st.key!r} of constraint "
                    f"group {table.name!r}: every slot of it (max_concurrent="
                    f"{table.max_concurrent}) is held by the run that triggers it or by that "
                    "run's callers, which wait for this trigger. Give the nested trigger "
                    "another key (or None), raise max_concurrent, or call the inner task "
                    "directly (task.trigger()) instead of through the TaskManager"
                )
                self.admission.drop(claims, asyncio.get_running_loop().time())
                self.end(run, "failed", error)
                raise error

    def _held_by(self, task: asyncio.Task[Any]) -> list[list[Claim]]:
        """The claims of the constrained runs in flight in ``task``, outermost first."""
        outermost = self.active.get(task)
        nested = self.held.get(task, [])
        return [outermost, *nested] if outermost else list(nested)

    async def run_shared(self, run: Run, claims: list[Claim]) -> Any:
        """Run a trigger that holds a ``share-latest`` key, in a task of its own.

        The triggers waiting for that key await the run as much as its caller does: if the
        caller is cancelled while any of them waits, it just leaves and the run goes on (it
        is cancelled when the last of them leaves, see ``SharingRun``); else the run is
        cancelled and the caller waits for it to end, as for a run in its own task.
        """
        sharing = SharingRun(claims)
        loop = asyncio.get_running_loop()
        runner = sharing.task = loop.create_task(self._drive(run, sharing))
        # stop(timeout=...) reaches it even once its caller left. A trigger nested in the run
        # that waits for a slot the run (or its callers) holds would wait forever:
        # check_self_deadlock follows the run to its callers.
        self.active[runner] = claims
        self.callers[runner] = asyncio.current_task()  # type: ignore[assignment]
        runner.add_done_callback(partial(self._shared_done, run, sharing))
        try:
            return await asyncio.shield(runner)
        except asyncio.CancelledError:
            if not runner.done():
                if sharing.has_sharers():
                    del self.callers[runner]  # its callers go on without waiting for it
                    sharing.detach()
                else:
                    sharing.abandon()
                    await asyncio.wait((runner,))
            raise

    async def _drive(self, run: Run, sharing: SharingRun) -> Any:
        sharing.began = True
        # Rate windows count it from here.
        loop = asyncio.get_running_loop()
        self.admission.begin(sharing.claims, loop.time())
        result = None
        succeeded = False
        try:
            result = await run_task(run.task, run, loop)
            succeeded = True
        finally:
            # In the run's last step, as for a run in its caller's task: a trigger woken
            # in between would start without the cooldown of this end.
            self._end_shared(run, sharing, succeeded, result)
        return result

    def _end_shared(self, run: Run, sharing: SharingRun, succeeded: bool, result: Any) -> None:
        """A shared run ended: share its result, give back its slots and counts, once."""
        runner = sharing.task
        assert runner is not None
        now = runner.get_loop().time()
        sharing.end()
        self.runs.pop(run, None)
        self.running -= 1
        self.active.pop(runner, None)
        self.stop_cancelled.discard(runner)
        self.callers.pop(runner, None)
        if succeeded and not sharing.abandoned:
            self.admission.share(sharing.claims, result, now, owner=self.owner)
        self.admission.release(sharing.claims, now, ran=sharing.began)
        if self.idle is not None:
            self.check_idle()

    def _shared_done(self, run: Run, sharing: SharingRun, runner: asyncio.Task[Any]) -> None:
        if not sharing.began:  # cancelled before its first step: it never ran
            self.end(run, "cancelled", "cancelled before it started")
            self._end_shared(run, sharing, False, None)
        elif not runner.cancelled():
            # Retrieved: a failure whose caller left is not "never retrieved" (the run
            # reported it on the event stream and the logger).
            runner.exception()
