"""From deployed landscapes to a :class:`RouteTable` (pure).

Where a landscape is served (``domain`` is the installation's, ``localhost`` by default):

- ``<workspace>-3000.<domain>``: the landscape's ``network.paths``, each to its service's port,
  the longest prefix winning, ``stripPath`` honoured (Codesphere's development domain);
- ``<workspace>-<port>.<domain>``: a port declared ``isPublic: true``, whole (``/`` and below),
  unless the landscape's paths already serve ``/`` on that host;
- each custom domain of the workspace: the same routes as ``<workspace>-3000.<domain>``;
- any other host, under ``/_ws/<workspace>-<port>``: the same routes again with that prefix
  removed (the path form, for a machine without wildcard DNS);
- any other host at all, for the *default* workspace (``terrace up DIR``): its paths at ``/``.

Ports that are neither in a path nor public are private: no route reaches them; only the
landscape's own replicas do, by service name. A service's pools balance as its
``loadBalancing`` says (round-robin unless ``leastConnections``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from terrace.router.table import Backend, Balance, Pool, Route, RouteTable, valid_prefix
from terrace.spec.landscape import DEFAULT_PORT, Landscape, LoadBalancing

__all__ = [
    "PATH_FORM",
    "LandscapeTraffic",
    "ReplicaAddress",
    "host_for",
    "path_form",
    "pool_name",
    "route_table",
]

PATH_FORM = "/_ws"
_BALANCE = {
    LoadBalancing.ROUND_ROBIN: Balance.ROUND_ROBIN,
    LoadBalancing.LEAST_CONNECTIONS: Balance.LEAST_CONN,
}


@dataclass(frozen=True, slots=True)
class ReplicaAddress:
    """A replica that gets traffic: where the platform's host reaches each declared port."""

    id: str
    host: str
    ports: Mapping[int, int]


def _no_replicas() -> Mapping[str, tuple[ReplicaAddress, ...]]:
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class LandscapeTraffic:
    """One deployed landscape as the router sees it."""

    workspace_id: int
    landscape: Landscape
    replicas: Mapping[str, tuple[ReplicaAddress, ...]] = field(default_factory=_no_replicas)
    """Per service, the replicas that get new requests (healthy, not leaving)."""
    wakeable: frozenset[str] = frozenset()
    """Services that may sleep: with no replica, their requests are held while they wake."""
    domains: tuple[str, ...] = ()
    """The workspace's custom domains (lowercase)."""


def pool_name(workspace_id: int, service: str, port: int) -> str:
    return f"w{workspace_id}-{service}-{port}"


def host_for(workspace_id: int, port: int, domain: str) -> str:
    return f"{workspace_id}-{port}.{domain}"


def path_form(workspace_id: int, port: int) -> str:
    return f"{PATH_FORM}/{workspace_id}-{port}"


def _prefix(path: str) -> str | None:
    prefix = "/" + path.strip("/")
    return prefix if valid_prefix(prefix) else None


def route_table(
    landscapes: Iterable[LandscapeTraffic], *, domain: str, default: int | None = None
) -> RouteTable:
    """Every route and pool of ``landscapes``; ``default`` is the workspace served on any
    host no route names."""
    routes: dict[tuple[str | None, str], Route] = {}
    pools: dict[str, Pool] = {}

    def add(route: Route) -> None:
        routes.setdefault((route.host, route.prefix), route)  # the first one wins

    for item in sorted(landscapes, key=lambda t: t.workspace_id):
        ws = item.workspace_id

        def pool(service: str, port: int, item: LandscapeTraffic = item, ws: int = ws) -> str:
            name = pool_name(ws, service, port)
            if name not in pools:
                pools[name] = Pool(
                    name,
                    tuple(
                        Backend(r.id, r.host, r.ports.get(port, port))
                        for r in item.replicas.get(service, ())
                    ),
                    _BALANCE[item.landscape.services[service].load_balancing],
                    wake=service in item.wakeable,
                )
            return name

        # (port, prefix, pool, strip) per host port: what each of the landscape's hosts serves.
        served: dict[int, list[tuple[str, str, str]]] = {}
        for service_name in sorted(item.landscape.services):
            service = item.landscape.services[service_name]
            for path in service.network.paths:
                prefix = _prefix(path.path)
                if path.port is None or prefix is None:
                    continue  # a route to a URL, or a path no route can have
                strip = prefix if path.strip_path and prefix != "/" else ""
                served.setdefault(DEFAULT_PORT, []).append(
                    (prefix, pool(service_name, path.port), strip)
                )
        for service_name in sorted(item.landscape.services):
            for declared in item.landscape.services[service_name].network.ports:
                number = declared.number
                if declared.public and not any(p == "/" for p, _, _ in served.get(number, [])):
                    served.setdefault(number, []).append(("/", pool(service_name, number), ""))
        for port, entries in sorted(served.items()):
            hosts: list[str | None] = [host_for(ws, port, domain)]
            if port == DEFAULT_PORT:
                hosts += list(item.domains)
                if ws == default:
                    hosts.append(None)
            form = path_form(ws, port)
            for prefix, name, strip in entries:
                for host in hosts:
                    add(Route(prefix, name, host, strip))
                add(Route(form if prefix == "/" else form + prefix, name, None, form + strip))
    return RouteTable(routes.values(), pools.values())
