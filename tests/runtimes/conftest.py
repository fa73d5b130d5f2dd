"""What the runtime tests share: a tiny HTTP server for replicas, specs, polling, HTTP over
asyncio streams, and the ``lab`` fixture that gives every test its own runtime home (so its own
namespace prefix) and makes sure nothing of it is left on the machine afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from terrace.runtimes.base import Kind, Limits, ReplicaSpec
from terrace.runtimes.linux import CGROUP_ROOT, CONTROLLERS, socket_in
from terrace.runtimes.network import NETNS_DIR
from terrace.runtimes.process import ProcessRuntime
from terrace.runtimes.sandbox import sandbox_problems

T = TypeVar("T")

PYTHON = "/usr/bin/python3"
MARK_VAR = "TERRACE_TEST_MARK"

# Answers GET / with who it is, /fail* with a 500, and /fetch?url=U&timeout=S with what fetching
# U from inside the replica gave (so a test can look at the network from a replica's side).
SERVER = r"""
import json, os, sys, time, urllib.parse, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def fetch(url, timeout):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            result = {"ok": True, "status": response.status, "body": response.read().decode()}
    except Exception as exc:  # what went wrong is the answer
        result = {"ok": False, "error": repr(exc)}
    result["elapsed"] = time.monotonic() - started
    return result


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/fetch":
            body = fetch(query["url"], float(query.get("timeout", "3")))
        else:
            body = {
                "host": os.environ.get("HOSTNAME"),
                "port": os.environ.get("PORT"),
                "path": self.path,
            }
        data = json.dumps(body).encode()
        self.send_response(500 if url.path.startswith("/fail") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ["PORT"])
ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""

SERVE = f"exec {PYTHON} server.py"


async def eventually(
    check: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, what: str = ""
) -> Any:
    """Poll ``check`` (sync or async) every 30 ms until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.03)


async def http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/"
) -> tuple[int, Any]:
    """One HTTP/1.0 GET over an open connection: the status and the JSON body."""
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def get_in(
    runtime: ProcessRuntime, replica_id: str, path: str = "/", port: int = 3000
) -> tuple[int, Any]:
    """GET ``path`` from the replica's own loopback (a socket made in its namespace)."""
    ns = runtime.namespace(replica_id)
    assert ns is not None, f"{replica_id} is not a sandboxed replica"
    sock = socket_in(runtime.networks.path(ns))
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5
        )
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    return await http_get(reader, writer, path)


async def fetch_from(
    runtime: ProcessRuntime, replica_id: str, url: str, timeout: float = 3.0, port: int = 3000
) -> dict[str, Any]:
    """What fetching ``url`` from inside the replica gives (see SERVER's /fetch)."""
    query = f"/fetch?url={url}&timeout={timeout}"
    status, body = await get_in(runtime, replica_id, query, port)
    assert status == 200
    result: dict[str, Any] = body
    return result


# --- what a test leaves on the machine --------------------------------------------------------


def _prefix(home: Path) -> str:
    """The runtime's name prefix for a home (as ProcessRuntime derives it)."""
    return "tr" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:6]


def namespaces(prefix: str) -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def cgroup_parents(prefix: str) -> list[Path]:
    return [CGROUP_ROOT / c / f"terrace-{prefix}" for c in CONTROLLERS]


def cgroups(prefix: str) -> list[Path]:
    """The replica cgroups under the installation's groups, in every controller."""
    return sorted(
        d for p in cgroup_parents(prefix) if p.exists() for d in p.iterdir() if d.is_dir()
    )


