"""A real ``terrace server`` process on a free loopback port, for API and CLI tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ROOT


@dataclass
class LiveServer:
    home: Path
    url: str  # http://127.0.0.1:PORT
    admin_key: str
    process: subprocess.Popen[bytes]
    log: Path
    database_url: str | None = None

    @property
    def api(self) -> str:
        return self.url + "/api"

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.api, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def server_env(home: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRACE_")}
    env["TERRACE_HOME"] = str(home)
    if database_url:
        env["TERRACE_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def start_server(home: Path, database_url: str | None = None, **extra: str) -> LiveServer:
    """Start ``terrace server --port 0`` and wait until it answers /api/health."""
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"{home.name}-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "terrace", "server", "--port", "0"],
            env=server_env(home, database_url, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    marker = home / "server.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"terrace server exited {process.returncode}:\n{log.read_text()}")
        if marker.exists():
            try:
                url = json.loads(marker.read_text())["url"]
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    key_file = home / "admin.key"
                    key = extra.get("TERRACE_ADMIN_KEY") or key_file.read_text().strip()
                    return LiveServer(home, url, key, process, log, database_url)
            except (ValueError, KeyError, httpx.HTTPError):
                pass
        time.sleep(0.05)  # polling a condition with a deadline
    process.kill()
    process.wait()
    raise RuntimeError(f"terrace server did not answer within 60 s:\n{log.read_text()}")
