"""The route table: which pool of backends a request goes to. Pure (no I/O), immutable.

A request is matched by its host, then by the longest path prefix on a segment boundary
(``/api`` matches ``/api`` and ``/api/users``, never ``/apis``):

- routes with a ``host`` match requests for exactly that host (lowercase, port removed);
- routes without one (``host=None``) match requests for any host that no route names. That is how
  ``terrace up`` serves its landscape on ``127.0.0.1:8080``, and how the path form
  ``/_ws/<workspace>-<port>/...`` reaches any workspace without DNS.

A known host with no matching prefix gets no route (404), never another host's routes.

A match names a :class:`Pool`: the healthy replicas (:class:`Backend`) of one service port and how
to balance over them. A pool with no backend and ``wake`` set belongs to a sleeping service:
the data plane holds its requests and asks for it to wake instead of refusing them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = ["Backend", "Balance", "Match", "Pool", "Route", "RouteTable", "normalize_host"]

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
"""Pool and backend names: safe as HAProxy backend/server names and in log lines."""
_NOT_IN_PREFIX = re.compile(r"[?#%\s\x00-\x1f\x7f]")
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


class Balance(StrEnum):
    """How a pool spreads requests over its backends."""

    ROUND_ROBIN = "roundrobin"
    LEAST_CONN = "leastconn"
    """The backend with the fewest requests in flight (ties: round-robin)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One replica's port, as the platform's host reaches it."""

    id: str
    """The replica's id (unique in the installation): the data plane's server name."""
    host: str
    """An IPv4 address literal."""
    port: int

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.id):
            raise ValueError(f"backend id {self.id!r} must match {NAME.pattern}")
        if not 0 < self.port < 65536:
            raise ValueError(f"backend {self.id}: port {self.port} is not 1..65535")


@dataclass(frozen=True, slots=True)
class Pool:
    """A service port: the backends that get new requests, and how they are balanced."""

    name: str
    backends: tuple[Backend, ...] = ()
    balance: Balance = Balance.ROUND_ROBIN
    wake: bool = False
    """The service sleeps: with no backend, hold requests and ask it to wake (not 503)."""

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"pool name {self.name!r} must match {NAME.pattern}")
        ids = [b.id for b in self.backends]
        if len(set(ids)) != len(ids):
            raise ValueError(f"pool {self.name}: a backend appears twice")


@dataclass(frozen=True, slots=True)
class Route:
    """Requests for ``host`` whose path falls under ``prefix`` go to ``pool``.

    ``strip`` is removed from the front of the path before forwarding (it is ``prefix`` itself
    for a ``stripPath`` route, ``/_ws/12-3000`` for the path form, or both) and sent along as
    ``X-Forwarded-Prefix``: ``/api/users`` -> ``/users``, ``/api`` -> ``/``.
    """

    prefix: str
    pool: str
    host: str | None = None
    strip: str = ""

    def __post_init__(self) -> None:
        if not valid_prefix(self.prefix):
            raise ValueError(
                f"route prefix {self.prefix!r} must be a path such as '/' or '/api' "
                "(no trailing slash, query, percent sign or whitespace)"
            )
        if self.host is not None and normalize_host(self.host) != self.host:
            raise ValueError(f"route host {self.host!r} must be a lowercase DNS name")
        if self.strip and not (
            valid_prefix(self.strip) and self.strip != "/" and _under(self.prefix, self.strip)
        ):
            raise ValueError(f"route {self.prefix!r}: strip {self.strip!r} is not a prefix of it")

    def matches(self, path: str) -> bool:
        """Whether ``path`` (without its query) falls under this route's prefix."""
        return _under(path, self.prefix)

    def target(self, path: str, query: str | None = None) -> str:
        """The request target sent upstream (``query`` None: no ``?``)."""
        if self.strip:
            path = path[len(self.strip) :] or "/"
        return path if query is None else f"{path}?{query}"


def valid_prefix(prefix: str) -> bool:
    return (
        prefix.startswith("/")
        and (prefix == "/" or not prefix.endswith("/"))
        and "//" not in prefix
        and not _NOT_IN_PREFIX.search(prefix)
    )


def _under(path: str, prefix: str) -> bool:
    return prefix in ("/", path) or path.startswith(prefix + "/")


def normalize_host(host: str | None) -> str | None:
    """``Example.COM:8080`` -> ``example.com``; None for a missing, IP-literal or malformed host
    (such requests can only match routes without a host)."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal
        return None
    host = host.rsplit(":", 1)[0] if ":" in host else host
    host = host.removesuffix(".")
    if not _HOST.fullmatch(host) or host.replace(".", "").isdigit():
        return None
    return host


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    pool: Pool


class RouteTable:
    """Routes and the pools they name; replaced whole, never changed in place."""

    __slots__ = ("_by_host", "_default", "pools", "routes")

    def __init__(self, routes: Iterable[Route] = (), pools: Iterable[Pool] = ()) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        by_name: dict[str, Pool] = {}
        for pool in pools:
            if pool.name in by_name:
                raise ValueError(f"more than one pool named {pool.name!r}")
            by_name[pool.name] = pool
        self.pools: Mapping[str, Pool] = MappingProxyType(by_name)
        seen: set[tuple[str | None, str]] = set()
        by_host: dict[str | None, list[Route]] = {}
        for route in self.routes:
            if route.pool not in by_name:
                raise ValueError(f"route {route.host or '*'}{route.prefix} names no pool")
            key = (route.host, route.prefix)
            if key in seen:
                raise ValueError(f"more than one route for {route.host or '*'}{route.prefix}")
            seen.add(key)
            by_host.setdefault(route.host, []).append(route)
        longest_first = {
            host: tuple(sorted(rs, key=lambda r: len(r.prefix), reverse=True))
            for host, rs in by_host.items()
        }
        self._default = longest_first.pop(None, ())
        self._by_host = longest_first

    @property
    def hosts(self) -> frozenset[str]:
        """Every host some route names."""
        return frozenset(h for h in self._by_host if h is not None)

    def candidates(self, host: str | None) -> tuple[Route, ...]:
        """The routes a request for ``host`` may match, longest prefix first."""
        return self._by_host.get(normalize_host(host), self._default)

    def match(self, host: str | None, path: str) -> Match | None:
        """The route for a request to ``host`` (as in its Host header) and ``path``."""
        for route in self.candidates(host):
            if route.matches(path):
                return Match(route, self.pools[route.pool])
        return None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RouteTable)
            and set(self.routes) == set(other.routes)
            and dict(self.pools) == dict(other.pools)
        )

    def __hash__(self) -> int:
        return hash((frozenset(self.routes), frozenset(self.pools.values())))

    def __repr__(self) -> str:
        return f"RouteTable({len(self.routes)} routes, {len(self.pools)} pools)"
