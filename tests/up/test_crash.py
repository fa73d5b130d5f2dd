"""Crash safety: ``terrace up`` killed with SIGKILL at several points of a deploy, started
again, converges to exactly the desired replicas, with no duplicate and no stray process."""

from __future__ import annotations

import signal
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.up import Installation, eventually

SERVER = '''\
"""Waits for the file `go-serve` before listening (so a test can catch it starting)."""
import json, os, sys, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[1]
while not os.path.exists("go-serve"):
    time.sleep(0.02)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = {"ok": True}
        elif os.environ.get("BACKEND"):
            with urllib.request.urlopen(os.environ["BACKEND"] + "/who", timeout=5) as r:
                body = {"me": os.environ["HOSTNAME"], "back": json.load(r)}
        else:
            body = {"me": os.environ["HOSTNAME"]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", 3000), Handler).serve_forever()
'''

LANDSCAPE = """\
schemaVersion: v0.2
prepare:
  steps:
    - name: wait for the test
      command: while [ ! -f go-prepare ]; do sleep 0.02; done; echo done > prepared.txt
run:
  front:
    steps:
      - command: exec python3 server.py front
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
      BACKEND: http://back:3000
  back:
    steps:
      - command: exec python3 server.py back
    replicas: 1
    healthEndpoint: http://localhost:3000/healthz
"""

DESIRED = {"front": 2, "back": 1}


def _replicas(site: Installation) -> dict[str, list[dict[str, Any]]]:
    status = site.run_status()
    if status["state"] != "deployed":
        return {}
    return {s["name"]: s["instances"] for s in status["services"]}


def _converged(site: Installation) -> dict[str, list[dict[str, Any]]] | None:
    found = _replicas(site)
    for name, count in DESIRED.items():
        instances = found.get(name, [])
        if sorted(i["slot"] for i in instances) != list(range(count)):
            return None  # missing, or a duplicate of a slot
        if any(i["state"] != "healthy" for i in instances):
            return None
    return found


def _assert_exactly_desired(site: Installation) -> None:
    """What runs is what is desired: one cgroup and one namespace per replica (plus the
    landscape's, and at most one spare: a stopped replica's, kept for the next), each with
    live processes; nothing else of this installation."""
    replicas = sum(DESIRED.values())
    assert len(site.cgroups()) == replicas, site.cgroups()
    assert len(site.namespaces()) in (replicas + 1, replicas + 2), site.namespaces()
    assert len(list((site.home / "run" / "replicas").glob("*.json"))) == replicas


def test_sigkill_at_every_stage_of_a_deploy_converges(
    installation: Callable[[Path], Installation], tmp_path: Path
) -> None:
    folder = tmp_path / "crashy"
    folder.mkdir()
    (folder / "ci.yml").write_text(LANDSCAPE)
    (folder / "server.py").write_text(textwrap.dedent(SERVER))
    site = installation(folder)

    # 1. Killed while prepare runs: its step's process outlives the engine...
    site.up("--skip-tests")
    eventually(
        lambda: site.api("/workspaces/1/pipeline/prepare").json()["state"] == "running",
        what="prepare to run",
    )
    eventually(site.processes, what="the prepare step's process")
    site.kill()
    assert site.processes(), "the prepare step should have outlived the killed engine"

    # 2. ...and is stopped by the next start, which gets as far as starting replicas: killed
    # as soon as the first one exists (the others may not have started yet).
    (site.folder / "go-prepare").touch()
    site.up("--skip-tests")
    eventually(lambda: any(_replicas(site).values()), what="a first replica")
    site.kill()

    # 3. Killed while every replica is starting (none can be healthy: no go-serve yet).
    site.up("--skip-tests")
    eventually(lambda: sum(len(i) for i in _replicas(site).values()) == 3, what="three replicas")
    states = {i["state"] for instances in _replicas(site).values() for i in instances}
    assert states == {"starting"}
    site.kill()

    # 4. Started again with the replicas able to serve: converges, no duplicates, no strays.
    (site.folder / "go-serve").touch()
    site.up("--skip-tests")
    site.wait_serving()
    converged = eventually(lambda: _converged(site), what="convergence")
    _assert_exactly_desired(site)
    answer = site.get("/").json()
    assert answer["back"]["me"] == "ws-server-1-back-0"
    assert answer["me"] in {"ws-server-1-front-0", "ws-server-1-front-1"}
    before = {(n, i["slot"]): i["startedAt"] for n, ins in converged.items() for i in ins}

    # 5. Killed when all is healthy: the next start adopts the running replicas, restarting none.
    site.kill()
    site.up("--skip-tests")
    site.wait_serving()
    adopted = eventually(lambda: _converged(site), what="convergence after adoption")
    after = {(n, i["slot"]): i["startedAt"] for n, ins in adopted.items() for i in ins}
    assert after == before
    _assert_exactly_desired(site)
    assert site.get("/").json()["back"]["me"] == "ws-server-1-back-0"

    # Ctrl-C stops everything.
    assert site.kill(signal.SIGINT) == 0
    site.assert_nothing_left()
