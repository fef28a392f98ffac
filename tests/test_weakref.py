"""Every public stateful object can be weakly referenced (frameworks keep weak registries of
managers, groups and tasks), and a weak reference does not keep it alive: once the last
strong reference goes, it is collected, also after it has been used.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from taskbuffer import (
    EventSubject,
    RateLimit,
    Task,
    Taskchain,
    TaskConstraintGroup,
    TaskDebounced,
    TaskManager,
    TaskOnce,
    Taskparallel,
)
from taskbuffer.distributed import InMemoryDistributedCoordinator


async def work(x: Any = None) -> Any:
    return x


def redis_coordinator() -> object:
    redis = pytest.importorskip("taskbuffer.distributed.redis")
    return redis.RedisDistributedCoordinator()  # connects only on start()


FACTORIES: dict[str, Callable[[], object]] = {
    "Task": lambda: Task(name="t", task_function=work),
    "Taskchain": lambda: Taskchain(name="c", task_array=[Task(task_function=work)]),
    "Taskparallel": lambda: Taskparallel(name="p", task_array=[Task(task_function=work)]),
    "TaskDebounced": lambda: TaskDebounced(name="d", task_function=work, debounce_time=0.1),
    "TaskOnce": lambda: TaskOnce(name="o", task_function=work),
    "EventSubject": EventSubject,
    "TaskManager": TaskManager,
    "TaskConstraintGroup": lambda: TaskConstraintGroup(
        name="g", constraint_key_for_execution=lambda t, x: None
    ),
    "InMemoryDistributedCoordinator": InMemoryDistributedCoordinator,
    "RedisDistributedCoordinator": redis_coordinator,
}


def assert_collected_once_dropped(ref: weakref.ref[Any]) -> None:
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_a_public_stateful_object_can_be_weakly_referenced(kind: str) -> None:
    obj = FACTORIES[kind]()
    ref = weakref.ref(obj)
    assert ref() is obj
    del obj
    assert_collected_once_dropped(ref)


async def test_a_used_manager_and_group_are_collected_once_dropped() -> None:
    """A manager that ran triggers through a group, with cron started and stopped, and the
    group: neither keeps the other alive, nor do the task and the loop."""
    group = TaskConstraintGroup(
        name="g",
        constraint_key_for_execution=lambda t, x: "k",
        max_concurrent=1,
        cooldown=0.5,
        rate_limit=RateLimit(max_per_window=2, window=1.0),
    )
    manager = TaskManager()
    manager.add_constraint_group(group)
    task = Task(name="t", task_function=work)
    manager.add_and_schedule_task(task, "* * * * *")
    await manager.start()
    async with asyncio.timeout(60):
        assert await asyncio.gather(*(manager.trigger_task(task, x) for x in range(3))) == [
            0,
            1,
            2,
        ]
    await manager.stop()
    await asyncio.sleep(2)  # cooldowns and windows run out: no timer holds the group
    manager_ref, group_ref = weakref.ref(manager), weakref.ref(group)
    del manager
    assert_collected_once_dropped(manager_ref)
    assert group_ref() is group  # still ours, and free to join another manager
    TaskManager().add_constraint_group(group)
    del group
    assert_collected_once_dropped(group_ref)
    assert task.run_count == 3  # the task outlives both
