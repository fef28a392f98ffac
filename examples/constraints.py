"""Constraint groups: mutexes, caps, cooldowns, rate limits, checks and shared results.

A sync service calls a partner API for many customer accounts. Each concern is one
``TaskConstraintGroup`` on the manager; they stack, and each picks its own key per trigger.

Run it with ``python examples/constraints.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from taskbuffer import RateLimit, Task, TaskConstraintGroup, TaskEvent, TaskManager

in_flight: Counter[str] = Counter()
peak: Counter[str] = Counter()


async def sync_account(account: str) -> str:
    """Pretend to sync one account with the partner API."""
    in_flight[account] += 1
    in_flight["*"] += 1
    peak[account] = max(peak[account], in_flight[account])
    peak["*"] = max(peak["*"], in_flight["*"])
    await asyncio.sleep(0.01)
    in_flight[account] -= 1
    in_flight["*"] -= 1
    return f"synced {account}"


def account_of(task: Task[Any, Any], account: Any) -> str:
    return str(account)


async def mutex_and_cap() -> None:
    manager = TaskManager()
    sync = Task(task_function=sync_account, name="sync")
    manager.add_task(sync)
    # One sync per account at a time (a per-key mutex): the key comes from the input.
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="per-account", constraint_key_for_execution=account_of, max_concurrent=1
        )
    )
    # At most three syncs in flight overall: one constant key for every trigger.
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="global", constraint_key_for_execution=lambda t, i: "all", max_concurrent=3
        )
    )
    accounts = ["acme", "acme", "acme", "globex", "initech", "umbrella", "hooli"]
    results = await asyncio.gather(*(manager.trigger_task(sync, a) for a in accounts))
    print(
        f"mutex+cap: {len(results)} syncs, at most {peak['acme']} per account "
        f"and {peak['*']} overall"
    )


async def cooldown_and_rate_limit() -> None:
    loop = asyncio.get_running_loop()
    manager = TaskManager()
    starts: list[float] = []
    starts_by_account: dict[str, list[float]] = {}

    async def call_partner(account: str) -> None:
        starts.append(loop.time())
        starts_by_account.setdefault(account, []).append(loop.time())

    task = Task(task_function=call_partner, name="call-partner")
    manager.add_task(task)
    # The partner allows 4 calls per 0.2 s (a sliding window), across all accounts.
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="partner-quota",
            constraint_key_for_execution=lambda t, i: "api",
            rate_limit=RateLimit(max_per_window=4, window=0.2),
        )
    )
    # And wants one call at a time per account, with 50 ms of rest after each.
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="rest", constraint_key_for_execution=account_of, max_concurrent=1, cooldown=0.05
        )
    )
    began = loop.time()
    await asyncio.gather(*(manager.trigger_task(task, f"acct-{i % 2}") for i in range(8)))
    in_first_window = sum(1 for s in starts if s - began < 0.2)
    print(f"rate limit: 8 calls, {in_first_window} in the first 0.2 s window")
    rested = all(
        later - earlier >= 0.05
        for times in starts_by_account.values()
        for earlier, later in zip(times, times[1:], strict=False)
    )
    print(f"cooldown: consecutive calls of one account >= 50 ms apart: {rested}")


async def checks_and_sharing() -> None:
    manager = TaskManager()
    refreshes: list[str] = []
    disabled = {"enron"}

    async def refresh_token(account: str) -> str:
        refreshes.append(account)
        await asyncio.sleep(0.02)
        return f"token-for-{account}-{len(refreshes)}"

    refresh = Task(task_function=refresh_token, name="refresh-token")
    manager.add_task(refresh)
    # Skip disabled accounts: should_execute is asked right before each run.
    # Singleflight: triggers waiting for an account's refresh take the result of the one
    # that is running instead of refreshing again.
    manager.add_constraint_group(
        TaskConstraintGroup(
            name="refresh-once",
            constraint_key_for_execution=account_of,
            max_concurrent=1,
            should_execute=lambda task, account: account not in disabled,
            result_sharing="share-latest",
        )
    )
    events: list[str] = []

    def on_event(event: TaskEvent) -> None:
        if event.type in ("queued", "skipped"):
            events.append(event.type)

    manager.task_subject.subscribe(on_event)
    tokens = await asyncio.gather(*(manager.trigger_task(refresh, "acme") for _ in range(5)))
    print(
        f"share-latest: 5 triggers, {refreshes.count('acme')} refreshes, "
        f"tokens: {sorted({str(t) for t in tokens})}"
    )
    skipped = await manager.trigger_task(refresh, "enron")
    print(f"should_execute: disabled account -> {skipped!r}; events seen: {sorted(set(events))}")


async def spawn_from_a_subscriber() -> None:
    manager = TaskManager()
    audit_log: list[str] = []

    async def write_audit(entry: str) -> None:
        await asyncio.sleep(0.01)
        audit_log.append(entry)

    manager.add_task(Task(task_function=sync_account, name="sync"))
    manager.add_task(Task(task_function=write_audit, name="audit"))

    def on_event(event: TaskEvent) -> None:
        # A subscriber is plain code: it cannot await a trigger, so it spawns one. The
        # manager keeps the run, logs its failure, and stop() waits for it.
        if event.task.name == "sync" and event.type == "completed":
            manager.spawn("audit", f"sync run {event.task.run_count} done")

    manager.task_subject.subscribe(on_event)
    await asyncio.gather(*(manager.trigger_task_by_name("sync", a) for a in ("acme", "hooli")))
    await manager.stop()
    print(f"spawn: 2 syncs, {len(audit_log)} audit entries written when stop() returned")


async def main() -> None:
    await mutex_and_cap()
    await cooldown_and_rate_limit()
    await checks_and_sharing()
    await spawn_from_a_subscriber()


if __name__ == "__main__":
    asyncio.run(main())
