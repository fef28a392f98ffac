"""Showcase: a data-ingest pipeline built from taskbuffer's parts.

A burst of "new batch available" notifications hits a buffered pipeline (a ``Taskchain``):

1. ``fetch`` pulls the batch from a flaky source: retries with exponential backoff;
2. ``parse`` turns lines into records;
3. ``enrich`` fans out to three enrichers at once (a ``Taskparallel``); the sentiment model
   has a timeout and is best-effort (``catch_errors``), so a slow call never sinks a batch;
4. ``merge`` joins the enrichments, and ``store`` writes them in declared steps through a
   database handle opened once by ``task_setup``; an ``after_task`` announces each batch.

The pipeline's own steps follow its stages, every event is streamed to one log, and labels
tag the tasks by stage and team. It finishes in well under a second.

Run it with ``python examples/showcase.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from taskbuffer import Task, Taskchain, TaskEvent, Taskparallel

# ------------------------------------------------------------------------ the domain


@dataclass(frozen=True, slots=True)
class Record:
    batch: str
    id: int
    text: str
    country: str | None = None
    language: str | None = None
    sentiment: float | None = None


class FlakySource:
    """A feed whose first ``failures`` connections drop."""

    def __init__(self, *, failures: int) -> None:
        self._failures = failures
        self.calls = 0

    async def fetch(self, batch: str) -> tuple[str, list[str]]:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.calls <= self._failures:
            raise ConnectionError(f"feed dropped the connection (call {self.calls})")
        lines = ["Great service in Berlin", "Slow delivery to Lyon", "Loved the Oslo team"]
        return batch, lines


class SentimentModel:
    """A remote model: fast at first, then stuck behind a cold start."""

    def __init__(self, latencies: Iterable[float]) -> None:
        self._latencies: Iterator[float] = itertools.cycle(latencies)

    async def score(self, records: list[Record]) -> list[Record]:
        await asyncio.sleep(next(self._latencies))
        return [replace(r, sentiment=-0.5 if "Slow" in r.text else 0.8) for r in records]


class Database:
    """Stands in for a connection pool: connected once, shared by every run."""

    def __init__(self) -> None:
        self.rows: list[Record] = []
        self.connections = 0

    async def connect(self) -> Database:
        await asyncio.sleep(0.01)
        self.connections += 1
        print("  (task_setup: database connected)")
        return self


# --------------------------------------------------------------------- stage functions


def parse(fetched: tuple[str, list[str]]) -> list[Record]:
    batch, lines = fetched
    return [Record(batch=batch, id=i, text=line) for i, line in enumerate(lines)]


CITIES = {"Berlin": "DE", "Lyon": "FR", "Oslo": "NO"}


async def geolocate(records: list[Record]) -> list[Record]:
    await asyncio.sleep(0.02)
    return [
        replace(r, country=next((c for city, c in CITIES.items() if city in r.text), None))
        for r in records
    ]


async def detect_language(records: list[Record]) -> list[Record]:
    await asyncio.sleep(0.01)
    return [replace(r, language="en") for r in records]


def merge(enriched: list[list[Record] | None]) -> list[Record]:
    geo, language, sentiment = enriched
    assert geo is not None and language is not None  # only sentiment is best-effort
    merged: list[Record] = []
    for index, (g, lang) in enumerate(zip(geo, language, strict=True)):
        score = None if sentiment is None else sentiment[index].sentiment
        merged.append(replace(g, language=lang.language, sentiment=score))
    return merged


# ------------------------------------------------------------------------ the pipeline


@dataclass(frozen=True, slots=True)
class Pipeline:
    ingest: Taskchain
    fetch: Task[tuple[str, list[str]]]
    parse: Task[list[Record]]
    enrich: Taskparallel
    merge: Task[list[Record]]
    store: Task[str]
    database: Database

    @property
    def tasks(self) -> list[Task[Any, Any]]:
        """Every task of the pipeline, enrichers included."""
        stages: list[Task[Any, Any]] = [self.fetch, self.parse, self.enrich, self.merge]
        return [self.ingest, *stages, *self.enrich.task_array, self.store]


def build_pipeline(source: FlakySource, model: SentimentModel) -> Pipeline:
    database = Database()

    fetch = Task(
        task_function=source.fetch,
        name="fetch",
        labels={"stage": "fetch"},
        retries=3,
        retry_delay=0.02,  # then 0.04, then 0.08
        retry_backoff=2.0,
        retry_on=ConnectionError,  # any other error fails the run at once
    )
    parse_task = Task(task_function=parse, name="parse", labels={"stage": "parse"})
    enrich = Taskparallel(
        name="enrich",
        labels={"stage": "enrich"},
        task_array=[
            Task(task_function=geolocate, name="geo", labels={"stage": "enrich"}),
            Task(task_function=detect_language, name="language", labels={"stage": "enrich"}),
            Task(
                task_function=model.score,
                name="sentiment",
                labels={"stage": "enrich", "best-effort": "yes"},
                timeout=0.08,
                catch_errors=True,  # a timed-out score becomes None instead of failing
            ),
        ],
    )
    merge_task = Task(task_function=merge, name="merge", labels={"stage": "merge"})

    async def store_batch(records: list[Record], db: Database) -> str:
        store.notify_step("validate")
        await asyncio.sleep(0.005)
        store.notify_step("write")
        db.rows.extend(records)
        await asyncio.sleep(0.01)
        store.notify_step("index")
        await asyncio.sleep(0.005)
        return f"{records[0].batch}: stored {len(records)} records"

    store = Task(
        task_function=store_batch,
        name="store",
        labels={"stage": "store"},
        task_setup=database.connect,  # runs once, before the first run; its value is `db`
        steps=[
            {"name": "validate", "percentage": 20},
            {"name": "write", "percentage": 60},
            {"name": "index", "percentage": 20},
        ],
    )

    def announce(summary: str) -> None:
        print(f"  announce: {summary}")

    ingest = Taskchain(
        name="ingest",
        labels={"pipeline": "ingest", "team": "data"},
        task_array=[fetch, parse_task, enrich, merge_task, store],
        buffered=True,
        buffer_max=2,  # one batch running, one waiting: a burst collapses into two runs
        steps=[
            {"name": "fetch", "description": "pull the batch", "percentage": 15},
            {"name": "parse", "description": "lines to records", "percentage": 10},
            {"name": "enrich", "description": "geo, language, sentiment", "percentage": 45},
            {"name": "merge", "description": "join enrichments", "percentage": 5},
            {"name": "store", "description": "validate, write, index", "percentage": 25},
        ],
        after_task=Task(task_function=announce, name="announce"),
    )
    follow_stages(ingest, [fetch, parse_task, enrich, merge_task, store])
    return Pipeline(
        ingest=ingest,
        fetch=fetch,
        parse=parse_task,
        enrich=enrich,
        merge=merge_task,
        store=store,
        database=database,
    )


def follow_stages(pipeline: Task[Any, Any], stages: Iterable[Task[Any, Any]]) -> None:
    """Advance the pipeline's declared steps whenever one of its stages starts a run."""

    def on_stage_event(event: TaskEvent) -> None:
        if event.type == "started":
            pipeline.notify_step(event.task.name)

    for stage in stages:
        stage.event_subject.subscribe(on_stage_event)


