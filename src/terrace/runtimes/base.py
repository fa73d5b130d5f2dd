"""What every runtime offers the engine: start, stop, list, probe and connect to replicas.

A runtime knows processes (or containers, or pods), never landscapes or the store: the engine
hands it a :class:`ReplicaSpec` with everything resolved, and reads back :class:`Replica`
records, which a runtime can rebuild after the engine restarts (that is how it converges).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from terrace.errors import TerraceError

__all__ = [
    "Endpoint",
    "Kind",
    "Limits",
    "Probe",
    "Replica",
    "ReplicaSpec",
    "Runtime",
    "RuntimeFailure",
]


class RuntimeFailure(TerraceError):
    """The runtime could not do what it was asked (a sandbox or network step failed)."""


class Kind(StrEnum):
    SERVICE = "service"
    """A replica of a ``run`` service: kept running by the engine."""
    JOB = "job"
    """A step of a stage (``prepare``, ``test``): runs once, to its exit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    cpu: float
    """Cores, as a CPU quota (0.5 is half a core)."""
    memory_mib: int
    pids: int = 4096


def _no_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaSpec:
    """Everything a runtime needs to start one replica (or one stage step)."""

    kind: Kind
    workspace_id: int
    team_id: int
    name: str
    """The service's name, or ``prepare``/``test`` for a step."""
    slot: int
    """The replica's index within its service, or the step's index within its stage."""
    revision: str
    restarts: int = 0
    script: str
    """Shell commands, run by ``sh -c`` in the workspace."""
    env: Mapping[str, str] = field(default_factory=_no_env)
    """The service's env, resolved (vault values decrypted); the runtime adds PORT and friends."""
    workspace: Path
    """The workspace folder on this machine; replicas see it at ``/home/user/app``."""
    sub_path: str | None = None
    ports: tuple[int, ...] = ()
    limits: Limits | None = None
    log: Path
    """Where stdout and stderr go (appended)."""
    last_exit: str | None = None
    """How the slot's previous replica ended, carried forward so the API can show it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    """A replica the runtime knows of: running, or exited and not yet removed."""

    id: str
    kind: Kind
    workspace_id: int
    name: str
    slot: int
    revision: str
    restarts: int
    started_at: float
    """Wall-clock seconds."""
    address: str
    """Where the engine reaches it (its private address, or 127.0.0.1 without a sandbox)."""
    ports: Mapping[int, int]
    """Declared port -> the port to connect to at ``address``."""
    running: bool
    exit_code: int | None = None
    """The exit status once it has exited; None if unknown. A signal shows as negative (host
    processes) or, from a sandbox, as 128 + the signal, as a shell reports it."""
    last_exit: str | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    """A health check, run from inside the replica: ``http`` GET ``path``, or ``tcp`` connect."""

    kind: str
    port: int
    path: str = "/"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A service of a landscape as other replicas see it: its name, ports and healthy replicas."""

    name: str
    ports: tuple[int, ...]
    replicas: tuple[str, ...]
    """Ids of the replicas that should get traffic (the healthy ones)."""
    wake_ports: tuple[tuple[int, int], ...] = ()
    """(declared port, port on the host's end of the landscape's uplink): where connections
    go while ``replicas`` is empty (an activator that wakes a sleeping service)."""


class Runtime(Protocol):
    """The engine's view of a runtime. Every method is safe to call again after a crash."""

    @property
    def sandboxed(self) -> bool:
        """False when replicas run as plain host processes (no isolation, remapped ports)."""
        ...

    @property
    def description(self) -> str: ...

    async def start(self, spec: ReplicaSpec) -> Replica: ...

    async def stop(self, replica_id: str, *, grace: float = 10.0) -> None:
        """SIGTERM to every process of the replica, then SIGKILL after ``grace``; forget it."""
        ...

    async def replicas(self) -> list[Replica]:
        """Every replica this installation's runtime has, after any restart of the engine."""
        ...

    async def wait(self, replica_id: str) -> int | None:
        """Until the replica exits; its exit status (None if it was not started by this
        process and so cannot be waited on)."""
        ...

    async def probe(self, replica_id: str, probe: Probe, *, timeout: float = 2.0) -> bool: ...

    async def publish(self, workspace_id: int, endpoints: Mapping[str, Endpoint]) -> None:
        """Make each service reachable by name from the landscape's replicas, balanced over
        the given replicas (the healthy ones)."""
        ...

    async def connect(
        self, workspace_id: int, service: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``service:port`` of a landscape, balanced across what
        :meth:`publish` last said, as a replica calling the service by name gets one. (The
        public router does not use it: it reaches replicas at their addresses.)"""
        ...

    async def connections(self, workspace_id: int) -> Mapping[str, int]:
        """Per service, a count of the connections replicas have opened to it by name since
        :meth:`publish` last changed it (what tells a service is used from inside)."""
        ...

    async def landscapes(self) -> set[int]:
        """The workspaces that have a network here (running replicas or not)."""
        ...

    async def forget_landscape(self, workspace_id: int) -> None:
        """Remove the landscape's network once none of its replicas run."""
        ...

    async def sweep(self) -> list[str]:
        """Remove what a crash left without a record (before the first pass)."""
        ...

    async def close(self) -> None:
        """Stop using the runtime (replicas keep running unless stopped first)."""
        ...
