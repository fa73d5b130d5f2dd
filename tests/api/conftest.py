from __future__ import annotations

from collections.abc import Iterator

import pytest

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
