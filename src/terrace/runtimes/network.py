"""Private networking for sandboxed replicas: one network namespace per landscape.

Layout (see docs/architecture.md, "How names resolve inside the sandbox"):

- every landscape has its own namespace ``<prefix>-w<workspace>`` acting as its router. It owns
  ``10.88.0.1`` and the gateway ``169.254.1.1``, routes ``10.89.0.0/16`` (service addresses)
  locally, and forwards between its replicas. Its one link out is the *uplink*, a veth pair to
  the host (``<prefix>u<workspace>`` on the host, ``uplink`` inside) over which the host reaches
  the replicas directly (the data plane's connections to them); new connections from the
  landscape out through the uplink are dropped, so landscapes cannot reach the host nor each
  other;
- every replica has its own namespace ``<prefix>-r-<replica>`` with one veth pair to its
  landscape's router: ``eth0`` = ``10.88.x.y/32``, default route via ``169.254.1.1``. So every
  replica may listen on its declared port (3000) side by side. Replica addresses are unique in
  the installation: the host has a ``/32`` route to each, through its landscape's uplink;
- every service gets a stable address ``10.89.x.y``; ``/etc/hosts`` in the sandbox (one file per
  landscape, bind-mounted read-only) maps the bare service name and
  ``ws-server-<workspace>-<service>`` to it;
- nftables in the router namespace DNATs ``service-address:port`` to the service's healthy
  replicas (``numgen inc``: round-robin per connection), for replicas (prerouting) and for
  connections the engine makes from the router namespace (output): the public router and
  nothing else crosses into a landscape.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from terrace.runtimes.base import RuntimeFailure
from terrace.runtimes.linux import command

__all__ = ["HOST_ADDRESS", "NETNS_DIR", "Networks", "replica_address"]

NETNS_DIR = Path("/run/netns")
ROUTER_ADDRESS = "10.88.0.1"
GATEWAY = "169.254.1.1"
HOST_ADDRESS = "10.87.255.254"
"""The host's end of every uplink: where connections from the host to replicas come from."""
UPLINK = "uplink"
REPLICA_NET = ipaddress.IPv4Network("10.88.0.0/16")
SERVICE_NET = ipaddress.IPv4Network("10.89.0.0/16")
FIRST_REPLICA = 2
LAST_INDEX = 65_534
TABLE = "terrace"


def replica_address(index: int) -> str:
    """The private address of the replica with ``index`` (2 .. 65534)."""
    return str(REPLICA_NET.network_address + index)


def _service_address(index: int) -> str:
    return str(SERVICE_NET.network_address + index)


