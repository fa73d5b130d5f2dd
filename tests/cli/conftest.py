"""The CLI client against a real server: one ``terrace server`` for the session, and a runner
that starts ``python -m terrace`` with its own HOME, config folder and environment."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.live import LiveServer, start_server

_serial = itertools.count(1)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("cli-server") / "home")
    yield server
    server.stop()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.returncode == 0, self.stderr
        return json.loads(self.stdout)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Cli:
    """Runs ``terrace`` as a user would, in a sandbox: nothing reads or writes the real ~."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("home", "config", "data", "no-server"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TERRACE_")}
        self.env.update(
            HOME=str(self.root / "home"),
            XDG_CONFIG_HOME=str(self.root / "config"),
            XDG_DATA_HOME=str(self.root / "data"),
            TERRACE_HOME=str(self.root / "no-server"),  # no server.json: nothing to discover
            COLUMNS="200",
        )

    @property
    def config_file(self) -> Path:
        return self.root / "config" / "terrace" / "config.json"

    def __call__(self, *args: str, input: str = "", cwd: Path = ROOT, **env: str | None) -> Result:
        environ = dict(self.env)
        for name, value in env.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        done = subprocess.run(
            [sys.executable, "-m", "terrace", *args],
            input=input,
            cwd=cwd,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "cli")


@dataclass(frozen=True)
class Person:
    id: int
    email: str
    key: str


def new_user(live: LiveServer, *, cluster_admin: bool = False) -> Person:
    """A user and their API key, made directly through the API."""
    n = next(_serial)
    email = f"user{n}-{os.getpid()}@example.com"
    with live.client(live.admin_key) as admin:
        created = admin.post(
            "/users", json={"name": f"user {n}", "email": email, "clusterAdmin": cluster_admin}
        )
        created.raise_for_status()
        user_id = created.json()["id"]
        key = admin.post("/keys", json={"name": "test", "userId": user_id})
        key.raise_for_status()
    return Person(user_id, email, key.json()["key"])


def new_team(live: LiveServer, admin: Person, *members: tuple[Person, str]) -> int:
    """A team that ``admin`` created, with ``members`` added as (person, role)."""
    with live.client(admin.key) as client:
        team = client.post("/teams", json={"name": f"team {next(_serial)}"})
        team.raise_for_status()
        team_id: int = team.json()["id"]
        for person, role in members:
            added = client.post(
                f"/teams/{team_id}/members", json={"userId": person.id, "role": role}
            )
            added.raise_for_status()
    return team_id
