"""The workloads: for each id, the taskbuffer side and (if any) the baseline side.

Every side is an ``async def (params) -> Outcome``; :mod:`benchmarks.child` runs one of them
in a fresh process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..measure import Outcome
from ..specs import Params
from . import constraints as c
from . import core as w
from . import dashboard as d
from . import events_cron as e
from . import jobs as j
from . import services as v

__all__ = ("IMPLEMENTATIONS", "Implementation", "Side")

Side = Callable[[Params], Awaitable[Outcome]]


@dataclass(frozen=True)
class Implementation:
    """The two sides of a workload."""

    taskbuffer: Side
    baseline: Side | None = None


IMPLEMENTATIONS: dict[str, Implementation] = {
    "W1": Implementation(w.w1_taskbuffer, w.w1_baseline),
    "W2": Implementation(w.w2_taskbuffer, w.w2_baseline),
    "W3": Implementation(w.w3_taskbuffer, w.w3_baseline),
    "W4": Implementation(w.w4_taskbuffer, w.w4_baseline),
    "W5": Implementation(w.w5_taskbuffer, w.w5_baseline),
    "W6": Implementation(w.w6_taskbuffer, w.w1_baseline),
    "C1": Implementation(c.c1_taskbuffer, c.c1_baseline),
    "C2": Implementation(c.c2_taskbuffer, c.c2_baseline),
    "C3": Implementation(c.c3_taskbuffer, c.c3_baseline),
    "C4": Implementation(c.c4_taskbuffer, c.c4_baseline),
    "C5": Implementation(c.c5_taskbuffer, c.c5_baseline),
    "C6": Implementation(c.c6_taskbuffer),
    "E1": Implementation(e.e1_taskbuffer, e.e1_baseline),
    "E2": Implementation(e.e2_taskbuffer, e.e2_baseline),
    "S1": Implementation(e.s1_taskbuffer),
    "S2": Implementation(e.s2_taskbuffer),
    "D1": Implementation(d.d1_taskbuffer),
    "V1": Implementation(v.v1_taskbuffer),
    "J1": Implementation(j.j1_taskbuffer, j.j1_baseline),
    "J2": Implementation(j.j2_taskbuffer),
    "J3": Implementation(j.j3_taskbuffer, j.j3_baseline),
}
