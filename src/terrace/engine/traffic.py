"""What the engine tells the public router, and asks of it (the router lives beside the engine,
not under it: the API layer wires one to the other).

- :meth:`Traffic.serve`: each deployed landscape, with the replicas that should get requests
  (healthy, not about to stop) and which of its services may sleep;
- :meth:`Traffic.drain`: before the engine stops replicas, it waits here until the requests the
  router has in flight on them have finished;
- :meth:`Traffic.idle`: how long each service has had no request (what puts it to sleep);
- :meth:`Traffic.wake_ports`: where the landscape sends calls by name to a sleeping service.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from terrace.engine.state import ServiceKey
from terrace.runtimes.base import Replica
from terrace.spec.landscape import Landscape

__all__ = ["Served", "Traffic"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Served:
    """A deployed landscape as the router should serve it."""

    workspace_id: int
    landscape: Landscape
    replicas: Mapping[str, tuple[Replica, ...]]
    """Per service, the replicas that get new requests."""
    wakeable: frozenset[str]
    """Services with ``sleepAfter``: while they have no replica, requests wait for them."""
    domains: tuple[str, ...] = ()
    """The workspace's custom domains."""

    def key(self) -> tuple[object, ...]:
        return (
            self.workspace_id,
            id(self.landscape),
            tuple(sorted((s, tuple(r.id for r in rs)) for s, rs in self.replicas.items())),
            self.wakeable,
            self.domains,
        )


class Traffic(Protocol):
    async def serve(self, landscapes: Sequence[Served]) -> None:
        """Route to these landscapes from now on (all of them: one missing is no longer
        served)."""
        ...

    async def drain(self, replica_ids: Collection[str], *, timeout: float) -> None:
        """Until the router has no request in flight on these replicas (which :meth:`serve`
        has already taken out), at most ``timeout`` seconds."""
        ...

    async def idle(self) -> Mapping[ServiceKey, float]:
        """Per served service, seconds since its last request."""
        ...

    async def wake_ports(self, key: ServiceKey, ports: Sequence[int]) -> Mapping[int, int]:
        """For a sleeping service: per declared port, a port on the host's end of the
        landscape's uplink where connections by name wait for it (and wake it)."""
        ...