# --------------------------------------------------------------------------- the log


class EventLog:
    """Prints the events worth reading: all of the pipeline's, steps and trouble of the rest."""

    def __init__(self, pipeline_name: str) -> None:
        self._pipeline = pipeline_name
        self._start: float | None = None

    def watch(self, tasks: Iterable[Task[Any, Any]]) -> None:
        for task in tasks:
            task.event_subject.subscribe(self.on_event)

    def on_event(self, event: TaskEvent) -> None:
        if self._start is None:
            self._start = event.timestamp
        is_pipeline = event.task.name == self._pipeline
        if not is_pipeline and event.type not in ("step", "retrying", "failed"):
            return
        detail = ""
        if event.type == "step":
            detail = f"{event.step_name} ({event.task.current_progress}%)"
        elif event.error is not None:
            detail = event.error
        elif is_pipeline:
            detail = f"({event.task.current_progress}%)"
        elapsed = event.timestamp - self._start
        print(f"{elapsed:6.3f}s  {event.task.name:<9} {event.type:<9} {detail}")


# ------------------------------------------------------------------------------ main


async def run_burst(pipeline: Pipeline) -> None:
    """Six notifications arrive while the first batch is still being processed."""
    notifications: list[asyncio.Task[Any]] = []
    for n in range(1, 7):
        notifications.append(asyncio.create_task(pipeline.ingest.trigger(f"batch-{n}")))
        await asyncio.sleep(0.005)
    results = await asyncio.gather(*notifications)

    print()
    print(f"{len(notifications)} triggers -> {pipeline.ingest.run_count} runs")
    for n, result in enumerate(results, start=1):
        print(f"  trigger batch-{n} got: {result}")


def report(pipeline: Pipeline, source: FlakySource) -> None:
    """What the tasks remember: counts, durations, steps, labels, JSON-ready metadata."""
    print(f"fetch: {source.calls} calls for 2 runs (2 dropped, retried with backoff)")
    db = pipeline.database
    print(f"database: {len(db.rows)} rows, connected {db.connections} time(s)")
    stored = pipeline.store.get_steps_metadata()
    print("store steps of the last run: " + ", ".join(f"{s.name} {s.status}" for s in stored))
    for task in pipeline.tasks:
        meta = task.get_metadata()
        average = f"{meta.average_duration:.3f}s" if meta.average_duration is not None else "-"
        print(
            f"  {meta.name:<9} status={meta.status:<9} runs={meta.run_count} "
            f"errors={meta.error_count} avg={average}"
        )
    best_effort = [t.name for t in pipeline.tasks if t.has_label("best-effort", "yes")]
    print(f"best-effort tasks: {best_effort}")
    summary = pipeline.ingest.get_metadata().to_dict()
    keys = ("name", "status", "run_count", "current_progress", "labels")
    print("ingest metadata:", json.dumps({key: summary[key] for key in keys}))


async def main() -> None:
    source = FlakySource(failures=2)
    model = SentimentModel(latencies=[0.02, 0.3])  # the second batch's call is too slow
    pipeline = build_pipeline(source, model)
    EventLog(pipeline_name="ingest").watch(pipeline.tasks)

    await run_burst(pipeline)
    print()
    report(pipeline, source)


if __name__ == "__main__":
    asyncio.run(main())
