"""The dependency graph of a ``ServiceManager``'s services, and the *wave* that walks it.

Pure functions over the services by name (each names the services it ``depends_on``) and the
reverse map, the *dependants* of each name, which :func:`dependants_of` works out and checks.
:func:`run_wave` starts (or stops) a set of services in dependency order, independent ones at
once: Kahn's algorithm, linear in services + dependencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._service import Service

__all__ = ("all_dependants", "all_dependencies", "cycle_in", "dependants_of", "run_wave")


def cycle_in(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle of ``graph`` (name -> names it depends on) as a closed path, or
    ``None``. Iterative depth-first search: a chain of thousands of services is fine."""
    done: set[str] = set()
    for root in graph:
        if root in done:
            continue
        path = [root]
        on_path = {root}
        stack = [iter(graph[root])]
        while stack:
            for dep in stack[-1]:
                if dep in on_path:
                    return [*path[path.index(dep) :], dep]
                if dep not in done:
                    path.append(dep)
                    on_path.add(dep)
                    stack.append(iter(graph[dep]))
                    break
            else:
                stack.pop()
                node = path.pop()
                on_path.discard(node)
                done.add(node)
    return None


def dependants_of(services: Mapping[str, Service[Any]]) -> dict[str, list[str]]:
    """The dependants of each service; raises ``ValueError`` for unknown names or a cycle."""
    unknown = [
        f"{s.name!r} depends on {dep!r}"
        for s in services.values()
        for dep in s.depends_on
        if dep not in services
    ]
    if unknown:
        raise ValueError(
            f"unknown service dependencies: {'; '.join(unknown)}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not registered"
        )
    cycle = cycle_in({name: s.depends_on for name, s in services.items()})
    if cycle is not None:
        raise ValueError(
            "services depend on each other in a cycle: "
            + " -> ".join(map(repr, cycle))
            + " (each depends on the next)"
        )
    dependants: dict[str, list[str]] = {name: [] for name in services}
    for s in services.values():
        for dep in s.depends_on:
            dependants[dep].append(s.name)
    return dependants


def all_dependants(
    name: str, services: Mapping[str, Service[Any]], dependants: Mapping[str, list[str]]
) -> list[Service[Any]]:
    """Every service that depends on service ``name``, directly or through others."""
    seen: dict[str, Service[Any]] = {}
    todo = list(dependants.get(name, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen[name] = services[name]
            todo.extend(dependants[name])
    return list(seen.values())


def all_dependencies(
    service: Service[Any], services: Mapping[str, Service[Any]]
) -> list[Service[Any]]:
    """Every service ``service`` depends on, directly or through others."""
    seen: dict[str, Service[Any]] = {}
    todo = list(service.depends_on)
    while todo:
        name = todo.pop()
        if name not in seen and name in services:
            seen[name] = services[name]
            todo.extend(seen[name].depends_on)
    return list(seen.values())


async def run_wave(
    members: list[Service[Any]],
    services: Mapping[str, Service[Any]],
    dependants: Mapping[str, list[str]],
    *,
    forward: bool,
    act: Callable[[Service[Any]], Coroutine[Any, Any, BaseException | None]],
) -> dict[str, BaseException]:
    """Run ``act`` (a start when ``forward``, else a stop) on each member in a task of its
    own once what must be done before it is done; returns the errors ``act`` returned.

    Forward, a member needing a service that is neither running nor a member is skipped, and
    so is everything in the wave that depends on a skipped or failed member."""
    names = {s.name: s for s in members}

    def before(name: str) -> Iterable[str]:  # what must be done before ``name``
        return services[name].depends_on if forward else dependants[name]

    def after(name: str) -> Iterable[str]:  # what waits for ``name``
        return dependants[name] if forward else services[name].depends_on

    loop = asyncio.get_running_loop()
    finished: asyncio.Queue[tuple[str, asyncio.Task[BaseException | None]]] = asyncio.Queue()
    # Per member, how many of what must be done before it are not done yet. A member
    # that fails, or needs a service outside the wave that is not running, never
    # brings the counts of what waits for it to zero: those are skipped.
    pending: dict[str, int] = {}
    failed: dict[str, BaseException] = {}
    tasks: set[asyncio.Task[BaseException | None]] = set()

    def launch(name: str) -> None:
        task = loop.create_task(act(names[name]))
        tasks.add(task)
        task.add_done_callback(lambda t: finished.put_nowait((name, t)))

    for name in names:
        pending[name] = sum(
            other in names or (forward and services[other].state != "running")
            for other in before(name)
        )
    for name in [name for name, count in pending.items() if count == 0]:
        launch(name)
    try:
        while tasks:
            name, task = await finished.get()
            tasks.discard(task)
            error = None if task.cancelled() else task.result()
            if error is not None or task.cancelled():
                if error is not None:
                    failed[name] = error
                continue
            for other in after(name):
                if other in names:
                    pending[other] -= 1
                    if pending[other] == 0:
                        launch(other)
    except BaseException:
        await _cancel(tasks)
        raise
    return failed


async def _cancel(tasks: set[asyncio.Task[BaseException | None]]) -> None:
    """Cancel what a wave has in flight (the wave itself is cancelled) and wait for it."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
