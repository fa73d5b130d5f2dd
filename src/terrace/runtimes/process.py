"""The ``process`` runtime: each replica is a process tree in a bubblewrap sandbox.

Per replica (see :mod:`terrace.runtimes.network` for the network, :mod:`.sandbox` for
bubblewrap, :mod:`.records` for what survives the engine):

- a record, written before anything is made;
- cgroups (v1: pids, memory, cpu) ``terrace-<prefix>/<id>``: the plan's limits, and the list of
  every process of the replica however it daemonises, which stop() empties;
- a network namespace linked to its landscape's router namespace;
- a bubblewrap sandbox.

Replicas do not die with the engine: a restarted engine reads the records back
(:meth:`ProcessRuntime.replicas`) and carries on. Without root, cgroups or the tools, replicas run
as plain host processes in their own session, on ports remapped on 127.0.0.1, with no names and
no limits; :attr:`ProcessRuntime.description` says so and the engine prints it loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from terrace.runtimes.base import (
    Endpoint,
    Kind,
    Probe,
    Replica,
    ReplicaSpec,
    RuntimeFailure,
)
from terrace.runtimes.linux import Cgroup, favor_dynamic_cgroups, socket_in
from terrace.runtimes.network import FIRST_REPLICA, LAST_INDEX, Networks, replica_address
from terrace.runtimes.records import Record, Records, pid_start
from terrace.runtimes.sandbox import (
    PATH,
    bwrap_command,
    hostname,
    installation_prefix,
    resolv_conf,
    sandbox_problems,
)
from terrace.spec.landscape import DEFAULT_PORT

__all__ = ["ProcessRuntime", "http_ok", "sandbox_problems"]

KILL_WAIT = 5.0
POLL = 0.02
JOIN_POLL = 0.001
"""Seconds between two looks at whether a new replica's first process is in its cgroups
(milliseconds away: a start returns that much sooner)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProcessRuntime:
    """Replicas as sandboxed processes of this machine (see the module's docstring)."""

    def __init__(
        self,
        home: Path,
        *,
        sandbox: bool | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.home = home.resolve()
        self.prefix = installation_prefix(self.home)
        self.run_dir = self.home / "run"
        self.records = self.run_dir / "replicas"
        self._records = Records(self.records)
        self._problems = sandbox_problems() if sandbox is not False else ["switched off"]
        if sandbox and self._problems:
            raise RuntimeFailure("cannot sandbox replicas: " + "; ".join(self._problems))
        self._sandboxed = not self._problems
        self.fast_cgroup_joins = self._sandboxed and favor_dynamic_cgroups()
        """Whether a replica's first process joins its cgroups without waiting on the kernel
        (see :func:`~terrace.runtimes.linux.favor_dynamic_cgroups`)."""
        self.networks = Networks(self.prefix, self.run_dir / "net")
        self.on_exit = on_exit
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._balance: dict[tuple[int, str], itertools.cycle[tuple[str, Mapping[int, int]]]] = {}
        self._spares: dict[int, tuple[str, int]] = {}
        """Per landscape, one linked network namespace no replica uses, and its address index:
        a stopped replica's, kept for the next replica that starts there (whose network is
        then ready: no ip(8) on the way to its first process). In memory only: after a crash,
        :meth:`sweep` removes them with the rest."""
        self._linked: set[str] = set()
        """Namespaces this runtime made and linked completely (only those become spares)."""

    # --- what it is ---------------------------------------------------------------------------

    @property
    def sandboxed(self) -> bool:
        return self._sandboxed

    @property
    def description(self) -> str:
        if self._sandboxed:
            return "process runtime: bubblewrap sandboxes, a network namespace per replica, " + (
                "cgroups" if self.fast_cgroup_joins else "cgroups (slow to join: no favordynmods)"
            )
        return (
            "process runtime WITHOUT SANDBOX ("
            + "; ".join(self._problems)
            + "): replicas are plain host processes on remapped 127.0.0.1 ports, with no "
            "isolation, no resource limits and no service names"
        )

    def _cgroup(self, replica_id: str) -> Cgroup:
        return Cgroup(f"terrace-{self.prefix}/{replica_id}")

    def _netns(self, record: Record) -> str:
        return record.netns or self.networks.replica_ns(record.id)

    def namespace(self, replica_id: str) -> str | None:
        """The network namespace of a sandboxed replica (None: no such replica)."""
        record = self._records.get(replica_id)
        return None if record is None or not record.sandboxed else self._netns(record)

    @property
    def spares(self) -> Mapping[int, str]:
        """Per landscape, the namespace kept for its next replica (see ``_spares``)."""
        return {ws: ns for ws, (ns, _) in self._spares.items()}

    def _running(self, record: Record) -> bool:
        watcher = self._watchers.get(record.id)
        if watcher is not None and not watcher.done():
            # Its first process has not been waited for: until then its exit status is not
            # known, and an engine looking now would report it as unknown.
            return True
        if record.sandboxed:
            return self._cgroup(record.id).alive()
        return (
            record.pid is not None
            and record.pid_start is not None
            and pid_start(record.pid) == record.pid_start
        )

    # --- start --------------------------------------------------------------------------------

    async def start(self, spec: ReplicaSpec) -> Replica:
        replica_id = f"{spec.workspace_id}-{spec.name}-{spec.slot}-{secrets.token_hex(3)}"
        record = Record(
            id=replica_id,
            kind=spec.kind.value,
            workspace_id=spec.workspace_id,
            team_id=spec.team_id,
            name=spec.name,
            slot=spec.slot,
            revision=spec.revision,
            restarts=spec.restarts,
            started_at=time.time(),
            sandboxed=self._sandboxed,
            last_exit=spec.last_exit,
        )
        spare = None
        if self._sandboxed:
            spare = self._spares.pop(spec.workspace_id, None)
            record.netns, record.index = spare or (
                self.networks.replica_ns(replica_id),
                self._free_index(),
            )
            record.address = replica_address(record.index)
            record.ports = {str(p): p for p in spec.ports}
        else:
            record.ports = {str(p): _free_port() for p in spec.ports}
        self._records.save(
            record
        )  # first: whatever happens next, the next engine knows to clean up
        # The sandbox waits on this pipe until its network is linked: bwrap makes it meanwhile.
        ready: tuple[int, int] | None = None
        try:
            if self._sandboxed:
                await self.networks.ensure_landscape(spec.workspace_id)
                self._cgroup(replica_id).create(spec.limits)
                self._write_hosts(spec.workspace_id)
                if spare is None:
                    await self.networks.prepare(spec.workspace_id, record.netns, record.index)
                    ready = os.pipe()
            argv, cwd = self._argv(spec, record, block_fd=None if ready is None else ready[0])
            env = self._env(spec, record)
            spec.log.parent.mkdir(parents=True, exist_ok=True)
            with open(spec.log, "ab") as log:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                log.write(
                    f"--- {stamp} {spec.name}[{spec.slot}] starting: revision "
                    f"{spec.revision}, restart {spec.restarts}\n".encode()
                )
                log.flush()
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    pass_fds=() if ready is None else (ready[0],),
                )
            record.pid, record.pid_start = proc.pid, pid_start(proc.pid)
            self._records.save(record)
            self._children[replica_id] = proc
            self._watchers[replica_id] = asyncio.create_task(self._watch(replica_id, proc))
            if ready is not None:
                await self.networks.link(spec.workspace_id, record.netns, record.index)
                self._linked.add(record.netns)
                os.write(ready[1], b"\n")
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop(replica_id, grace=0)
            raise
        finally:
            for fd in ready or ():
                os.close(fd)
        if self._sandboxed:
            # Until its shell has joined the cgroups, the replica would look stopped (and a
            # stop would miss it): return once it is in, or has already ended.
            group = self._cgroup(replica_id)
            await _until(
                lambda: group.alive() or proc.returncode is not None, KILL_WAIT, poll=JOIN_POLL
            )
        return record.replica(running=self._running(record))

    def _free_index(self) -> int:
        """A replica address free in the whole installation (the host routes to each)."""
        used = {r.index for r in self._records.all() if r.sandboxed}
        used |= {index for _, index in self._spares.values()}
        for index in range(FIRST_REPLICA, LAST_INDEX + 1):
            if index not in used:
                return index
        raise RuntimeFailure("no free replica address left in this installation")

    def _write_hosts(self, workspace_id: int) -> None:
        records = [r for r in self._records.all() if r.workspace_id == workspace_id and r.sandboxed]
        names = {r.name for r in records if r.kind == Kind.SERVICE.value}
        services = self.networks.service_addresses(workspace_id, names)
        # A slot's new replica and its old one (finishing its requests) share a hostname for a
        # moment: the newest has it.
        records.sort(key=lambda r: r.started_at)
        self.networks.write_hosts(
            workspace_id,
            services,
            {hostname(r.workspace_id, r.name, r.slot): r.address for r in records},
        )

    def _env(self, spec: ReplicaSpec, record: Record) -> dict[str, str]:
        first = spec.ports[0] if spec.ports else DEFAULT_PORT
        port = record.ports.get(str(first), first)
        return {
            "PATH": PATH,
            "LANG": "C.UTF-8",
            "HOME": "/home/user" if self._sandboxed else str(spec.workspace),
            **spec.env,
            "PORT": str(port),
            "WORKSPACE_ID": str(spec.workspace_id),
            "TEAM_ID": str(spec.team_id),
            "HOSTNAME": hostname(spec.workspace_id, spec.name, spec.slot),
        }

    def _argv(
        self, spec: ReplicaSpec, record: Record, *, block_fd: int | None
    ) -> tuple[list[str], str]:
        if not self._sandboxed:
            sub = (spec.sub_path or "").strip("/")
            return ["sh", "-c", spec.script], str(spec.workspace / sub if sub else spec.workspace)
        argv = bwrap_command(
            script=spec.script,
            host=hostname(spec.workspace_id, spec.name, spec.slot),
            workspace=spec.workspace,
            sub_path=spec.sub_path,
            home=self.home,
            hosts=self.networks.hosts_file(spec.workspace_id),
            resolv=resolv_conf(self.run_dir),
            netns=self.networks.path(self._netns(record)),
            cgroup_procs=self._cgroup(record.id).procs_files(),
            block_fd=block_fd,
        )
        return argv, "/"

    async def _watch(self, replica_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if record := self._records.get(replica_id):
            record.exit_code = code
            self._records.save(record)
        if self.on_exit is not None:
            self.on_exit(replica_id)

    # --- look ---------------------------------------------------------------------------------

    async def replicas(self) -> list[Replica]:
        return [r.replica(running=self._running(r)) for r in self._records.all()]

    async def wait(self, replica_id: str) -> int | None:
        watcher = self._watchers.get(replica_id)
        if watcher is None:
            return None
        await asyncio.shield(watcher)
        record = self._records.get(replica_id)
        return None if record is None else record.exit_code

    async def probe(self, replica_id: str, probe: Probe, *, timeout: float = 2.0) -> bool:
        record = self._records.get(replica_id)
        if record is None:
            return False
        port = record.ports.get(str(probe.port), probe.port)
        try:
            async with asyncio.timeout(timeout):
                if record.sandboxed:
                    ns = self.networks.path(self._netns(record))
                    reader, writer = await _open_in(ns, "127.0.0.1", port)
                else:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if probe.kind == "tcp":
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return True
                return await http_ok(reader, writer, probe.path, f"localhost:{probe.port}")
        except (OSError, TimeoutError):
            return False

    # --- stop ---------------------------------------------------------------------------------

    async def _release_network(self, record: Record) -> None:
        """Keep the namespace of a stopped replica (no process left in it) as its landscape's
        spare when it has none and this runtime linked it; else remove it."""
        ns, ws = self._netns(record), record.workspace_id
        if ns in self._linked and ws not in self._spares and self.networks.path(ns).exists():
            self._spares[ws] = (ns, record.index)
            return
        self._linked.discard(ns)
        await self.networks.detach(ns, record.index or None)

    async def _drop_spare(self, workspace_id: int) -> None:
        if spare := self._spares.pop(workspace_id, None):
            self._linked.discard(spare[0])
            await self.networks.detach(*spare)

    async def stop(self, replica_id: str, *, grace: float = 10.0) -> None:
        record = self._records.get(replica_id)
        if record is None:
            return
        child = self._children.pop(replica_id, None)
        if record.sandboxed:
            await self._stop_group(self._cgroup(replica_id), grace)
            if child is not None and child.returncode is None:
                # Not in the cgroups yet (stopped the moment it started): its own session.
                await self._stop_session(child.pid, 0)
            await self._release_network(record)
            await self._cgroup(replica_id).remove()
        elif record.pid is not None and pid_start(record.pid) in (None, record.pid_start):
            # The session, even if its leader (the shell) is gone; unless the pid now belongs
            # to another process.
            await self._stop_session(record.pid, grace)
        if child is not None:
            await child.wait()
        watcher = self._watchers.pop(replica_id, None)
        if watcher is not None:
            await asyncio.shield(watcher)
        self._records.forget(replica_id)
        if record.sandboxed and self.networks.hosts_file(record.workspace_id).exists():
            self._write_hosts(record.workspace_id)

    async def _stop_group(self, group: Cgroup, grace: float) -> None:
        # A replica stopped as it starts may fork its server after the first SIGTERM (and the
        # sandbox's init ignores SIGTERM): every process that shows up gets one too.
        told: set[int] = set()

        def gone() -> bool:
            pids = group.pids()
            if fresh := pids - told:
                group.signal(signal.SIGTERM, fresh)
                told.update(fresh)
            return not pids

        if await _until(gone, grace):
            return
        group.signal(signal.SIGKILL)
        if not await _until(lambda: not group.pids(), KILL_WAIT):
            raise RuntimeFailure(f"processes {sorted(group.pids())} survived SIGKILL")

    async def _stop_session(self, pid: int, grace: float) -> None:
        def gone() -> bool:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return True
            return False

        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if await _until(gone, grace):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        await _until(gone, KILL_WAIT)

    # --- networking ---------------------------------------------------------------------------

    async def publish(self, workspace_id: int, endpoints: Mapping[str, Endpoint]) -> None:
        records = {r.id: r for r in self._records.all()}
        if self._sandboxed:
            await self.networks.ensure_landscape(workspace_id)
            await self.networks.publish(
                workspace_id,
                {
                    name: (
                        e.ports,
                        [records[i].address for i in e.replicas if i in records],
                        dict(e.wake_ports),
                    )
                    for name, e in endpoints.items()
                },
            )
            return
        for name, endpoint in endpoints.items():
            targets = [
                (records[i].address, {int(k): v for k, v in records[i].ports.items()})
                for i in endpoint.replicas
                if i in records
            ]
            self._balance[(workspace_id, name)] = itertools.cycle(targets)

    async def connect(
        self, workspace_id: int, service: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self._sandboxed:
            cycle = self._balance.get((workspace_id, service))
            target = next(cycle, None) if cycle is not None else None
            if target is None:
                raise ConnectionRefusedError(f"{service} has no healthy replica")
            host, ports = target
            return await asyncio.open_connection(host, ports.get(port, port))
        address = self.networks.service_address(workspace_id, service)
        if address is None:
            raise ConnectionRefusedError(f"{service} has no address yet")
        ns = self.networks.path(self.networks.landscape_ns(workspace_id))
        return await _open_in(ns, address, port)

    async def connections(self, workspace_id: int) -> Mapping[str, int]:
        if not self._sandboxed:
            return {}
        return await self.networks.connections(workspace_id)

    async def landscapes(self) -> set[int]:
        found = {r.workspace_id for r in self._records.all()} | {ws for ws, _ in self._balance}
        marker = f"{self.prefix}-w"
        for ns in self.networks.namespaces():
            if ns.startswith(marker) and ns[len(marker) :].isdigit():
                found.add(int(ns[len(marker) :]))
        return found

    async def forget_landscape(self, workspace_id: int) -> None:
        if any(r.workspace_id == workspace_id for r in self._records.all()):
            return
        self._balance = {k: v for k, v in self._balance.items() if k[0] != workspace_id}
        await self._drop_spare(workspace_id)
        if self._sandboxed:
            await self.networks.forget_landscape(workspace_id)

    # --- after a crash ------------------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """Remove what a crash left without a record: namespaces and cgroups (killing any
        process in them). Returns what it removed."""
        if not self._sandboxed:
            return []
        known = {r.id for r in self._records.all()}
        in_use = {self._netns(r) for r in self._records.all() if r.sandboxed}
        in_use |= set(self.spares.values())
        removed = []
        for ns in self.networks.namespaces():
            replica = ns.removeprefix(f"{self.prefix}-r-")
            if replica != ns and ns not in in_use:
                if replica not in known:
                    await self._stop_group(self._cgroup(replica), 0)
                await self.networks.detach(ns)
                removed.append(ns)
        parent = Path("/sys/fs/cgroup/pids") / f"terrace-{self.prefix}"
        if parent.exists():
            for d in parent.iterdir():
                if d.is_dir() and d.name not in known:
                    group = self._cgroup(d.name)
                    await self._stop_group(group, 0)
                    await group.remove()
                    removed.append(f"cgroup {d.name}")
        return removed

    async def close(self) -> None:
        for workspace_id in list(self._spares):  # in memory only: nobody would know them after
            await self._drop_spare(workspace_id)
        for watcher in self._watchers.values():
            watcher.cancel()
        for watcher in list(self._watchers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._watchers.clear()
        self._children.clear()


async def http_ok(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, host: str
) -> bool:
    """``GET path`` over an open connection, which it closes: True on a 2xx or 3xx answer."""
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: terrace-health\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.split()
    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400


async def _open_in(
    netns: Path, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection made from inside the network namespace at ``netns``."""
    sock = socket_in(netns)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _until(condition: Callable[[], bool], timeout: float, *, poll: float = POLL) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