def processes(*, marker: str | None = None, prefix: str | None = None) -> list[int]:
    """Live (not zombie) processes with ``marker`` in their command line or environment, or in
    a cgroup of the installation with ``prefix``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            groups = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        marked = marker is not None and marker.encode() in cmdline + environ
        if marked or (prefix is not None and f"terrace-{prefix}/" in groups):
            found.append(int(entry))
    return sorted(found)


class Lab:
    """One test's runtimes, workspaces and marker, and the check that nothing is left."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.marker = f"mark-{uuid.uuid4().hex}"
        self.homes: dict[Path, bool | None] = {}
        self.runtimes: list[ProcessRuntime] = []
        self.problems: list[str] = []
        self.temp_dirs: list[Path] = []

    def temp_dir(self) -> Path:
        """A folder outside /tmp (which sandboxes hide anyway), removed after the test."""
        folder = Path(tempfile.mkdtemp(prefix="terrace-test-", dir="/var/tmp"))
        self.temp_dirs.append(folder)
        return folder

    def run(self, coro: Awaitable[T]) -> T:
        """Run the test's coroutine; then, in the same loop (so that the runtimes collect their
        children), stop whatever its runtimes still have."""

        async def main() -> T:
            try:
                return await coro
            finally:
                await self._stop_all()

        return asyncio.run(main())

    async def _stop_all(self) -> None:
        for runtime in self.runtimes:
            try:
                replicas = await runtime.replicas()
                for replica in replicas:
                    try:
                        await asyncio.wait_for(runtime.stop(replica.id, grace=0), 5)
                    except TimeoutError:
                        self.problems.append(f"stop({replica.id}) hung; stopping it again")
                        await asyncio.wait_for(runtime.stop(replica.id, grace=0), 5)
                for workspace_id in {r.workspace_id for r in replicas} | set(runtime.spares):
                    await runtime.forget_landscape(workspace_id)
            except Exception as exc:
                self.problems.append(f"stopping with {runtime.prefix} failed: {exc!r}")

    # --- building -----------------------------------------------------------------------------

    def runtime(
        self, home: Path | None = None, *, sandbox: bool | None = None, **kwargs: Any
    ) -> ProcessRuntime:
        if sandbox is not False and (problems := sandbox_problems()):
            pytest.fail(f"this test needs the sandbox: {'; '.join(problems)}")
        home = home or self.tmp_path / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.homes.setdefault(home.resolve(), sandbox)
        runtime = ProcessRuntime(home, sandbox=sandbox, **kwargs)
        assert runtime.prefix == _prefix(home)
        self.runtimes.append(runtime)
        return runtime

    def workspace(self, workspace_id: int) -> Path:
        folder = self.tmp_path / f"ws{workspace_id}"
        if not folder.exists():
            folder.mkdir(parents=True)
            (folder / "server.py").write_text(SERVER)
        return folder

    def spec(
        self,
        name: str,
        slot: int = 0,
        *,
        script: str = SERVE,
        workspace_id: int = 1,
        team_id: int = 1,
        kind: Kind = Kind.SERVICE,
        ports: tuple[int, ...] = (3000,),
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
        revision: str = "rev-1",
    ) -> ReplicaSpec:
        folder = self.workspace(workspace_id)
        return ReplicaSpec(
            kind=kind,
            workspace_id=workspace_id,
            team_id=team_id,
            name=name,
            slot=slot,
            revision=revision,
            script=script,
            env={MARK_VAR: self.marker, **(env or {})},
            workspace=folder,
            ports=ports,
            limits=limits,
            log=self.tmp_path / "logs" / f"{workspace_id}-{name}-{slot}.log",
        )

    def log(self, workspace_id: int, name: str, slot: int = 0) -> str:
        path = self.tmp_path / "logs" / f"{workspace_id}-{name}-{slot}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- what is left ---------------------------------------------------------------------------

    def prefixes(self) -> list[str]:
        return [_prefix(home) for home in self.homes]

    def leftovers(self) -> list[str]:
        """The test's namespaces and live processes."""
        left = []
        for prefix in self.prefixes():
            left += [f"namespace {n}" for n in namespaces(prefix)]
            left += [f"process {p}" for p in processes(prefix=prefix)]
        left += [f"process {p}" for p in processes(marker=self.marker)]
        return sorted(set(left))

    def finish(self) -> None:
        """Stop what the records know (as the engine would), then insist that no namespace and
        no process is left; if one is, remove it by hand so that the next test starts clean,
        and fail. Empty cgroups are removed quietly (test_process checks that stop() does)."""
        problems = list(self.problems)
        for home, sandbox in self.homes.items():
            try:
                asyncio.run(_tidy(home, sandbox))
            except Exception as exc:
                problems.append(f"tidying {home} failed: {exc!r}")
        if left := self.leftovers():
            problems.append("left behind: " + ", ".join(left))
            self._kill()
        for prefix in self.prefixes():
            for group in [*cgroups(prefix), *cgroup_parents(prefix)]:
                if not _rmdir(group):
                    problems.append(f"cannot remove {group}")
        for folder in self.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        if problems:
            raise AssertionError("; ".join(problems))

    def _kill(self) -> None:
        pids = set(processes(marker=self.marker))
        for prefix in self.prefixes():
            pids.update(processes(prefix=prefix))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for prefix in self.prefixes():
            for ns in namespaces(prefix):
                subprocess.run(["ip", "netns", "del", ns], check=False)


def _rmdir(group: Path, timeout: float = 5.0) -> bool:
    """Remove a cgroup, waiting while it is busy (processes still exiting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            group.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
        time.sleep(0.02)


async def _tidy(home: Path, sandbox: bool | None) -> None:
    runtime = ProcessRuntime(home, sandbox=sandbox)
    replicas = await runtime.replicas()
    for replica in replicas:
        await runtime.stop(replica.id, grace=0)
    workspaces = {r.workspace_id for r in replicas}
    for ns in runtime.networks.namespaces():
        rest = ns.removeprefix(f"{runtime.prefix}-w")
        if rest != ns and rest.isdigit():
            workspaces.add(int(rest))
    for workspace_id in workspaces:
        await runtime.forget_landscape(workspace_id)
    await runtime.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.finish()
