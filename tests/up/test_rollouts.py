"""No request fails: not through rolling deploys, scale changes, a failed rollout, nor while a
sleeping service wakes. ``terrace up`` on both router planes, load from a second process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.up import Installation, eventually

APP = """\
import json, os, pathlib, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

handled = 0
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global handled
        if self.path == "/slow":  # in flight until the test lets it end
            pathlib.Path("slow-started").touch()
            while not pathlib.Path("slow-release").exists():
                time.sleep(0.01)
        if self.path != "/healthz":
            with lock:
                handled += 1
        body = json.dumps({
            "version": os.environ["VERSION"], "slot": os.environ["HOSTNAME"],
            "handled": handled,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
"""

LANDSCAPE = """\
schemaVersion: v0.2
run:
  app:
    steps:
      - command: {command}
    replicas: 2
    healthEndpoint: http://localhost:3000/healthz
    network:
      ports:
        - port: 3000
          isPublic: false
      paths:
        - port: 3000
          path: /
    env:
      VERSION: "{version}"
{extra}"""

PLANES = ["builtin", "haproxy"]


def _write(folder: Path, version: int, *, command: str = "python3 app.py", extra: str = "") -> None:
    (folder / "ci.yml").write_text(
        LANDSCAPE.format(command=command, version=version, extra=textwrap.indent(extra, "    "))
    )


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Callable[[str], Installation]]:
    made: list[Installation] = []

    def make(extra: str = "") -> Installation:
        folder = tmp_path / "app"
        folder.mkdir()
        (folder / "app.py").write_text(APP)
        _write(folder, 1, extra=extra)
        found = Installation(home=tmp_path / "home", folder=folder)
        made.append(found)
        return found

    yield make
    for found in made:
        found.clean_up()


@contextmanager
def load(installation: Installation, tmp: Path) -> Iterator[dict[str, Any]]:
    """Requests from a second process for as long as the block runs; then its results."""
    out, stop = tmp / "load.json", tmp / "load.stop"
    results: dict[str, Any] = {}
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "support" / "load.py"),
            f"http://127.0.0.1:{installation.port}/",
            str(out),
            str(stop),
        ],
        cwd=ROOT,
    )
    try:
        yield results
    finally:
        stop.touch()
        process.wait(timeout=60)
    results.update(json.loads(out.read_text()))


def converged(installation: Installation, replicas: int) -> dict[str, Any] | None:
    """The run status once ``app`` has exactly ``replicas`` healthy replicas of its desired
    revision and nothing else."""
    status = installation.run_status()
    (service,) = status["services"]
    instances = service["instances"]
    done = (
        service["healthy"] == replicas
        and len(instances) == replicas
        and all(i["revision"] == service["revision"] for i in instances)
    )
    return status if done else None


@pytest.mark.parametrize("plane", PLANES)
def test_twenty_rolling_deploys_and_twenty_scale_changes_fail_no_request(
    app: Callable[[str], Installation], tmp_path: Path, plane: str
) -> None:
    installation = app("")
    installation.up("--skip-tests", "--router", plane)
    installation.wait_serving()
    assert f"router: {plane}" in installation.output()
    with load(installation, tmp_path) as results:
        for version in range(2, 22):
            _write(installation.folder, version)
            deployed = installation.api("/workspaces/1/landscape/deploy", "POST")
            assert deployed.status_code == 200, deployed.text
            eventually(lambda: converged(installation, 2), what=f"version {version} to serve")
            assert installation.get("/").json()["version"] == str(version)
        for count in [3, 1, 4, 2, 5, 1, 3, 2, 4, 1] * 2:
            scaled = installation.api("/workspaces/1/landscape/scale", "PATCH", json={"app": count})
            assert scaled.status_code == 200, scaled.text
            eventually(lambda c=count: converged(installation, c), what=f"{count} replicas")
    assert results["failures"] == []
    assert results["ok"] > 200
    assert "21" in results["versions"]
    assert installation.kill(signal.SIGINT) == 0
    installation.assert_nothing_left()


@pytest.mark.parametrize("plane", PLANES)
def test_a_rollout_that_never_gets_healthy_is_rolled_back_and_the_old_one_keeps_serving(
    app: Callable[[str], Installation], tmp_path: Path, plane: str
) -> None:
    installation = app("")
    installation.up("--skip-tests", "--router", plane)
    installation.wait_serving()
    with load(installation, tmp_path) as results:
        _write(installation.folder, 2, command="echo cannot start without its config && exit 3")
        assert installation.api("/workspaces/1/landscape/deploy", "POST").status_code == 200

        def rolled_back() -> dict[str, Any] | None:
            status = installation.run_status()
            return status if status.get("rollback") else None

        status = eventually(rolled_back, timeout=60, what="the failed rollout to be undone")
        reason = status["rollback"]["reason"]
        assert "service app" in reason
        assert "exited with status 3" in reason
        assert "rolled back" in reason
        eventually(lambda: converged(installation, 2), what="the old revision alone")
    assert results["failures"] == []
    assert set(results["versions"]) == {"1"}
    # A fixed deploy after that rolls out normally.
    _write(installation.folder, 3)
    assert installation.api("/workspaces/1/landscape/deploy", "POST").status_code == 200
    eventually(lambda: converged(installation, 2), what="version 3")
    assert installation.get("/").json()["version"] == "3"
    assert installation.run_status()["rollback"] is None
    assert installation.kill(signal.SIGINT) == 0
    installation.assert_nothing_left()


@pytest.mark.parametrize("plane", PLANES)
def test_a_sleeping_service_wakes_for_concurrent_requests_and_answers_each_once(
    app: Callable[[str], Installation], plane: str
) -> None:
    installation = app("sleepAfter: 2s\n")
    installation.up("--skip-tests", "--router", plane)
    installation.wait_serving()
    assert installation.get("/").status_code == 200

    def asleep() -> bool:
        (service,) = installation.run_status()["services"]
        return bool(service["asleep"]) and not service["instances"]

    eventually(asleep, timeout=30, what="the app to sleep")
    eventually(lambda: not installation.processes(), what="no process while asleep")

    def fetch(_: int) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{installation.port}/", timeout=60)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(fetch, range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    # Each request reached a replica once: the replicas handled 20 between them.
    (service,) = installation.run_status()["services"]
    assert not service["asleep"]
    handled = {(a.json()["slot"], a.json()["handled"]) for a in answers}
    assert len(handled) == 20
    assert installation.kill(signal.SIGINT) == 0
    installation.assert_nothing_left()


CALLER = """\
import os, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with urllib.request.urlopen("http://app:3000/", timeout=30) as answer:
            body = answer.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_a_call_by_name_from_inside_the_landscape_wakes_a_sleeping_service(
    app: Callable[[str], Installation],
) -> None:
    installation = app("sleepAfter: 1s\n")
    (installation.folder / "caller.py").write_text(CALLER)
    with open(installation.folder / "ci.yml", "a") as landscape:
        landscape.write(
            textwrap.dedent(
                """\
                  caller:
                    steps:
                      - command: python3 caller.py
                    network:
                      paths:
                        - port: 3000
                          path: /via
                """
            )
        )
    installation.up("--skip-tests", "--router", "builtin")
    installation.wait_serving()

    def app_asleep() -> bool:
        services = {s["name"]: s for s in installation.run_status()["services"]}
        return bool(services["app"]["asleep"]) and not services["app"]["instances"]

    eventually(app_asleep, timeout=30, what="the app to sleep")
    # The caller (awake: no sleepAfter) calls the app by name: the call waits, the app wakes.
    answer = httpx.get(f"http://127.0.0.1:{installation.port}/via", timeout=60)
    assert answer.status_code == 200
    assert answer.json()["version"] == "1"
    services = {s["name"]: s for s in installation.run_status()["services"]}
    assert not services["app"]["asleep"]
    assert installation.kill(signal.SIGINT) == 0
    installation.assert_nothing_left()


def test_a_second_landscape_is_served_on_its_hosts_its_custom_domain_and_the_path_form(
    app: Callable[[str], Installation], tmp_path: Path
) -> None:
    installation = app("")
    installation.up("--skip-tests")  # the default plane: HAProxy, installed by scripts/setup
    installation.wait_serving()
    assert "router: haproxy" in installation.output()
    # A second workspace beside terrace up's own (which serves any host no route names).
    second = tmp_path / "second"
    second.mkdir()
    (second / "app.py").write_text(APP)
    _write(second, 2)
    made = installation.api(
        "/workspaces", "POST", json={"teamId": 1, "name": "second", "path": str(second)}
    )
    assert made.status_code == 201, made.text
    ws = made.json()["id"]
    assert installation.api(f"/workspaces/{ws}/landscape/deploy", "POST").status_code == 200
    assert installation.api(f"/workspaces/{ws}/domains/shop.example.test", "PUT").status_code == 204

    def version(host: str, path: str = "/") -> str | None:
        answer = httpx.get(
            f"http://127.0.0.1:{installation.port}{path}", headers={"Host": host}, timeout=10
        )
        return str(answer.json()["version"]) if answer.status_code == 200 else None

    eventually(lambda: version("shop.example.test") == "2", what="the custom domain")
    assert version(f"{ws}-3000.localhost:{installation.port}") == "2"
    assert version("127.0.0.1", f"/_ws/{ws}-3000/") == "2"
    assert version("1-3000.localhost") == "1"
    assert version("anything.else") == "1"  # the default: terrace up's own landscape
    assert (
        installation.api(f"/workspaces/{ws}/domains/shop.example.test", "DELETE").status_code == 204
    )
    eventually(lambda: version("shop.example.test") == "1", what="the domain to be dropped")
    assert installation.kill(signal.SIGINT) == 0
    installation.assert_nothing_left()


TWO_SERVICES = """\
schemaVersion: v0.2
run:
  app:
    steps:
      - command: python3 app.py
    healthEndpoint: http://localhost:3000/healthz
    network:
      paths:
        - port: 3000
          path: /
    env:
      VERSION: "{version}"
  sleeper:
    steps:
      - command: python3 app.py
    sleepAfter: 1s
    healthEndpoint: http://localhost:3000/healthz
    network:
      paths:
        - port: 3000
          path: /sleeper
    env:
      VERSION: sleeper
"""


def test_a_long_request_on_a_replica_being_replaced_holds_up_no_other_service(
    app: Callable[[str], Installation],
) -> None:
    """The old replica of a rollout finishes its request in flight before it stops, however
    long that takes, and meanwhile the engine goes on: the new revision is reported, and a
    sleeping service of the same landscape wakes and answers."""
    installation = app("")
    folder = installation.folder
    (folder / "ci.yml").write_text(TWO_SERVICES.format(version=1))
    installation.up("--skip-tests")
    installation.wait_serving()

    def services() -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in installation.run_status()["services"]}

    eventually(lambda: services()["sleeper"]["asleep"], timeout=30, what="the sleeper to sleep")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.get, f"http://127.0.0.1:{installation.port}/slow", timeout=120)
        eventually((folder / "slow-started").exists, what="the slow request to start")
        (folder / "ci.yml").write_text(TWO_SERVICES.format(version=2))
        assert installation.api("/workspaces/1/landscape/deploy", "POST").status_code == 200

        def rolled_out() -> bool:
            status = services()["app"]
            instances = status["instances"]
            return len(instances) == 1 and instances[0]["revision"] == status["revision"]

        eventually(rolled_out, what="the new revision alone to be reported")
        assert installation.get("/").json()["version"] == "2"
        woken = installation.get("/sleeper")
        assert woken.status_code == 200
        assert woken.json()["version"] == "sleeper"
        assert not slow.done(), "the slow request ended before the test let it"
        (folder / "slow-release").touch()
        answer = slow.result(timeout=60)
    assert answer.status_code == 200
    assert answer.json()["version"] == "1"  # the old replica finished it
    assert installation.kill(signal.SIGINT) == 0
    installation.assert_nothing_left()
