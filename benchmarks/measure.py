"""What a workload hands back (:class:`Outcome`), and the stopwatch that times it."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeAlias

__all__ = ("Check", "Outcome", "Status", "Stopwatch")

Status: TypeAlias = Literal["ok", "unavailable", "error"]


@dataclass(frozen=True)
class Check:
    """One correctness check of a workload: what was checked, whether it held, and the facts."""

    name: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """The check as JSON-ready values."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Outcome:
    """The result of one measured iteration of a workload.

    ``metrics`` hold the numbers the report aggregates (``us_per_op``, ``bytes_per_trigger``,
    ...); ``info`` holds facts to show or keep (run counts, peaks); ``checks`` say whether the
    work was done right.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    status: Status = "ok"
    note: str = ""

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record a correctness check; returns ``ok``."""
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def check_equal(self, name: str, got: object, expected: object) -> bool:
        """Record that ``got == expected`` (the detail shows both when they differ)."""
        ok = got == expected
        detail = "" if ok else f"got {_short(got)}, expected {_short(expected)}"
        return self.check(name, ok, detail)

    @classmethod
    def unavailable(cls, why: str) -> Outcome:
        """An outcome for a workload that cannot run on this build (not a failure)."""
        return cls(status="unavailable", note=why)

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON-ready values."""
        return {
            "status": self.status,
            "note": self.note,
            "metrics": self.metrics,
            "info": self.info,
            "checks": [c.to_json() for c in self.checks],
        }


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Stopwatch:
    """Times a block with :func:`time.perf_counter`, after a full :func:`gc.collect`.

    Used again, it adds the new block's time to :attr:`elapsed`.

    The garbage collector stays enabled inside the block: collections caused by the work's
    own allocations are part of its cost.
    """

    __slots__ = ("_start", "elapsed")

    def __init__(self) -> None:
        self._start = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Stopwatch:
        gc.collect()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.elapsed += time.perf_counter() - self._start

    def us_per(self, count: int) -> float:
        """Microseconds per operation, over ``count`` operations."""
        return self.elapsed * 1e6 / max(1, count)
