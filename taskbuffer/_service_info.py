"""What the services expose as values: their states, snapshots and events, and the
``ServiceManager``'s statistics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

__all__ = (
    "SERVICE_STATES",
    "RestartPolicy",
    "ServiceEvent",
    "ServiceEventType",
    "ServiceManagerStatistics",
    "ServiceMetadata",
    "ServiceState",
)

ServiceState: TypeAlias = Literal[
    "stopped", "starting", "running", "unhealthy", "restarting", "stopping", "failed"
]
# Every state entered emits the event of the same name.
ServiceEventType: TypeAlias = ServiceState
SERVICE_STATES: tuple[ServiceState, ...] = (
    "stopped",
    "starting",
    "running",
    "unhealthy",
    "restarting",
    "stopping",
    "failed",
)
RestartPolicy: TypeAlias = Literal["never", "on-failure"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceMetadata:
    """A snapshot of a service's state. Datetimes are timezone-aware (UTC)."""

    name: str
    state: ServiceState
    labels: dict[str, str]
    depends_on: tuple[str, ...]
    restart_count: int
    last_error: str | None
    last_health_check: datetime | None
    started_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready values (datetimes as ISO 8601 strings)."""
        return {
            "name": self.name,
            "state": self.state,
            "labels": dict(self.labels),
            "depends_on": list(self.depends_on),
            "restart_count": self.restart_count,
            "last_error": self.last_error,
            "last_health_check": _iso(self.last_health_check),
            "started_at": _iso(self.started_at),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceEvent:
    """A service entered the state ``type``; ``service`` is a snapshot taken at that moment."""

    type: ServiceEventType
    service: ServiceMetadata
    timestamp: float  # epoch seconds
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values."""
        return {
            "type": self.type,
            "service": self.service.to_dict(),
            "timestamp": self.timestamp,
            "error": self.error,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceManagerStatistics:
    """A snapshot: how many services are registered, and how many are in each state."""

    services: int
    stopped: int
    starting: int
    running: int
    unhealthy: int
    restarting: int
    stopping: int
    failed: int

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return {
            "services": self.services,
            "stopped": self.stopped,
            "starting": self.starting,
            "running": self.running,
            "unhealthy": self.unhealthy,
            "restarting": self.restarting,
            "stopping": self.stopping,
            "failed": self.failed,
        }
