"""From one route table to the next: the runtime commands HAProxy needs (pure).

:func:`plan` compares what HAProxy holds (:class:`Slots`, as this process set it up) with a new
:class:`RouteTable` and returns what HAProxy will hold and the commands that get it there, in
an order that keeps every request routed while they run one after another:

1. servers that new map entries will lead to: ``add server`` + ``enable server`` (a dynamic
   server starts in maintenance), ``set server ... state ready`` for one coming back from
   ``drain``;
2. route entries added or changed (``add map``/``set map`` in ``prefix.map``; a sleeping pool's
   lead to the activator's backend, whose server the plane adds when it starts the activator),
   then hosts added to and removed from ``hosts.map``, then route entries removed;
3. servers that old map entries led to: ``drain`` (a pool that fell asleep keeps its slot).

A slot that the current maps lead to and that changes pool (an empty pool left, another took
its slot) gets its servers in step 3. Deleting a drained server is :func:`removal`, once its
requests have ended.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from terrace.router.haproxy_api import Command, HaproxyError, escape
from terrace.router.haproxy_config import (
    HOSTS_MAP,
    MAPS,
    PREFIX_MAP,
    route_value,
    slot_balance,
    slot_names,
)
from terrace.router.table import Balance, Pool, RouteTable

__all__ = [
    "Server",
    "Slots",
    "adding",
    "parse_map",
    "parse_servers_state",
    "plan",
    "removal",
    "sleeping",
]


@dataclass(frozen=True, slots=True)
class Server:
    """A dynamic server in a slot backend."""

    host: str
    port: int
    ready: bool = True
    """False: draining (no new request)."""


@dataclass(slots=True)
class Slots:
    """What HAProxy holds now, as far as routes and servers go."""

    slot_of: dict[str, str] = field(default_factory=dict)
    """Pool name -> its slot backend."""
    servers: dict[str, dict[str, Server]] = field(default_factory=dict)
    """Slot -> server name -> server (ready or draining); no empty inner dict."""
    maps: dict[str, dict[str, str]] = field(default_factory=lambda: {m: {} for m in MAPS})
    """Map file -> key -> value."""


def sleeping(pool: Pool) -> bool:
    """Whether ``pool`` sleeps: it has no backend and wakes on a request."""
    return pool.wake and not pool.backends


def _maps(table: RouteTable, slot_of: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The two maps' entries for ``table`` (see :mod:`terrace.router.haproxy_config`)."""
    hosts: dict[str, str] = {}
    for host in table.hosts:
        hosts[host] = hosts[f"{host}."] = host
    prefixes: dict[str, str] = {}
    pools = table.pools
    for route in table.routes:
        pool = pools[route.pool]
        key = (route.host or "*") + route.prefix
        try:
            value = route_value(
                slot=slot_of[pool.name], pool=pool.name, strip=route.strip, sleeping=sleeping(pool)
            )
        except ValueError as exc:  # too deep a strip
            raise HaproxyError(f"route {key}: {exc}") from None
        prefixes[key if route.prefix == "/" else f"{key}/"] = value
    return {HOSTS_MAP: hosts, PREFIX_MAP: prefixes}


@functools.lru_cache(maxsize=4096)
def _check_ipv4(host: str) -> None:
    """Raises ValueError unless ``host`` is an IPv4 address (HAProxy would resolve a name)."""
    ipaddress.IPv4Address(host)


def _assign(current: Slots, table: RouteTable, slots: int) -> dict[str, str]:
    """Each pool's slot: the one it has when its balance did not change, else a free one."""
    slot_of: dict[str, str] = {}
    for name, pool in table.pools.items():
        slot = current.slot_of.get(name)
        if slot is not None and slot_balance(slot) is pool.balance:
            slot_of[name] = slot
    for balance in Balance:
        wanting = sorted(
            n for n, p in table.pools.items() if p.balance is balance and n not in slot_of
        )
        if not wanting:
            continue
        taken = set(slot_of.values()) | set(current.servers)
        # Slots the current maps do not lead to first (see plan() for the others).
        free = sorted(
            (s for s in slot_names(balance, slots) if s not in taken),
            key=lambda s: s in current.slot_of.values(),
        )
        if len(free) < len(wanting):
            raise HaproxyError(
                f"HAProxy has no free {balance.value} slot for {len(wanting)} new pool(s) "
                f"({', '.join(wanting[:5])}): all {slots} are held by pools or by backends "
                "still draining. Restart the plane with more slots (HaproxyPlane(slots=...))."
            )
        slot_of.update(zip(wanting, free, strict=False))
    return slot_of


