"""``terrace up DIR`` end to end: real sandboxed processes, real HTTP, a real Ctrl-C."""

from __future__ import annotations

import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

from tests.conftest import EXAMPLES
from tests.support.up import Installation, eventually


def test_the_shop_is_built_tested_deployed_and_served(shop: Installation) -> None:
    shop.up()
    shop.wait_serving()
    out = shop.output()
    assert "prepare: ok" in out
    assert "test: ok" in out
    port = shop.port
    assert f"web              http://127.0.0.1:{port}/" in out
    assert f"api              http://127.0.0.1:{port}/api" in out

    # The prepare step installed the shared library into the workspace...
    assert (shop.folder / "lib" / "shoplib.py").exists()
    # ...web calls the api by its name over the private network...
    page = shop.get("/")
    assert page.status_code == 200
    assert "<li>terracotta pot: 12 EUR</li>" in page.text
    # ...and /api reaches the api with the prefix stripped.
    products = shop.get("/api/products")
    assert products.status_code == 200
    assert [p["name"] for p in products.json()] == ["terracotta pot", "olive tree"]

    status = shop.run_status()
    counts = {s["name"]: (s["replicas"], s["healthy"]) for s in status["services"]}
    assert counts == {"web": (1, 1), "api": (2, 2), "worker": (1, 1)}
    assert status["sandboxed"] is True

    # The worker (no route) reaches the api by name too: its log says so (it may have polled
    # once before the api was healthy: they start at the same time).
    eventually(
        lambda: "worker: 2 products" in shop.api("/workspaces/1/logs/run/worker/replica/0").text,
        what="the worker to reach the api",
    )

    assert shop.kill(signal.SIGINT) == 0
    assert "every replica was stopped" in shop.output()
    shop.assert_nothing_left()


def test_hello_answers_with_its_env(installation: Callable[[Path], Installation]) -> None:
    hello = installation(EXAMPLES / "01-hello")
    hello.up("--skip-tests")
    hello.wait_serving()
    answer = hello.get("/any/path")
    assert answer.json() == {"message": "Hello from Terrace", "path": "/any/path"}
    assert hello.kill(signal.SIGTERM) == 0
    hello.assert_nothing_left()


def _landscape(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ci.yml").write_text(textwrap.dedent(text))


def test_a_failing_prepare_step_is_named_with_its_exit_status(
    installation: Callable[[Path], Installation], tmp_path: Path
) -> None:
    _landscape(
        tmp_path / "broken",
        """\
        schemaVersion: v0.2
        prepare:
          steps:
            - name: fine
              command: echo fine
            - name: install
              command: echo "no such package" >&2; exit 3
            - name: never
              command: echo never
        run: {}
        """,
    )
    broken = installation(tmp_path / "broken")
    assert broken.up().wait(timeout=60) == 1
    out = broken.output()
    assert "prepare failed: step 1 ('install') exited with status 3" in out
    assert "| no such package" in out
    broken.assert_nothing_left()


def test_a_landscape_that_cannot_be_deployed_lists_every_problem(
    installation: Callable[[Path], Installation], tmp_path: Path
) -> None:
    _landscape(
        tmp_path / "bad",
        """\
        schemaVersion: v0.2
        run:
          web:
            plan: 999
            steps:
              - command: python3 -m http.server 3000
            env:
              PASSWORD: ${{ vault.MISSING }}
          db:
            provider:
              name: postgres
              schemaVersion: v1
            plan:
              id: 0
        """,
    )
    bad = installation(tmp_path / "bad")
    assert bad.up().wait(timeout=60) == 1
    out = bad.output()
    assert "the landscape cannot be deployed" in out
    assert "ci.yml:4:11: error: plan 999 is not one of this installation's plans" in out
    assert "MISSING" in out
    assert "marketplace is not available" in out
    bad.assert_nothing_left()


def test_router_threads_the_plane_cannot_run_are_refused_before_anything_starts(
    installation: Callable[[Path], Installation], tmp_path: Path
) -> None:
    _landscape(tmp_path / "app", "schemaVersion: v0.2\nrun: {}\n")
    app = installation(tmp_path / "app")
    assert app.up("--router", "builtin", "--router-threads", "2").wait(timeout=60) == 1
    assert (
        "terrace up: --router-threads 2: the builtin plane runs one thread (only haproxy runs "
        "more)" in app.output()
    )
    assert app.up("--router-threads", "0").wait(timeout=60) == 2
    assert "Invalid value for '--router-threads'" in app.output()
    assert "greater than or equal to 1" in app.output()
    app.assert_nothing_left()


def test_scale_teardown_and_a_crashing_service_through_the_api(
    installation: Callable[[Path], Installation], tmp_path: Path
) -> None:
    hello = installation(EXAMPLES / "01-hello")
    (hello.folder / "ci.yml").write_text(
        (hello.folder / "ci.yml").read_text()
        + '  flaky:\n    steps:\n      - command: echo "flaky starts"; exit 3\n'
    )
    hello.up("--skip-tests")
    eventually(
        lambda: any(
            s["name"] == "web" and s["healthy"] == 1 for s in hello.run_status()["services"]
        ),
        what="web to be healthy",
    )

    # A service that exits is restarted with back-off; the API says how often and why.
    def flaky() -> dict[str, object] | None:
        found = next(s for s in hello.run_status()["services"] if s["name"] == "flaky")
        instance = found["instances"][0] if found["instances"] else None
        return instance if instance and instance["restarts"] >= 2 else None

    instance = eventually(flaky, what="flaky to have been restarted twice")
    assert instance["lastExit"] == "exited with status 3"
    log = hello.api("/workspaces/1/logs/run/flaky/replica/0").text
    assert log.count("flaky starts") >= 2
    assert "restart 2" in log

    # Scale web up and down: each replica answers through the route.
    assert hello.api("/workspaces/1/landscape/scale", "PATCH", json={"web": 3}).json() == {"web": 3}

    def web(count: int) -> bool:
        found = next(s for s in hello.run_status()["services"] if s["name"] == "web")
        return found["healthy"] == count == len(found["instances"])

    eventually(lambda: web(3), what="three healthy web replicas")
    assert hello.get("/").status_code == 200
    bad = hello.api("/workspaces/1/landscape/scale", "PATCH", json={"nope": 1})
    assert bad.status_code == 422
    assert "no service 'nope'" in bad.json()["detail"]
    hello.api("/workspaces/1/landscape/scale", "PATCH", json={"web": 1})
    eventually(lambda: web(1), what="one web replica")

    # Teardown stops every replica while `terrace up` keeps running.
    assert hello.api("/workspaces/1/landscape/teardown", "DELETE").status_code == 204
    eventually(lambda: not hello.processes(), what="every replica to stop")
    assert hello.run_status()["state"] == "not-deployed"
    assert hello.runs[-1].poll() is None
    assert hello.kill(signal.SIGINT) == 0
    hello.assert_nothing_left()
