"""Multi-tenant work: labels, a cap per tenant, and an event stream per tenant.

Every tenant's report task carries a ``tenant`` label. One constraint group keys on that label
so each tenant gets at most two runs at once, whatever the others do, and each tenant's
dashboard subscribes to the manager's event stream filtered to its own tasks.

Run it with ``python examples/multi_tenant.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import reactivex.operators as ops

from taskbuffer import Task, TaskConstraintGroup, TaskEvent, TaskManager

TENANTS = ("acme", "globex")
running: Counter[str] = Counter()
peak: Counter[str] = Counter()


def build_report(tenant: str, kind: str) -> Task[str]:
    async def report(week: int) -> str:
        running[tenant] += 1
        peak[tenant] = max(peak[tenant], running[tenant])
        await asyncio.sleep(0.01)
        running[tenant] -= 1
        return f"{tenant}/{kind} week {week}"

    return Task(
        task_function=report,
        name=f"{tenant}-{kind}",
        labels={"tenant": tenant, "kind": kind},
    )


def completed_for(tenant: str) -> Callable[[TaskEvent], bool]:
    def matches(event: TaskEvent) -> bool:
        return event.type == "completed" and event.task.labels.get("tenant") == tenant

    return matches


def recorder(names: list[str]) -> Callable[[TaskEvent], None]:
    return lambda event: names.append(event.task.name)


def tenant_of(task: Task[Any, Any], _input: Any) -> str | None:
    return task.get_label("tenant")  # tasks without the label are exempt (None)


async def main() -> None:
    async with TaskManager() as manager:
        for tenant in TENANTS:
            for kind in ("sales", "usage", "billing"):
                manager.add_task(build_report(tenant, kind))
        manager.add_constraint_group(
            TaskConstraintGroup(
                name="per-tenant", constraint_key_for_execution=tenant_of, max_concurrent=2
            )
        )

        # One event stream per tenant: the manager's stream, filtered by label.
        seen: defaultdict[str, list[str]] = defaultdict(list)
        for tenant in TENANTS:
            manager.task_subject.pipe(ops.filter(completed_for(tenant))).subscribe(
                recorder(seen[tenant])
            )

        acme_tasks = manager.get_tasks_by_label("tenant", "acme")
        print(f"acme has {len(acme_tasks)} tasks: {sorted(t.name or '' for t in acme_tasks)}")

        triggers = [
            manager.trigger_task(task, week)
            for week in (1, 2)
            for task in manager.task_map.values()
        ]
        results = await asyncio.gather(*triggers)
        print(f"{len(results)} reports; peak runs per tenant: {dict(sorted(peak.items()))}")
        for tenant in TENANTS:
            print(
                f"{tenant} stream: {len(seen[tenant])} completed events, "
                f"all its own: {all(e.startswith(tenant) for e in seen[tenant])}"
            )
        for meta in manager.get_tasks_metadata_by_label("kind", "billing"):
            print(f"{meta.name}: runs={meta.run_count} status={meta.status}")
        print(manager.statistics())


if __name__ == "__main__":
    asyncio.run(main())
