"""The ``process`` runtime: each replica is a process tree in a bubblewrap sandbox.

Per replica (see :mod:`terrace.runtimes.network` for the network):

- a record file ``$TERRACE_HOME/run/replicas/<id>.json``, written before anything is made, so
  that after a crash at any point the next engine finds every piece and can remove it;
- cgroups (v1: pids, memory, cpu) ``terrace-<prefix>/<id>``: the plan's limits, and the list of
  every process of the replica however it daemonises, which stop() empties;
- a network namespace linked to its landscape's router namespace;
- ``bwrap``: its own PID, IPC and UTS namespaces, no capabilities, a new session, the host's
  filesystem read-only with ``/tmp``, ``/run``, ``/root``, ``/home``, ``/var/lib`` and
  ``$TERRACE_HOME`` hidden, the workspace read-write at ``/home/user/app`` and the landscape's
  ``/etc/hosts``.

Replicas do not die with the engine: a restarted engine reads the records back
(:meth:`ProcessRuntime.replicas`) and carries on. Without root, cgroups or the tools, replicas run
as plain host processes in their own session, on ports remapped on 127.0.0.1, with no names and
no limits; :attr:`ProcessRuntime.description` says so and the engine prints it loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import secrets
import shlex
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from terrace.runtimes.base import (
    Endpoint,
    Kind,
    Probe,
    Replica,
    ReplicaSpec,
    RuntimeFailure,
)
from terrace.runtimes.linux import Cgroup, cgroups_available, missing_tools, socket_in
from terrace.runtimes.network import FIRST_REPLICA, LAST_INDEX, Networks, replica_address

__all__ = ["ProcessRuntime", "http_ok", "sandbox_problems"]

MOUNT = "/home/user/app"
DEFAULT_PORT = 3000
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HIDDEN = ("/run", "/root", "/home", "/var/lib", "/mnt", "/media", "/srv", "/opt/terrace")
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/ssh")
KILL_WAIT = 5.0
POLL = 0.02


def sandbox_problems() -> list[str]:
    """Why replicas cannot be sandboxed on this machine (empty when they can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("Terrace is not running as root")
    if missing := missing_tools():
        problems.append(
            f"missing tools: {', '.join(missing)} (Debian: bubblewrap iproute2 nftables util-linux)"
        )
    if os.geteuid() == 0 and not cgroups_available():
        problems.append("cgroup v1 controllers pids, memory and cpu are not writable")
    return problems


@dataclass(slots=True, kw_only=True)
class _Record:
    """What survives the engine: one replica, as on disk."""

    id: str
    kind: str
    workspace_id: int
    team_id: int
    name: str
    slot: int
    revision: str
    restarts: int
    started_at: float
    sandboxed: bool
    index: int = 0
    address: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    pid: int | None = None
    pid_start: str | None = None
    exit_code: int | None = None
    last_exit: str | None = None

    def replica(self, *, running: bool) -> Replica:
        return Replica(
            id=self.id,
            kind=Kind(self.kind),
            workspace_id=self.workspace_id,
            name=self.name,
            slot=self.slot,
            revision=self.revision,
            restarts=self.restarts,
            started_at=self.started_at,
            address=self.address,
            ports={int(k): v for k, v in self.ports.items()},
            running=running,
            exit_code=self.exit_code,
            last_exit=self.last_exit,
        )


def _pid_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _hostname(workspace_id: int, name: str, slot: int) -> str:
    return f"ws-server-{workspace_id}-{name}-{slot}"[:63]


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
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:6]
        self.prefix = f"tr{digest}"
        self.run_dir = self.home / "run"
        self.records = self.run_dir / "replicas"
        self.records.mkdir(parents=True, exist_ok=True)
        self._problems = sandbox_problems() if sandbox is not False else ["switched off"]
        if sandbox and self._problems:
            raise RuntimeFailure("cannot sandbox replicas: " + "; ".join(self._problems))
        self._sandboxed = not self._problems
        self.networks = Networks(self.prefix, self.run_dir / "net")
        self.on_exit = on_exit
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._balance: dict[tuple[int, str], itertools.cycle[tuple[str, Mapping[int, int]]]] = {}
        self._cache: dict[str, _Record] = self._read_records()

    # --- what it is ---------------------------------------------------------------------------

    @property
    def sandboxed(self) -> bool:
        return self._sandboxed

    @property
    def description(self) -> str:
        if self._sandboxed:
            return "process runtime: bubblewrap sandboxes, a network namespace per replica, cgroups"
        return (
            "process runtime WITHOUT SANDBOX ("
            + "; ".join(self._problems)
            + "): replicas are plain host processes on remapped 127.0.0.1 ports, with no "
            "isolation, no resource limits and no service names"
        )

    # --- records ------------------------------------------------------------------------------

    def _path(self, replica_id: str) -> Path:
        return self.records / f"{replica_id}.json"

    def _save(self, record: _Record) -> None:
        path = self._path(record.id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(path)
        self._cache[record.id] = record

    def _forget(self, replica_id: str) -> None:
        self._path(replica_id).unlink(missing_ok=True)
        self._cache.pop(replica_id, None)

    def _load(self, replica_id: str) -> _Record | None:
        return self._cache.get(replica_id)

    def _all(self) -> list[_Record]:
        return sorted(self._cache.values(), key=lambda r: r.id)

    def _read_records(self) -> dict[str, _Record]:
        """The records on disk: read once, when the runtime starts (one engine per home)."""
        found = {}
        for path in sorted(self.records.glob("*.json")):
            try:
                data: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a record torn by a crash mid-write is never renamed into place
            found[path.stem] = _Record(**data)
        return found

    def _resolv_conf(self) -> Path:
        # Replicas have no route to any DNS server: a resolver on their own loopback fails at
        # once instead of waiting for a timeout on every unknown name.
        path = self.run_dir / "resolv.conf"
        if not path.exists():
            path.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        return path

    def _cgroup(self, replica_id: str) -> Cgroup:
        return Cgroup(f"terrace-{self.prefix}/{replica_id}")

    def _running(self, record: _Record) -> bool:
        if record.sandboxed:
            return self._cgroup(record.id).alive()
        return (
            record.pid is not None
            and record.pid_start is not None
            and _pid_start(record.pid) == record.pid_start
        )

    # --- start --------------------------------------------------------------------------------

    async def start(self, spec: ReplicaSpec) -> Replica:
        replica_id = f"{spec.workspace_id}-{spec.name}-{spec.slot}-{secrets.token_hex(3)}"
        record = _Record(
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
        if self._sandboxed:
            record.index = self._free_index(spec.workspace_id)
            record.ports = {str(p): p for p in spec.ports}
        else:
            record.ports = {str(p): _free_port() for p in spec.ports}
        self._save(record)  # first: whatever happens next, the next engine knows to clean up
        try:
            if self._sandboxed:
                await self.networks.ensure_landscape(spec.workspace_id)
                self._cgroup(replica_id).create(spec.limits)
                record.address = replica_address(record.index)
                self._save(record)
                self._write_hosts(spec.workspace_id)
                await self.networks.attach(spec.workspace_id, replica_id, record.index)
            argv, cwd = self._argv(spec, record)
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
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop(replica_id, grace=0)
            raise
        record.pid, record.pid_start = proc.pid, _pid_start(proc.pid)
        self._save(record)
        self._children[replica_id] = proc
        self._watchers[replica_id] = asyncio.create_task(self._watch(replica_id, proc))
        if self._sandboxed:
            # Until its shell has joined the cgroups, the replica would look stopped (and a
            # stop would miss it): return once it is in, or has already ended.
            group = self._cgroup(replica_id)
            await _until(lambda: group.alive() or proc.returncode is not None, KILL_WAIT)
        return record.replica(running=self._running(record))

    def _free_index(self, workspace_id: int) -> int:
        used = {r.index for r in self._all() if r.workspace_id == workspace_id and r.sandboxed}
        for index in range(FIRST_REPLICA, LAST_INDEX + 1):
            if index not in used:
                return index
        raise RuntimeFailure(f"workspace {workspace_id} has no free replica address left")

    def _write_hosts(self, workspace_id: int) -> None:
        records = [r for r in self._all() if r.workspace_id == workspace_id and r.sandboxed]
        names = {r.name for r in records if r.kind == Kind.SERVICE.value}
        services = self.networks.service_addresses(workspace_id, names)
        self.networks.write_hosts(
            workspace_id,
            services,
            {_hostname(r.workspace_id, r.name, r.slot): r.address for r in records},
        )

    def _env(self, spec: ReplicaSpec, record: _Record) -> dict[str, str]:
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
            "HOSTNAME": _hostname(spec.workspace_id, spec.name, spec.slot),
        }

    def _argv(self, spec: ReplicaSpec, record: _Record) -> tuple[list[str], str]:
        sub = (spec.sub_path or "").strip("/")
        if not self._sandboxed:
            cwd = spec.workspace / sub if sub else spec.workspace
            return ["sh", "-c", spec.script], str(cwd)
        bwrap = [
            "bwrap",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            _hostname(spec.workspace_id, spec.name, spec.slot),
            "--cap-drop",
            "ALL",
            "--new-session",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
        ]
        for hidden in (*HIDDEN, str(self.home)):
            if Path(hidden).is_dir():
                bwrap += ["--tmpfs", hidden]
        for hidden in HIDDEN_FILES:
            if Path(hidden).is_dir():
                bwrap += ["--tmpfs", hidden]
            elif Path(hidden).exists():
                bwrap += ["--ro-bind", "/dev/null", hidden]
        bwrap += [
            "--bind",
            str(spec.workspace),
            MOUNT,
            "--ro-bind",
            str(self.networks.hosts_file(spec.workspace_id)),
            "/etc/hosts",
            "--ro-bind",
            str(self._resolv_conf()),
            "/etc/resolv.conf",
            "--chdir",
            f"{MOUNT}/{sub}" if sub else MOUNT,
            "--",
            "sh",
            "-c",
            spec.script,
        ]
        netns = self.networks.path(self.networks.replica_ns(record.id))
        # The shell joins the replica's cgroups before anything of the replica runs, then
        # becomes nsenter (network namespace), which becomes bwrap.
        join = " && ".join(
            f"echo $$ > {shlex.quote(str(f))}" for f in self._cgroup(record.id).procs_files()
        )
        argv = ["sh", "-c", f'{join} && exec "$@"', "sh", "nsenter", f"--net={netns}", "--", *bwrap]
        return argv, "/"

    async def _watch(self, replica_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if record := self._load(replica_id):
            record.exit_code = code
            self._save(record)
        if self.on_exit is not None:
            self.on_exit(replica_id)

    # --- look ---------------------------------------------------------------------------------

    async def replicas(self) -> list[Replica]:
        return [r.replica(running=self._running(r)) for r in self._all()]

    async def wait(self, replica_id: str) -> int | None:
        watcher = self._watchers.get(replica_id)
        if watcher is None:
            return None
        await asyncio.shield(watcher)
        record = self._load(replica_id)
        return None if record is None else record.exit_code

    async def probe(self, replica_id: str, probe: Probe, *, timeout: float = 2.0) -> bool:
        record = self._load(replica_id)
        if record is None:
            return False
        port = record.ports.get(str(probe.port), probe.port)
        try:
            async with asyncio.timeout(timeout):
                if record.sandboxed:
                    ns = self.networks.path(self.networks.replica_ns(replica_id))
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

    async def stop(self, replica_id: str, *, grace: float = 10.0) -> None:
        record = self._load(replica_id)
        if record is None:
            return
        child = self._children.pop(replica_id, None)
        if record.sandboxed:
            await self._stop_group(self._cgroup(replica_id), grace)
            if child is not None and child.returncode is None:
                # Not in the cgroups yet (stopped the moment it started): its own session.
                await self._stop_session(child.pid, 0)
            await self.networks.detach(replica_id)
            await self._cgroup(replica_id).remove()
        elif record.pid is not None and _pid_start(record.pid) in (None, record.pid_start):
            # The session, even if its leader (the shell) is gone; unless the pid now belongs
            # to another process.
            await self._stop_session(record.pid, grace)
        if child is not None:
            await child.wait()
        watcher = self._watchers.pop(replica_id, None)
        if watcher is not None:
            await asyncio.shield(watcher)
        self._forget(replica_id)
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
        records = {r.id: r for r in self._all()}
        if self._sandboxed:
            await self.networks.ensure_landscape(workspace_id)
            await self.networks.publish(
                workspace_id,
                {
                    name: (e.ports, [records[i].address for i in e.replicas if i in records])
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

    async def landscapes(self) -> set[int]:
        found = {r.workspace_id for r in self._all()} | {ws for ws, _ in self._balance}
        marker = f"{self.prefix}-w"
        for ns in self.networks.namespaces():
            if ns.startswith(marker) and ns[len(marker) :].isdigit():
                found.add(int(ns[len(marker) :]))
        return found

    async def forget_landscape(self, workspace_id: int) -> None:
        if any(r.workspace_id == workspace_id for r in self._all()):
            return
        self._balance = {k: v for k, v in self._balance.items() if k[0] != workspace_id}
        if self._sandboxed:
            await self.networks.forget_landscape(workspace_id)

    # --- after a crash ------------------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """Remove what a crash left without a record: namespaces and cgroups (killing any
        process in them). Returns what it removed."""
        if not self._sandboxed:
            return []
        known = {r.id for r in self._all()}
        removed = []
        for ns in self.networks.namespaces():
            replica = ns.removeprefix(f"{self.prefix}-r-")
            if replica != ns and replica not in known:
                await self._stop_group(self._cgroup(replica), 0)
                await self.networks.detach(replica)
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
    sock = await socket_in(netns)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL)
