"""Desired and observed state, as plain values: what the planner compares.

Desired state comes from the store (a deployed landscape, resolved); observed state comes from
a runtime (the replicas it is running). Neither holds a process or a connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = ["DesiredService", "ObservedReplica", "Phase", "ServiceKey"]


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """A service of one workspace's landscape."""

    workspace_id: int
    service: str

    def __str__(self) -> str:
        return f"{self.workspace_id}/{self.service}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredService:
    """What should run: ``replicas`` copies of one revision of a service.

    ``revision`` names everything that, changed, needs new processes (commands, env, ports,
    plan, health check): two deploys of the same spec have the same revision.
    """

    key: ServiceKey
    revision: str
    replicas: int
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class Phase(StrEnum):
    """Where a replica is in its life, as its runtime and health checks see it."""

    STARTING = "starting"
    """Running, not yet healthy: gets no traffic."""
    HEALTHY = "healthy"
    """Running and passing its health check: gets traffic."""
    UNHEALTHY = "unhealthy"
    """Running, but its health check has failed: to be restarted."""
    EXITED = "exited"
    """Its process is gone."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedReplica:
    """One replica a runtime reports. ``id`` is the runtime's own name for it."""

    id: str
    key: ServiceKey
    slot: int
    """Which of the service's replicas it is (0-based); a rollout briefly has two per slot."""
    revision: str
    phase: Phase
    restarts: int = 0
    """How many times this slot has been restarted after a failure."""
    changed_at: float = 0.0
    """When it entered ``phase`` (seconds, on the engine's clock)."""
