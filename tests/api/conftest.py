from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.support.gitserver import make_repo, serve_folder
from tests.support.live import LiveServer, start_server
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A real ``terrace server`` on each store, shared by one test module."""
    url = None
    postgres: PostgresServer | None = None
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        url = postgres.create_database()
    server = start_server(tmp_path_factory.mktemp("live") / "home", url)
    yield server
    server.stop()
    if postgres is not None and url is not None:
        postgres.drop_database(url)


@dataclass(frozen=True)
class GitRepo:
    url: str
    commit: str


@pytest.fixture(scope="session")
def git_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitRepo]:
    """examples/01-hello as a git repository served over HTTP (branch main, tag v1)."""
    root: Path = tmp_path_factory.mktemp("git")
    commit = make_repo(EXAMPLES / "01-hello", root / "hello.git")
    with serve_folder(root) as base:
        yield GitRepo(f"{base}/hello.git", commit)