class Networks:
    """The landscapes' networks of one installation (names start with ``prefix``)."""

    def __init__(self, prefix: str, state_dir: Path) -> None:
        self.prefix = prefix
        self.state_dir = state_dir
        self._making: dict[int, asyncio.Lock] = {}

    # --- names ------------------------------------------------------------------------------

    def landscape_ns(self, workspace_id: int) -> str:
        return f"{self.prefix}-w{workspace_id}"

    def replica_ns(self, replica_id: str) -> str:
        return f"{self.prefix}-r-{replica_id}"

    def uplink(self, workspace_id: int) -> str:
        """The host's end of the landscape's uplink (at most 15 characters)."""
        return f"{self.prefix}u{workspace_id}"

    @staticmethod
    def path(ns: str) -> Path:
        return NETNS_DIR / ns

    def hosts_file(self, workspace_id: int) -> Path:
        return self.state_dir / f"w{workspace_id}" / "hosts"

    def namespaces(self) -> list[str]:
        """This installation's namespaces that exist now."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(f"{self.prefix}-"))

    # --- landscapes ---------------------------------------------------------------------------

    async def ensure_landscape(self, workspace_id: int) -> None:
        """The landscape's router namespace and hosts file, made once (idempotent; replicas
        of a new landscape start together, so one makes it while the others wait)."""
        async with self._making.setdefault(workspace_id, asyncio.Lock()):
            await self._ensure_landscape(workspace_id)

    async def _ensure_landscape(self, workspace_id: int) -> None:
        if not self.hosts_file(workspace_id).exists():
            self.write_hosts(workspace_id, {}, {})
        ns = self.landscape_ns(workspace_id)
        if self.path(ns).exists():
            return
        await command(["ip", "netns", "add", ns])
        try:
            batch = "\n".join(
                [
                    "link set lo up",
                    f"addr add {ROUTER_ADDRESS}/32 dev lo",
                    f"addr add {GATEWAY}/32 dev lo",
                    f"route add local {SERVICE_NET} dev lo",
                    "",
                ]
            )
            await command(["ip", "-n", ns, "-batch", "-"], stdin=batch)
            # Forward between replicas; say "unreachable" at once, every time (the default
            # rate limit would leave a replica's next connection attempts hanging instead).
            await command(
                [
                    "nsenter",
                    f"--net={self.path(ns)}",
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.icmp_ratelimit=0",
                ]
            )
            await self._add_uplink(workspace_id, ns)
            await self._load_rules(ns, "")
        except RuntimeFailure:
            await command(["ip", "netns", "del", ns])
            raise

    async def _add_uplink(self, workspace_id: int, ns: str) -> None:
        host_end = self.uplink(workspace_id)
        await command(["ip", "link", "del", host_end], check=False)  # left by a crash
        await command(
            ["ip", "-batch", "-"],
            stdin=(
                f"link add {host_end} type veth peer name {UPLINK} netns {ns}\n"
                f"addr add {HOST_ADDRESS}/32 dev {host_end}\n"
                f"link set {host_end} up\n"
            ),
        )
        await command(
            ["ip", "-n", ns, "-batch", "-"],
            stdin=f"link set {UPLINK} up\nroute add {HOST_ADDRESS}/32 dev {UPLINK} scope link\n",
        )

    async def forget_landscape(self, workspace_id: int) -> None:
        ns = self.landscape_ns(workspace_id)
        if self.path(ns).exists():
            await command(["ip", "netns", "del", ns])
        folder = self.state_dir / f"w{workspace_id}"
        for name in ("hosts", "services.json", "resolv.conf"):
            (folder / name).unlink(missing_ok=True)
        if folder.exists():
            folder.rmdir()

    # --- replicas -----------------------------------------------------------------------------

    async def prepare(self, workspace_id: int, ns: str, index: int) -> str:
        """A replica's namespace ``ns``, and the host's route to its address through the
        uplink; its address. Its processes may start in it; :meth:`link` then connects it."""
        address = replica_address(index)
        # One ip(8) process per namespace worked in (each costs milliseconds).
        host = (
            f"route replace {address}/32 via {GATEWAY} dev {self.uplink(workspace_id)}"
            f" onlink src {HOST_ADDRESS}\n"
        )
        if not self.path(ns).exists():
            host = f"netns add {ns}\n{host}"
        try:
            await command(["ip", "-batch", "-"], stdin=host)
        except RuntimeFailure:
            await self.detach(ns, index)
            raise
        return address

    async def link(self, workspace_id: int, ns: str, index: int) -> None:
        """Connect the namespace :meth:`prepare` made to its landscape: the landscape's end of
        a veth pair and its route to the replica, the replica's end and its routes."""
        landscape = self.landscape_ns(workspace_id)
        address, link = replica_address(index), f"r{index}"
        try:
            await command(
                ["ip", "-n", landscape, "-batch", "-"],
                stdin=(
                    f"link add {link} type veth peer name eth0 netns {ns}\n"
                    f"link set {link} up\n"
                    f"route replace {address}/32 dev {link}\n"
                ),
            )
            await command(
                ["ip", "-n", ns, "-batch", "-"],
                stdin=(
                    "link set lo up\n"
                    f"addr add {address}/32 dev eth0\n"
                    "link set eth0 up\n"
                    f"route add {GATEWAY} dev eth0 scope link\n"
                    f"route add default via {GATEWAY} dev eth0\n"
                ),
            )
        except RuntimeFailure:
            await self.detach(ns, index)
            raise

    async def detach(self, ns: str, index: int | None = None) -> None:
        """Remove a replica's namespace ``ns`` (its veth pair and its landscape's route go with
        it) and, given its ``index``, the host's route to it."""
        if self.path(ns).exists():
            await command(["ip", "netns", "del", ns])
        if index is not None:
            await command(["ip", "route", "del", f"{replica_address(index)}/32"], check=False)

    # --- services ---------------------------------------------------------------------------

    async def publish(
        self,
        workspace_id: int,
        services: Mapping[str, tuple[Iterable[int], Iterable[str], Mapping[int, int]]],
    ) -> None:
        """Balance each service's ports over the given replica addresses:
        ``{service: (ports, replica addresses, wake ports)}``; a service with no replica sends
        each port in ``wake ports`` to that port of :data:`HOST_ADDRESS` instead (its
        activator), else refuses. Replaces all the landscape's rules in one transaction."""
        addresses = self.service_addresses(workspace_id, services)
        rules: list[str] = []
        hairpins: set[str] = set()
        wake: set[int] = set()
        for name, (ports, replicas, wake_ports) in sorted(services.items()):
            targets = sorted(set(replicas))
            hairpins.update(targets)
            tag = f'comment "{name}"'  # last in a rule; its counter tells use
            for port in sorted(set(ports)):
                match = f"ip daddr {addresses[name]} tcp dport {port} counter"
                if not targets:
                    if port in wake_ports:
                        wake.add(wake_ports[port])
                        rules.append(f"{match} dnat to {HOST_ADDRESS}:{wake_ports[port]} {tag}")
                    continue
                if len(targets) == 1:
                    to = targets[0]
                else:
                    pairs = ", ".join(f"{i} : {a}" for i, a in enumerate(targets))
                    to = f"numgen inc mod {len(targets)} map {{ {pairs} }}"
                rules.append(f"{match} dnat to {to} {tag}")
        await self._load_rules(
            self.landscape_ns(workspace_id), "\n".join(rules), hairpins, sorted(wake)
        )

    async def connections(self, workspace_id: int) -> dict[str, int]:
        """Per service, connections from replicas to it by name since its rules were loaded."""
        ns = self.path(self.landscape_ns(workspace_id))
        if not ns.exists():
            return {}
        out = await command(
            ["nsenter", f"--net={ns}", "nft", "-j", "list", "chain", "ip", TABLE, "pre"],
            check=False,
        )
        counts: dict[str, int] = {}
        try:
            items = json.loads(out)["nftables"] if out else []
        except (ValueError, KeyError):
            return {}
        for item in items:
            rule = item.get("rule") if isinstance(item, dict) else None
            if not rule or "comment" not in rule:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    name = str(rule["comment"])
                    counts[name] = counts.get(name, 0) + int(expr["counter"]["packets"])
        return counts

    def write_hosts(
        self, workspace_id: int, services: Mapping[str, str], replicas: Mapping[str, str]
    ) -> None:
        """The landscape's ``/etc/hosts``: each service by its bare name and by
        ``ws-server-<workspace>-<service>``, and each replica by its hostname."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [
            f"{address}\t{name} ws-server-{workspace_id}-{name}"
            for name, address in sorted(services.items())
        ]
        lines += [f"{address}\t{host}" for host, address in sorted(replicas.items())]
        hosts = self.hosts_file(workspace_id)
        hosts.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten in place: sandboxes bind-mount this very file (a rename would not show).
        with open(hosts, "r+" if hosts.exists() else "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            out.truncate()

    def service_address(self, workspace_id: int, service: str) -> str | None:
        index = self._read_indexes(workspace_id).get(service)
        return None if index is None else _service_address(index)

    def service_addresses(self, workspace_id: int, services: Iterable[str]) -> dict[str, str]:
        """Each service's address, given on first use and kept for as long as the landscape
        exists (so a client's cached address stays right)."""
        indexes = self._read_indexes(workspace_id)
        used = set(indexes.values())
        changed = False
        for name in sorted(services):
            if name not in indexes:
                index = next(i for i in range(1, LAST_INDEX + 1) if i not in used)
                indexes[name] = index
                used.add(index)
                changed = True
        if changed:
            path = self.state_dir / f"w{workspace_id}" / "services.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(indexes, sort_keys=True))
            tmp.replace(path)
        return {name: _service_address(indexes[name]) for name in indexes}

    async def _load_rules(
        self, ns: str, rules: str, hairpins: Iterable[str] = (), wake: Iterable[int] = ()
    ) -> None:
        """DNAT ``rules`` for replicas (prerouting) and the engine (output); and for each
        replica address in ``hairpins``, SNAT of its connections to itself through its service
        address (the answer would otherwise come back from its own address and be dropped).
        Out through the uplink, only connections to the ``wake`` ports of the host may start."""
        chains = [
            f"  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;\n"
            + "".join(f"    {rule}\n" for rule in rules.splitlines())
            + "  }"
            for chain, hook in (("pre", "prerouting"), ("out", "output"))
        ]
        chains.append(
            "  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
            + "".join(
                f'    oifname "{UPLINK}" ip daddr {HOST_ADDRESS} tcp dport {port} accept\n'
                for port in sorted(set(wake))
            )
            + f'    oifname "{UPLINK}" ct state new reject\n'
            "  }"
        )
        chains.append(
            "  chain post {\n    type nat hook postrouting priority 100; policy accept;\n"
            + "".join(
                f"    ip saddr {a} ip daddr {a} snat to {ROUTER_ADDRESS}\n"
                for a in sorted(set(hairpins))
            )
            + "  }"
        )
        body = "\n".join(chains)
        script = f"table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n{body}\n}}\n"
        await command(["nsenter", f"--net={self.path(ns)}", "nft", "-f", "-"], stdin=script)

    def _read_indexes(self, workspace_id: int) -> dict[str, int]:
        path = self.state_dir / f"w{workspace_id}" / "services.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in data.items()}
