"""A real PostgreSQL for the tests: the one on 127.0.0.1:5432 when it answers, else our own.

Each caller gets a fresh database (``create_database``), dropped by ``drop_database``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

HOST = "127.0.0.1"
DEFAULT_PORT = 5432


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    port: int
    user: str = "postgres"
    owned: Path | None = None  # a data directory we started, removed by stop()
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"terrace_test_{os.getpid()}_{secrets.token_hex(4)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self.owned is not None:
            shutil.rmtree(self.owned, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """The machine's PostgreSQL if it answers on 5432, else a private one on a free port."""
    if _answers(DEFAULT_PORT):
        return PostgresServer(DEFAULT_PORT)
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        raise RuntimeError(
            "no PostgreSQL answers on 127.0.0.1:5432 and none is installed "
            "(./scripts/test installs Debian's postgresql when run as root)"
        )
    bindir = Path(binaries[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="terrace-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            *run_as,
            str(bindir / "postgres"),
            "-D",
            str(data / "db"),
            "-h",
            HOST,
            "-p",
            str(port),
            "-k",
            str(data),
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = PostgresServer(port, owned=data, _process=process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}")
        try:
            with psycopg.connect(server.url("postgres"), connect_timeout=1):
                return server
        except psycopg.OperationalError:
            time.sleep(0.1)  # polling a condition with a deadline, not synchronising on time
    server.stop()
    raise RuntimeError("postgres did not accept connections within 30 s")
