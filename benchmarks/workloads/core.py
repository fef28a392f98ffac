"""W1-W6: the cost of a trigger, alone, at once, buffered, chained, in parallel, by name.

Each workload is an async function ``(params) -> Outcome``: it builds what it needs outside
the timed block, times the work with a :class:`~benchmarks.measure.Stopwatch` and checks the
results. The taskbuffer side and the baseline side run the same loop around a different call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from taskbuffer import Task, Taskchain, TaskManager, Taskparallel

from ..measure import Outcome, Stopwatch
from ..specs import Params

__all__ = (
    "inc",
    "w1_baseline",
    "w1_taskbuffer",
    "w2_baseline",
    "w2_taskbuffer",
    "w3_baseline",
    "w3_taskbuffer",
    "w4_baseline",
    "w4_taskbuffer",
    "w5_baseline",
    "w5_taskbuffer",
    "w6_taskbuffer",
)


async def inc(x: int) -> int:
    """The trivial task function: ``x + 1``."""
    return x + 1


def _sum_of_inc(n: int, step: int = 1) -> int:
    """``sum(i + step for i in range(n))``."""
    return n * (n - 1) // 2 + step * n


def _timed(watch: Stopwatch, n: int) -> Outcome:
    out = Outcome()
    out.metrics["us_per_op"] = watch.us_per(n)
    out.info["n"] = n
    return out


# ---------------------------------------------------------------------------- W1 seq_trigger


async def w1_taskbuffer(p: Params) -> Outcome:
    """W1: ``n`` sequential ``await task.trigger(i)``."""
    n = p["n"]
    task = Task(task_function=inc, name="inc")
    total = 0
    with Stopwatch() as watch:
        for i in range(n):
            total += await task.trigger(i)
    out = _timed(watch, n)
    out.check_equal("sum of results", total, _sum_of_inc(n))
    out.check_equal("run_count", task.run_count, n)
    return out


async def w1_baseline(p: Params) -> Outcome:
    """W1 baseline: ``n`` sequential ``await fn(i)``."""
    n = p["n"]
    fn = inc
    total = 0
    with Stopwatch() as watch:
        for i in range(n):
            total += await fn(i)
    out = _timed(watch, n)
    out.check_equal("sum of results", total, _sum_of_inc(n))
    return out


# ---------------------------------------------------------------------- W2 concurrent_trigger


async def w2_taskbuffer(p: Params) -> Outcome:
    """W2: ``n`` triggers started at once and gathered."""
    n = p["n"]
    task = Task(task_function=inc, name="inc")
    with Stopwatch() as watch:
        results = await asyncio.gather(*[task.trigger(i) for i in range(n)])
    out = _timed(watch, n)
    out.check("results", results == list(range(1, n + 1)), "results[i] == i + 1")
    out.check_equal("run_count", task.run_count, n)
    return out


async def w2_baseline(p: Params) -> Outcome:
    """W2 baseline: ``asyncio.gather`` of the bare coroutines."""
    n = p["n"]
    fn = inc
    with Stopwatch() as watch:
        results = await asyncio.gather(*[fn(i) for i in range(n)])
    out = _timed(watch, n)
    out.check("results", results == list(range(1, n + 1)), "results[i] == i + 1")
    return out


# ------------------------------------------------------------------------- W3 buffered_burst


def _recording_yielder(inputs: list[int]) -> Callable[[int], Coroutine[Any, Any, int]]:
    """W3's function on both sides: records its input, yields once, returns ``x + 1``."""

    async def yielding(x: int) -> int:
        inputs.append(x)
        await asyncio.sleep(0)
        return x + 1

    return yielding


async def w3_taskbuffer(p: Params) -> Outcome:
    """W3: ``n`` triggers at once into a ``buffer_max=5`` task whose function yields once.

    Exactly 5 runs must happen; the last one has the last input, and every trigger returns
    the result of one of the runs.
    """
    n = p["n"]
    inputs: list[int] = []
    yielding = _recording_yielder(inputs)
    task = Task(task_function=yielding, name="buffered", buffered=True, buffer_max=5)
    with Stopwatch() as watch:
        results = await asyncio.gather(*[task.trigger(i) for i in range(n)])
    return _w3_checked(watch, n, inputs, results)


class _BaselineRun:
    """One run of W3's baseline buffer: its input until it starts, and its shared future."""

    __slots__ = ("future", "input", "started")

    def __init__(self, input: int, future: asyncio.Future[int]) -> None:
        self.input = input
        self.future = future
        self.started = False


