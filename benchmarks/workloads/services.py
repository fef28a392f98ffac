"""V1: services in a random dependency DAG started and stopped, cost per service by size."""

from __future__ import annotations

import asyncio
import random

from taskbuffer import Service, ServiceManager

from ..measure import Outcome, Stopwatch
from ..specs import Params

__all__ = ("v1_taskbuffer",)

MAX_DEPENDENCIES = 3  # per service, drawn among the services before it (so: a DAG)


class Ledger:
    """When each service's start and stop began and ended, as positions in one sequence."""

    __slots__ = ("clock", "start_begin", "start_end", "stop_begin", "stop_end")

    def __init__(self) -> None:
        self.clock = 0
        self.start_begin: dict[str, int] = {}
        self.start_end: dict[str, int] = {}
        self.stop_begin: dict[str, int] = {}
        self.stop_end: dict[str, int] = {}

    def tick(self) -> int:
        self.clock += 1
        return self.clock


def _dag(n: int, seed: int) -> list[tuple[str, list[str]]]:
    """``n`` service names, each with up to ``MAX_DEPENDENCIES`` dependencies before it."""
    rng = random.Random(seed)
    graph = []
    for i in range(n):
        k = rng.randint(0, min(MAX_DEPENDENCIES, i))
        graph.append((f"s{i}", [f"s{j}" for j in rng.sample(range(i), k)]))
    rng.shuffle(graph)  # registered in random order: start() must sort them
    return graph


def _build(graph: list[tuple[str, list[str]]], ledger: Ledger) -> ServiceManager:
    manager = ServiceManager()
    for name, deps in graph:

        async def start(name: str = name) -> str:
            ledger.start_begin[name] = ledger.tick()
            await asyncio.sleep(0)  # a real await: the others get to run meanwhile
            ledger.start_end[name] = ledger.tick()
            return name

        async def stop(instance: str) -> None:
            ledger.stop_begin[instance] = ledger.tick()
            await asyncio.sleep(0)
            ledger.stop_end[instance] = ledger.tick()

        manager.add_service(Service(name=name, start=start, stop=stop, depends_on=deps))
    return manager


def _check(out: Outcome, label: str, graph: list[tuple[str, list[str]]], ledger: Ledger) -> None:
    names = {name for name, _ in graph}
    out.check_equal(f"every service started ({label})", set(ledger.start_end), names)
    out.check_equal(f"every service stopped ({label})", set(ledger.stop_end), names)
    bad_start = [
        (name, dep)
        for name, deps in graph
        for dep in deps
        if ledger.start_begin[name] < ledger.start_end[dep]
    ]
    out.check(
        f"each start after its dependencies' ({label})",
        not bad_start,
        f"started before a dependency was running: {bad_start[:3]}",
    )
    bad_stop = [
        (name, dep)
        for name, deps in graph
        for dep in deps
        if ledger.stop_begin[dep] < ledger.stop_end[name]
    ]
    out.check(
        f"each stop after its dependants' ({label})",
        not bad_stop,
        f"stopped before a dependant had stopped: {bad_stop[:3]}",
    )
    steps = sorted(
        [(t, 1) for t in ledger.start_begin.values()] + [(t, -1) for t in ledger.start_end.values()]
    )
    in_flight = peak = 0
    for _, step in steps:
        in_flight += step
        peak = max(peak, in_flight)
    out.info[f"peak_starts_in_flight ({label})"] = peak  # independent ones run together


async def v1_taskbuffer(p: Params) -> Outcome:
    """V1: start() then stop() of a ServiceManager holding a random DAG of ``n1`` and ``n2``
    services; a size is repeated until about ``volume`` services went through (managers are
    built outside the timed block)."""
    out = Outcome()
    for label in ("n1", "n2"):
        n = p[label]
        rounds = max(1, p["volume"] // n)
        runs = [(_dag(n, seed=r), Ledger()) for r in range(rounds)]
        managers = [_build(graph, ledger) for graph, ledger in runs]
        watch = Stopwatch()
        for manager in managers:
            with watch:
                await manager.start()
                await manager.stop()
        out.metrics[f"us_{label}"] = watch.us_per(n * rounds)
        out.info[label] = n
        out.info[f"rounds_{label}"] = rounds
        for graph, ledger in runs[:1]:
            _check(out, f"n={n}", graph, ledger)
        stats = [m.statistics() for m in managers]
        out.check(
            f"all stopped after (n={n})",
            all(s.stopped == n for s in stats),
            repr(stats[0]),
        )
    return out