def adding(target: str, host: str, port: int) -> list[Command]:
    """The commands that add the server ``backend/name`` and let it take requests."""
    return [
        # Dynamic servers keep no idle connection unless told (2.6: both default to 0).
        Command(
            f"add server {target} {host}:{port} pool-max-conn -1 pool-purge-delay 5s",
            "New server registered.",
        ),
        Command(f"enable server {target}"),
    ]


def _server_commands(slot: str, name: str, wanted: Server, had: Server | None) -> list[Command]:
    target = f"{slot}/{name}"
    if had is None:
        return adding(target, wanted.host, wanted.port)
    commands = []
    if (had.host, had.port) != (wanted.host, wanted.port):
        commands.append(Command(f"set server {target} addr {wanted.host} port {wanted.port}", None))
    if not had.ready:
        commands.append(Command(f"set server {target} state ready"))
    return commands


def _map_commands(
    old: Mapping[str, str], new: Mapping[str, str], name: str
) -> tuple[list[Command], list[Command]]:
    """(``add``/``set`` commands, ``del`` commands) that turn map ``old`` into ``new``."""
    upserts = [
        Command(f"{'set' if key in old else 'add'} map {name} {escape(key)} {value}")
        for key, value in new.items()
        if old.get(key) != value
    ]
    deletes = [Command(f"del map {name} {escape(key)}") for key in old if key not in new]
    return upserts, deletes


def plan(
    current: Slots, table: RouteTable, *, slots: int, activator: bool
) -> tuple[Slots, list[Command]]:
    """What HAProxy holds once ``table`` is applied, and the commands that get it there.

    Raises ValueError or :class:`HaproxyError` (and changes nothing) for a table HAProxy cannot
    follow: a backend host that is not an IPv4 address, too deep a strip, no free slot, a
    sleeping pool without an ``activator``.
    """
    for pool in table.pools.values():
        for backend in pool.backends:
            _check_ipv4(backend.host)
        if sleeping(pool) and not activator:
            raise ValueError(f"pool {pool.name} sleeps and there is no activator")
    slot_of = _assign(current, table, slots)
    maps = _maps(table, slot_of)
    wanted: dict[str, dict[str, Server]] = {}
    for name, pool in table.pools.items():
        wanted[slot_of[name]] = {b.id: Server(b.host, b.port) for b in pool.backends}

    owner = {slot: name for name, slot in current.slot_of.items()}  # what the maps lead to now
    after = Slots(slot_of, {s: dict(m) for s, m in current.servers.items()}, maps)
    first: list[Command] = []  # before the maps change
    last: list[Command] = []  # after
    for name, slot in slot_of.items():
        had = current.servers.get(slot, {})
        for server_name, server in wanted[slot].items():
            # Servers wait for the new map values when the current ones lead other requests
            # to this slot (those of a pool that just left it).
            late = slot in owner and owner[slot] != name
            commands = _server_commands(slot, server_name, server, had.get(server_name))
            (last if late else first).extend(commands)
            after.servers.setdefault(slot, {})[server_name] = server
    for slot, servers in current.servers.items():
        kept = wanted.get(slot)
        for name, server in servers.items():
            if not server.ready or (kept is not None and name in kept):
                continue
            last.append(Command(f"set server {slot}/{name} state drain"))
            after.servers[slot][name] = replace(server, ready=False)

    upserts, deletes = _map_commands(current.maps[PREFIX_MAP], maps[PREFIX_MAP], PREFIX_MAP)
    # Hosts last in, first out: a host's routes exist before requests for it stop falling back
    # to the default routes, and stay until they do again.
    add_hosts, remove_hosts = _map_commands(current.maps[HOSTS_MAP], maps[HOSTS_MAP], HOSTS_MAP)
    return after, [*first, *upserts, *add_hosts, *remove_hosts, *deletes, *last]


def removal(slot: str, name: str) -> list[Command]:
    """The commands that delete a server whose requests have ended (and close its idle
    connections): deletion needs maintenance mode first."""
    target = f"{slot}/{name}"
    return [
        Command(f"set server {target} state maint"),
        Command(f"shutdown sessions server {target}"),
        Command(f"del server {target}", "Server deleted."),
    ]


def parse_servers_state(text: str) -> dict[str, dict[str, Server]]:
    """The slot servers in the answer to ``show servers state`` (admin state 0: ready)."""
    servers: dict[str, dict[str, Server]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 19 or not parts[0].isdigit():  # the format version, the header
            continue
        slot, name, address, admin, port = parts[1], parts[3], parts[4], parts[6], parts[18]
        if slot_balance(slot) is not None:
            servers.setdefault(slot, {})[name] = Server(address, int(port), admin == "0")
    return servers


def parse_map(text: str) -> dict[str, str]:
    """The entries in the answer to ``show map <name>`` (``<id> <key> <value>`` lines)."""
    return {parts[1]: parts[2] for parts in map(str.split, text.splitlines()) if len(parts) == 3}
