"""The last resort: an unexpected exception is one logged 500 problem, and the connection lives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy.exc import IntegrityError

from terrace.api import AppContext, create_app
from terrace.api.bootstrap import bootstrap


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    ctx = AppContext.from_environment({"TERRACE_HOME": str(tmp_path)})
    bootstrap(ctx, {"TERRACE_HOME": str(tmp_path)})
    app = create_app(ctx)

    @app.get("/api/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("the value hunter2 must not reach the client")

    @app.get("/api/race", include_in_schema=False)
    def race() -> None:
        raise IntegrityError("INSERT ...", {"value": "hunter2"}, Exception("duplicate key"))

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (instance.started and instance.servers) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition with a deadline
    port = instance.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/api"
    instance.should_exit = True
    thread.join(timeout=30)
    ctx.db.dispose()


def test_an_unexpected_error_is_a_problem_and_keeps_the_connection(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        first = client.get("/boom")
        second = client.get("/boom")
        health = client.get("/health")
    for response in (first, second):
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["type"] == "urn:terrace:problem:internal-error"
        assert "incident" in body["detail"]
        assert "hunter2" not in response.text
    assert health.status_code == 200


def test_a_lost_race_in_the_database_is_a_conflict(server: str) -> None:
    response = httpx.get(server + "/race")
    assert response.status_code == 409
    assert response.json()["type"] == "urn:terrace:problem:conflict"
    assert "hunter2" not in response.text
