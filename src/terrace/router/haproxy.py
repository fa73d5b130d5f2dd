"""HAProxy as the data plane, driven over its runtime API: a table change never reloads it.

HAProxy runs as a child process (``haproxy -db -f haproxy.cfg``) in the state folder, with the
configuration of :mod:`terrace.router.haproxy_config`: maps for routes, empty "slot" backends for
pools, one frontend on a socket this process opened. :meth:`HaproxyPlane.apply` turns the
difference between the current and the new table into runtime commands
(:mod:`terrace.router.haproxy_plan`, pure) and sends them in one batch on the admin socket
(:mod:`terrace.router.haproxy_api`):

- a route is a map entry (``add map``/``set map``/``del map``);
- a pool is a slot backend, given for as long as the pool exists (and while servers it had are
  still draining); a pool whose balance changes moves to a slot of the other kind;
- a backend is a dynamic server (``add server`` + ``enable server``); one that leaves its pool is
  set to ``drain`` (no new request, requests in flight go on); :meth:`HaproxyPlane.drained` waits
  for its sessions to end (``show stat``), then puts it in ``maint`` and deletes it;
- a sleeping pool's routes lead to the ``activator`` backend, whose one server is the
  *activator* (a :class:`BuiltinPlane` in ``pool_header`` mode on 127.0.0.1, started on first
  need), with ``X-Terrace-Pool`` naming the pool; the activator holds them and calls
  ``on_wake`` until a later table gives the pool backends, then forwards them itself.

The order of the commands keeps every request routed during an apply: servers are added before
the map entries that lead to them, and drained after the entries that led to them are gone.

The process: the plane opens the listening socket itself and passes it as ``fd@N`` (a busy
port fails at once, port 0 works, and no other HAProxy can share the port through
SO_REUSEPORT); ``start()`` returns once the admin socket (mode 600, folder 700) answers, or
raises :class:`HaproxyError` with what HAProxy printed (``haproxy.log`` in the state folder,
truncated at each start; it also gets a line or two per server change). ``close()`` is a soft
stop (SIGUSR1, then HAProxy's ``hard-stop-after``), SIGTERM, SIGKILL. HAProxy gets SIGTERM if
this process dies first, and a start stops an HAProxy an earlier run left in the same folder.

Limits: ``slots`` pools per balance algorithm (64 by default) at once, and routes that strip at
most ``MAX_STRIP_DEPTH`` path segments; past them :meth:`apply` raises :class:`HaproxyError` and
changes nothing (more slots take a restart with a larger ``slots``: HAProxy 2.6 cannot create
backends at run time, and a reload would lose the dynamic servers). A refused connection is
retried up to 3 times, on another server when the pool has one (round-robin) and after HAProxy's
1 s turn-around otherwise (leastconn, or a pool of one). How long a pool has had no request is
its slot backend's ``lastsess`` in ``show stat`` (whole seconds, rounded down; ``idle()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import socket
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from terrace.router.haproxy_api import Command, HaproxyError, RuntimeApi
from terrace.router.haproxy_config import (
    ACTIVATOR,
    DEFAULT_THREADS,
    MAPS,
    MAX_THREADS,
    POOL_HEADER,
    SOCKET,
    Layout,
    render,
)
from terrace.router.haproxy_plan import (
    Slots,
    adding,
    parse_map,
    parse_servers_state,
    plan,
    removal,
    sleeping,
)
from terrace.router.plane import DataPlane, Timeouts, Waker
from terrace.router.table import RouteTable

__all__ = ["HaproxyError", "HaproxyPlane"]

DEFAULT_SLOTS = 64
POLL = 0.01
"""Seconds between two looks at HAProxy's counters while waiting (it is another process)."""
START_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1
# Looked up before fork (no dlopen between fork and exec); Linux only.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)

Which = Callable[[str, str], bool]
"""Chooses servers by slot and name."""


