"""A real ``terrace up DIR`` process, and what a test needs to watch it: its API, its public
port, and the processes, namespaces and cgroups of its installation."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from terrace.runtimes.sandbox import installation_prefix
from tests.conftest import ROOT
from tests.support.live import server_env

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def eventually(check: Callable[[], T | None], *, timeout: float = 30, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; its value. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check} (last error: {last})")


@dataclass
class Installation:
    """One TERRACE_HOME and the ports its ``terrace up`` uses."""

    home: Path
    folder: Path
    port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.home.parent / f"{self.home.name}-up-{len(self.runs)}.log"

    def up(self, *args: str) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_for(len(self.runs) + 1), "wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "terrace",
                    "up",
                    str(self.folder),
                    "--port",
                    str(self.port),
                    "--api-port",
                    str(self.api_port),
                    *args,
                ],
                env=server_env(self.home, COLUMNS="200"),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.runs.append(process)
        return process

    def log_for(self, run: int) -> Path:
        return self.home.parent / f"{self.home.name}-up-{run}.log"

    def output(self, run: int | None = None) -> str:
        number = len(self.runs) if run is None else run
        return self.log_for(number).read_text(errors="replace")

    def api(self, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        key = (self.home / "admin.key").read_text().strip()
        return httpx.request(
            method,
            f"http://127.0.0.1:{self.api_port}/api{path}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
            **kwargs,
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)

    def run_status(self, workspace: int = 1) -> dict[str, Any]:
        response = self.api(f"/workspaces/{workspace}/pipeline/run")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait_serving(self, timeout: float = 60) -> None:
        process = self.runs[-1]

        def serving() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"terrace up exited {process.returncode}:\n{self.output()}")
            return "serving; Ctrl-C stops everything" in self.output()

        eventually(serving, timeout=timeout, what="terrace up to serve")

    def kill(self, signum: int = signal.SIGKILL) -> int:
        process = self.runs[-1]
        process.send_signal(signum)
        return process.wait(timeout=60)

    # --- what the installation leaves on the machine ------------------------------------------

    def namespaces(self) -> list[str]:
        try:
            names = os.listdir("/run/netns")
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(installation_prefix(self.home) + "-"))

    def cgroups(self) -> list[str]:
        parent = Path("/sys/fs/cgroup/pids") / f"terrace-{installation_prefix(self.home)}"
        return sorted(d.name for d in parent.iterdir() if d.is_dir()) if parent.exists() else []

    def processes(self) -> list[int]:
        """Live processes of the installation's replicas (in its cgroups, or sandboxes of its
        workspace folder: bwrap's command line binds it) and of its router (HAProxy)."""
        mark = f"terrace-{installation_prefix(self.home)}/"
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # exited, waiting for its parent to collect it
                cgroup = Path(f"/proc/{entry}/cgroup").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if (
                mark in cgroup
                or f"--bind {self.folder} ".encode() in cmdline
                or (b"haproxy" in cmdline and f"{self.home}/".encode() in cmdline)
            ):
                found.append(int(entry))
        return found

    def assert_nothing_left(self) -> None:
        eventually(
            lambda: not self.processes() and not self.namespaces() and not self.cgroups(),
            timeout=15,
            what="no process, namespace or cgroup left",
        )

    def clean_up(self) -> None:
        """After a failed test: stop whatever still runs (a last `terrace up`, then Ctrl-C)."""
        for process in self.runs:
            if process.poll() is None:
                process.kill()
                process.wait()
        if self.processes() or self.namespaces() or self.cgroups():
            final = self.up()
            with contextlib.suppress(AssertionError):
                self.wait_serving()
            final.send_signal(signal.SIGINT)
            final.wait(timeout=60)