class _CoalescingBuffer:
    """W3's baseline: the least a coalescing buffer must do, in plain asyncio.

    At most ``buffer_max`` runs, in progress and waiting, one at a time; a trigger that finds
    it full joins the last run and, if that run is still waiting, replaces its input. Every
    trigger awaits its run's shared future. It does nothing about cancellation (a cancelled
    trigger would cancel the shared future of everyone on its run), errors, events or event
    loops: that is what taskbuffer's side pays for on top.
    """

    __slots__ = ("_fn", "_max", "_runs")

    def __init__(self, fn: Callable[[int], Coroutine[Any, Any, int]], buffer_max: int) -> None:
        self._fn = fn
        self._max = buffer_max
        self._runs: deque[_BaselineRun] = deque()  # the first one is in progress

    async def trigger(self, x: int) -> int:
        runs = self._runs
        if len(runs) < self._max:
            run = _BaselineRun(x, asyncio.get_running_loop().create_future())
            runs.append(run)
            if len(runs) == 1:
                self._start(run)
        else:
            run = runs[-1]
            if not run.started:
                run.input = x
        return await run.future

    def _start(self, run: _BaselineRun) -> None:
        run.started = True
        asyncio.get_running_loop().create_task(self._fn(run.input)).add_done_callback(self._done)

    def _done(self, finished: asyncio.Task[int]) -> None:
        self._runs.popleft().future.set_result(finished.result())
        if self._runs:
            self._start(self._runs[0])


async def w3_baseline(p: Params) -> Outcome:
    """W3 baseline: a minimal coalescing buffer handing every joiner its run's future."""
    n = p["n"]
    inputs: list[int] = []
    yielding = _recording_yielder(inputs)
    buffer = _CoalescingBuffer(yielding, 5)
    with Stopwatch() as watch:
        results = await asyncio.gather(*[buffer.trigger(i) for i in range(n)])
    return _w3_checked(watch, n, inputs, results)


def _w3_checked(watch: Stopwatch, n: int, inputs: list[int], results: list[int]) -> Outcome:
    """W3's checks, the same on both sides."""
    out = _timed(watch, n)
    runs = len(inputs)
    out.metrics["runs"] = runs
    out.info["run_inputs"] = inputs[:10]
    out.check_equal("runs", runs, min(5, n))
    out.check_equal("input of the last run", inputs[-1] if inputs else None, n - 1)
    produced = {x + 1 for x in inputs}
    out.check(
        "every trigger got a run's result",
        all(r in produced for r in results),
        f"run results {sorted(produced)}",
    )
    out.check_equal("last trigger's result", results[-1], n)
    return out


# -------------------------------------------------------------------------------- W4 chain10


async def w4_taskbuffer(p: Params) -> Outcome:
    """W4: ``n`` sequential triggers of a ``Taskchain`` of 10 trivial tasks."""
    n = p["n"]
    chain = Taskchain(
        name="chain10", task_array=[Task(task_function=inc, name=f"step{j}") for j in range(10)]
    )
    total = 0
    with Stopwatch() as watch:
        for i in range(n):
            total += await chain.trigger(i)
    out = _timed(watch, n)
    out.check_equal("sum of results", total, _sum_of_inc(n, 10))
    return out


async def w4_baseline(p: Params) -> Outcome:
    """W4 baseline: 10 sequential awaits per operation."""
    n = p["n"]
    fns = (inc,) * 10
    total = 0
    with Stopwatch() as watch:
        for i in range(n):
            value = i
            for fn in fns:
                value = await fn(value)
            total += value
    out = _timed(watch, n)
    out.check_equal("sum of results", total, _sum_of_inc(n, 10))
    return out


# ----------------------------------------------------------------------------- W5 parallel10


async def w5_taskbuffer(p: Params) -> Outcome:
    """W5: ``n`` sequential triggers of a ``Taskparallel`` of 10 trivial tasks."""
    n = p["n"]
    parallel = Taskparallel(
        name="parallel10",
        task_array=[Task(task_function=inc, name=f"branch{j}") for j in range(10)],
    )
    total = 0
    with Stopwatch() as watch:
        for i in range(n):
            total += sum(await parallel.trigger(i))
    out = _timed(watch, n)
    out.check_equal("sum of results", total, 10 * _sum_of_inc(n))
    return out


async def w5_baseline(p: Params) -> Outcome:
    """W5 baseline: ``asyncio.gather`` of 10 coroutines per operation."""
    n = p["n"]
    fns = (inc,) * 10
    total = 0
    with Stopwatch() as watch:
        for i in range(n):
            total += sum(await asyncio.gather(*[fn(i) for fn in fns]))
    out = _timed(watch, n)
    out.check_equal("sum of results", total, 10 * _sum_of_inc(n))
    return out


# ------------------------------------------------------------------------ W6 manager_by_name


async def w6_taskbuffer(p: Params) -> Outcome:
    """W6: a manager with ``tasks`` tasks, no groups; ``n`` sequential triggers by name."""
    n, count = p["n"], p["tasks"]
    manager = TaskManager()
    tasks: list[Task[Any, Any]] = []
    for j in range(count):
        task = Task(task_function=inc, name=f"task{j}")
        manager.add_task(task)
        tasks.append(task)
    names = [task.name or "" for task in tasks]
    total = 0
    with Stopwatch() as watch:
        for i in range(n):
            total += await manager.trigger_task_by_name(names[i % count], i)
    out = _timed(watch, n)
    out.check_equal("sum of results", total, _sum_of_inc(n))
    out.check_equal("runs over all tasks", sum(t.run_count for t in tasks), n)
    return out