def _max_connections() -> int:
    """HAProxy's ``maxconn``: it needs two descriptors per proxied connection and raises its own
    limit up to the hard one (on this kind of machine 20000: a fixed large value fails)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 20000
    return max(64, min(20000, (hard - 256) // 2))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """HAProxy gets SIGTERM (its hard stop) if this process dies without closing the plane."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _listen(host: str, port: int) -> socket.socket:
    """The plane's listening socket, opened here so that a busy port fails at once (HAProxy's
    own bind would share it with another HAProxy through SO_REUSEPORT) and port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024, reuse_port=False)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (which no init may ever reap here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _stat_rows(csv_text: str) -> list[dict[str, str]]:
    lines = csv_text.splitlines()
    if not lines:
        return []
    names = lines[0].lstrip("# ").split(",")
    return [dict(zip(names, line.split(","), strict=False)) for line in lines[1:] if line]


class HaproxyPlane:
    """The HAProxy data plane (see the module's docstring)."""

    def __init__(
        self,
        *,
        state_dir: Path,
        timeouts: Timeouts = Timeouts(),  # noqa: B008 - frozen, never mutated
        on_wake: Waker | None = None,
        executable: str = "haproxy",
        slots: int = DEFAULT_SLOTS,
        threads: int = DEFAULT_THREADS,
        stop_grace: float = 1.0,
    ) -> None:
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"HAProxy runs 1 to {MAX_THREADS} threads, not {threads}")
        self._dir = state_dir
        self._timeouts = timeouts
        self._on_wake = on_wake
        self._executable = executable
        self._slots = slots
        self._threads = threads
        self._stop_grace = stop_grace
        self._api = RuntimeApi(state_dir / SOCKET)
        self._process: asyncio.subprocess.Process | None = None
        self._state = Slots()
        self._appeared: dict[str, float] = {}
        """Pool -> when it appeared or last changed slot (loop time)."""
        self._activator: DataPlane | None = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return "haproxy"

    @property
    def pid(self) -> int | None:
        """HAProxy's process id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path:
        """Where HAProxy's own messages go (truncated at each start)."""
        return self._dir / "haproxy.log"

    # -- the DataPlane protocol

    async def start(self, host: str, port: int) -> int:
        if self._process is not None:
            raise RuntimeError("the haproxy plane is already started")
        self._dir.mkdir(parents=True, exist_ok=True)
        self._dir.chmod(0o700)
        await self._stop_leftover()
        for name in MAPS:
            (self._dir / name).write_text("")
        listener = _listen(host, port)
        try:
            bound: int = listener.getsockname()[1]
            layout = Layout(
                listen=f"fd@{listener.fileno()}",
                port=bound,
                timeouts=self._timeouts,
                slots=self._slots,
                threads=self._threads,
                maxconn=_max_connections(),
                stop_grace=self._stop_grace,
            )
            (self._dir / "haproxy.cfg").write_text(render(layout))
            with self.log_path.open("wb") as log:
                self._process = await asyncio.create_subprocess_exec(
                    self._executable,
                    "-db",
                    "-f",
                    "haproxy.cfg",
                    cwd=self._dir,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=log,
                    pass_fds=[listener.fileno()],
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        finally:
            listener.close()  # HAProxy has its own copy
        (self._dir / "haproxy.pid").write_text(f"{self._process.pid}\n")
        await self._wait_started()
        return bound

    async def apply(self, table: RouteTable) -> None:
        async with self._lock:
            self._check_running()
            if self._activator is None and any(map(sleeping, table.pools.values())):
                await self._start_activator()
            activator = self._activator is not None
            try:
                after, commands = plan(self._state, table, slots=self._slots, activator=activator)
            except HaproxyError:
                await self._collect()  # servers done draining free their slots
                after, commands = plan(self._state, table, slots=self._slots, activator=activator)
            if self._activator is not None:
                await self._activator.apply(table)
            try:
                await self._api.run(commands)
            except HaproxyError:
                # HAProxy ran the other commands: learn what it holds now, then report.
                self._state = await self._read_back(after.slot_of)
                raise
            before, self._state = self._state.slot_of, after
            now = asyncio.get_running_loop().time()
            self._appeared = {
                n: self._appeared[n] if n in self._appeared and before.get(n) == slot else now
                for n, slot in after.slot_of.items()
            }
            await self._collect()

    async def drained(self, backend_ids: Collection[str], *, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ids = set(backend_ids)
        while True:
            busy = await self._busy(lambda _slot, name: name in ids)
            if not busy:
                break
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL)
        if self._activator is not None:  # requests it held and sent on to those backends
            remaining = max(0.0, deadline - loop.time())
            if not await self._activator.drained(ids, timeout=remaining):
                return False
        async with self._lock:
            await self._remove(lambda _slot, name: name in ids)
        return True

    async def idle(self) -> Mapping[str, float]:
        now = asyncio.get_running_loop().time()
        last: dict[str, int] = {}  # slot -> whole seconds since its last request
        for row in _stat_rows(await self._api.show("show stat -1 2 -1")):
            if row.get("lastsess", "").isdigit():  # "-1": none yet
                last[row["pxname"]] = int(row["lastsess"])
        slot_of = self._state.slot_of
        return {
            pool: min(now - appeared, last.get(slot_of[pool], float("inf")))
            for pool, appeared in self._appeared.items()
        }

    async def info(self) -> dict[str, str]:
        """HAProxy's ``show info`` (``Pid``, ``Uptime_sec``, ``CumReq``, ``CurrConns``, ...)."""
        lines = (await self._api.show("show info")).splitlines()
        return dict(line.split(": ", 1) for line in lines if ": " in line)

    async def close(self) -> None:
        async with self._lock:
            await self._api.close()
            process, self._process = self._process, None
            if process is not None:
                await self._stop(process)
                pid_file = self._dir / "haproxy.pid"
                with contextlib.suppress(OSError, ValueError):
                    if int(pid_file.read_text()) == process.pid:  # not a later plane's
                        (self._dir / SOCKET).unlink(missing_ok=True)
                        pid_file.unlink()
            if self._activator is not None:
                await self._activator.close()
                self._activator = None
            self._state = Slots()
            self._appeared = {}

    # -- helpers

    async def _wait_started(self) -> None:
        process = self._process
        assert process is not None
        exited = asyncio.ensure_future(process.wait())
        ready = asyncio.ensure_future(self._api.wait_ready(timeout=START_TIMEOUT))
        try:
            await asyncio.wait([exited, ready], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exited, ready):
                task.cancel()
            await asyncio.gather(exited, ready, return_exceptions=True)
        if not (ready.done() and not ready.cancelled() and ready.exception() is None):
            self._process = None
            if process.returncode is None:
                await self._stop(process)
            await self._api.close()
            message = self.log_path.read_text(errors="replace").strip()
            raise HaproxyError(
                f"haproxy did not start (exit status {process.returncode}): "
                f"{message or 'no message'}"
            )

    def _check_running(self) -> None:
        if self._process is None or self._process.returncode is not None:
            raise HaproxyError(
                "haproxy is not running: "
                + (self.log_path.read_text(errors="replace").strip()[-2000:] or "never started")
            )

    async def _start_activator(self) -> None:
        """Start the activator and make it the ``activator`` backend's server."""
        from terrace.router.builtin import BuiltinPlane  # noqa: PLC0415 - only when needed

        activator = BuiltinPlane(
            timeouts=self._timeouts, on_wake=self._on_wake, pool_header=POOL_HEADER
        )
        port = await activator.start("127.0.0.1", 0)
        try:
            await self._api.run(adding(ACTIVATOR, "127.0.0.1", port))
        except BaseException:
            await activator.close()
            raise
        self._activator = activator

    async def _read_back(self, slot_of: Mapping[str, str]) -> Slots:
        """What HAProxy holds now (``slot_of`` cannot be read back: pools without a route)."""
        answers = await self._api.run(
            [Command("show servers state", None), *(Command(f"show map {m}", None) for m in MAPS)]
        )
        return Slots(
            dict(slot_of),
            parse_servers_state(answers[0]),
            {name: parse_map(text) for name, text in zip(MAPS, answers[1:], strict=True)},
        )

    def _chosen(self, which: Which) -> set[tuple[str, str]]:
        return {
            (slot, name)
            for slot, servers in self._state.servers.items()
            for name in servers
            if which(slot, name)
        }

    async def _busy(self, which: Which) -> set[tuple[str, str]]:
        """The servers chosen by ``which`` that have requests in flight or queued."""
        chosen = self._chosen(which)
        if not chosen:
            return set()
        rows = _stat_rows(await self._api.show("show stat -1 4 -1"))
        return {
            (row["pxname"], row["svname"])
            for row in rows
            if (row["pxname"], row["svname"]) in chosen
            and (int(row["scur"] or 0) or int(row["qcur"] or 0))
        }

    async def _remove(self, which: Which) -> None:
        """Delete the draining servers chosen by ``which`` (their requests have ended); a slot
        left without servers and pool is free again. Call with the lock held."""
        state = self._state
        for slot, name in sorted(self._chosen(which)):
            if state.servers[slot][name].ready:
                continue  # back in a pool since
            await self._delete(slot, name)
            del state.servers[slot][name]
            if not state.servers[slot]:
                del state.servers[slot]

    async def _delete(self, slot: str, name: str) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 1.0
        *prepare, delete = removal(slot, name)
        await self._api.run(prepare)
        while True:  # idle connections to it may take a moment to close
            try:
                await self._api.run([delete])
            except HaproxyError:
                if loop.time() >= give_up:
                    raise
                await asyncio.sleep(POLL)
            else:
                return

    async def _collect(self) -> None:
        """Delete draining servers whose requests have ended among those nobody will wait for
        with :meth:`drained`: servers of slots no pool holds (a pool that left, or moved to the
        other algorithm). Their slots are free again."""
        held = set(self._state.slot_of.values())

        def leftover(slot: str, name: str) -> bool:
            server = self._state.servers[slot][name]
            return not server.ready and slot not in held

        busy = await self._busy(leftover)
        await self._remove(lambda slot, name: leftover(slot, name) and (slot, name) not in busy)

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        """Soft stop (SIGUSR1: stop listening, finish what is in flight; HAProxy ends it
        after ``hard-stop-after``), then SIGTERM, then SIGKILL."""
        for sig, wait in (
            (signal.SIGUSR1, self._stop_grace + 1.0),
            (signal.SIGTERM, 2.0),
            (signal.SIGKILL, None),
        ):
            if process.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                async with asyncio.timeout(wait):
                    await process.wait()
            except TimeoutError:
                continue

    async def _stop_leftover(self) -> None:
        """Stop an HAProxy that an earlier run in this state folder left behind (its process
        died without closing the plane): it would hold the port and answer with an old table."""
        pid_file = self._dir / "haproxy.pid"
        try:
            pid = int(pid_file.read_text())
            cwd = os.readlink(f"/proc/{pid}/cwd")
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if Path(cwd) != self._dir.resolve() or b"haproxy.cfg" not in command:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            give_up = loop.time() + 2.0
            while loop.time() < give_up:
                if not _alive(pid):
                    return
                await asyncio.sleep(POLL)
