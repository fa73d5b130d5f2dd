"""The public edge: the engine's :class:`~terrace.engine.traffic.Traffic` on a router data
plane. The engine says what runs and is healthy; the edge turns that into a route table
(:func:`terrace.router.landscapes.route_table`) and hands it to the plane; the plane's wake
calls and idle times go back to the engine."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from terrace.engine.desired import service_ports
from terrace.engine.state import ServiceKey
from terrace.engine.traffic import Served
from terrace.router.activator import TcpActivator
from terrace.router.landscapes import LandscapeTraffic, ReplicaAddress, pool_name, route_table
from terrace.router.plane import DataPlane, Timeouts
from terrace.router.planes import check_plane, make_plane
from terrace.router.table import RouteTable
from terrace.runtimes.network import HOST_ADDRESS

__all__ = ["Edge", "EdgeSettings"]

log = logging.getLogger("terrace.edge")


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeSettings:
    """Where and how the platform serves landscapes."""

    host: str = "127.0.0.1"
    port: int = 8080
    plane: str | None = None
    """``haproxy``, ``builtin``, or None: haproxy when installed."""
    threads: int | None = None
    """The plane's threads (None: its default, one; only haproxy runs more)."""
    domain: str = "localhost"
    """Landscapes are served at ``<workspace>-<port>.<domain>``."""
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        # Before anything starts: a wrong --router or --router-threads is a usage error.
        check_plane(self.plane, self.threads)


class Edge:
    """The router of one platform process."""

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        state_dir: Path,
        wake: Callable[[int, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.plane: DataPlane = make_plane(
            settings.plane,
            state_dir=state_dir,
            timeouts=settings.timeouts,
            on_wake=self._waking,
            threads=settings.threads,
        )
        self.wake = wake
        self.activator = TcpActivator(
            HOST_ADDRESS, on_wake=self._waking, timeout=settings.timeouts.wake
        )
        self.port: int | None = None
        self._default: int | None = None
        self._served: Sequence[Served] = ()
        self._services: dict[str, ServiceKey] = {}
        self.table = RouteTable()

    async def start(self) -> int:
        self.port = await self.plane.start(self.settings.host, self.settings.port)
        log.info("router (%s) on %s:%s", self.plane.name, self.settings.host, self.port)
        return self.port

    async def close(self) -> None:
        await self.activator.close()
        await self.plane.close()

    @property
    def default_workspace(self) -> int | None:
        """The workspace served on any host no route names (``terrace up DIR``'s)."""
        return self._default

    async def set_default_workspace(self, workspace_id: int | None) -> None:
        self._default = workspace_id
        await self._apply()

    # --- Traffic ------------------------------------------------------------------------------

    async def serve(self, landscapes: Sequence[Served]) -> None:
        self._served = landscapes
        await self._apply()

    async def drain(self, replica_ids: Collection[str], *, timeout: float) -> None:
        if not await self.plane.drained(replica_ids, timeout=timeout):
            log.warning(
                "requests still in flight on %s after %.0f s: stopping anyway",
                ", ".join(sorted(replica_ids)),
                timeout,
            )

    async def idle(self) -> Mapping[ServiceKey, float]:
        found: dict[ServiceKey, float] = {}
        for pool, seconds in (await self.plane.idle()).items():
            key = self._services.get(pool)
            if key is not None:
                found[key] = min(seconds, found.get(key, seconds))
        return found

    async def wake_ports(self, key: ServiceKey, ports: Sequence[int]) -> Mapping[int, int]:
        return {
            port: await self.activator.listen(pool_name(key.workspace_id, key.service, port))
            for port in ports
        }

    # --- inside -------------------------------------------------------------------------------

    async def _apply(self) -> None:
        traffic = [
            LandscapeTraffic(
                workspace_id=served.workspace_id,
                landscape=served.landscape,
                replicas={
                    service: tuple(ReplicaAddress(r.id, r.address, r.ports) for r in replicas)
                    for service, replicas in served.replicas.items()
                },
                wakeable=served.wakeable,
                domains=served.domains,
            )
            for served in self._served
        ]
        table = route_table(traffic, domain=self.settings.domain, default=self._default)
        self._services = {
            pool_name(s.workspace_id, name, port): ServiceKey(s.workspace_id, name)
            for s in self._served
            for name, service in s.landscape.services.items()
            for port in service_ports(service)
        }
        if table != self.table:
            await self.plane.apply(table)
            self.activator.apply(table)
            self.table = table

    def _waking(self, pool: str) -> None:
        key = self._services.get(pool)
        if key is not None and self.wake is not None:
            self.wake(key.workspace_id, key.service)
