from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.gitserver import make_repo, serve_folder
from tests.support.postgres import PostgresServer, start_postgres

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT / "tests" / "data" / "conformance"
EXAMPLES = ROOT / "examples"


@pytest.fixture
def conformance() -> Path:
    return CONFORMANCE


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL: the machine's on 127.0.0.1:5432 when it answers, else a private one."""
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store of each kind, as a URL for TERRACE_DATABASE_URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'terrace.db'}"
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    url = postgres.create_database()
    yield url
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
