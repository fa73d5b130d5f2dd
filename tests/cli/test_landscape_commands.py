"""``terrace landscape`` end to end: deploy, status, scale, logs, stages and teardown against the
session's ``terrace server``, whose engine runs the replicas on this machine."""

from __future__ import annotations

import json
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Cli, Person, new_team, new_user
from tests.conftest import EXAMPLES, ROOT
from tests.support.live import LiveServer
from tests.support.up import eventually


@dataclass
class Landscape:
    """A copy of examples/01-hello as a local workspace, and a team admin's CLI environment."""

    folder: Path
    workspace: int
    team: int
    owner: Person
    env: dict[str, str]


def _teardown(live: LiveServer, workspace: int) -> None:
    with live.client(live.admin_key) as admin:
        admin.delete(f"/workspaces/{workspace}/landscape/teardown").raise_for_status()


@pytest.fixture
def hello(live: LiveServer, tmp_path: Path) -> Iterator[Landscape]:
    folder = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "01-hello", folder)
    owner = new_user(live)
    team = new_team(live, owner)
    with live.client(live.admin_key) as admin:  # a server folder: cluster admins only
        made = admin.post(
            "/workspaces", json={"teamId": team, "name": "hello", "path": str(folder)}
        )
        made.raise_for_status()
        workspace: int = made.json()["id"]
    env = {
        "TERRACE_API": live.url,
        "TERRACE_API_KEY": owner.key,
        "TERRACE_WORKSPACE": str(workspace),
    }
    yield Landscape(folder, workspace, team, owner, env)
    _teardown(live, workspace)


def _status(cli: Cli, hello: Landscape) -> dict[str, Any]:
    found: dict[str, Any] = cli("landscape", "status", "--json", **hello.env).json()
    return found


def _service(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["services"] if s["name"] == name)


def _rows(table: str) -> list[list[str]]:
    """The body rows of the Rich tables in ``table``, as their cells."""
    return [[c.strip() for c in line.split("│")] for line in table.splitlines() if "│" in line]


def _set_prepare(hello: Landscape, steps: str) -> None:
    ci = hello.folder / "ci.yml"
    text = ci.read_text()
    assert "prepare:\n  steps: []\n" in text
    ci.write_text(text.replace("prepare:\n  steps: []\n", "prepare:\n  steps:\n" + steps))


def test_deploy_waits_until_web_is_healthy_and_status_shows_it(cli: Cli, hello: Landscape) -> None:
    deployed = cli("landscape", "deploy", "--wait", **hello.env)
    assert deployed.returncode == 0, deployed.output
    lines = deployed.stdout.splitlines()
    assert lines[0].startswith(f"Deployed ci.yml to workspace {hello.workspace}: deployment ")
    assert "Services: web" in lines
    assert "Routes: /" in lines
    assert "web: 1/1 healthy" in lines
    assert _rows(deployed.stdout) == [["web", "0", "healthy", "0", "-"]], deployed.stdout
    assert "WARNING" not in deployed.stderr  # root with bubblewrap: sandboxed

    status = cli("landscape", "status", **hello.env)
    assert status.returncode == 0, status.output
    assert status.stdout.startswith(f"The landscape of workspace {hello.workspace} is deployed.\n")
    assert re.search(r"^SERVICE ┃ REPLICA ┃ STATE +┃ RESTARTS ┃ LAST EXIT *$", status.stdout, re.M)
    assert _rows(status.stdout) == [["web", "0", "healthy", "0", "-"]], status.stdout
    assert "web: 1/1 healthy" in status.stdout.splitlines()
    parsed = _status(cli, hello)
    assert (parsed["state"], parsed["sandboxed"]) == ("deployed", True)
    assert (_service(parsed, "web")["healthy"], _service(parsed, "web")["replicas"]) == (1, 1)

    as_json = cli("landscape", "deploy", "--json", **hello.env).json()
    assert (as_json["file"], as_json["services"], as_json["routes"]) == ("ci.yml", ["web"], ["/"])


def test_scale_web_to_two_healthy_replicas(cli: Cli, hello: Landscape) -> None:
    assert cli("landscape", "deploy", "--wait", **hello.env).returncode == 0
    scaled = cli("landscape", "scale", "web=2", **hello.env)
    assert scaled.returncode == 0, scaled.output
    assert scaled.stdout == f"Scaled web=2 in workspace {hello.workspace}.\n"
    assert cli("landscape", "scale", "web=2", "--json", **hello.env).json() == {"web": 2}

    def two_healthy() -> bool:
        web = _service(_status(cli, hello), "web")
        return (web["replicas"], web["healthy"]) == (2, 2)

    eventually(two_healthy, timeout=60, what="two healthy web replicas")
    status = cli("landscape", "status", **hello.env)
    assert "web: 2/2 healthy" in status.stdout.splitlines()
    assert [row[:3] for row in _rows(status.stdout)] == [
        ["web", "0", "healthy"],
        ["web", "1", "healthy"],
    ], status.stdout


def test_logs_of_a_replica_and_following_them(cli: Cli, hello: Landscape) -> None:
    assert cli("landscape", "deploy", "--wait", **hello.env).returncode == 0
    shown = cli("landscape", "logs", "web", "--replica", "0", **hello.env)
    assert shown.returncode == 0, shown.output
    assert re.search(r"^--- \S+ web\[0\] starting: revision ", shown.stdout, re.M), shown.stdout
    # The engine's health checks are requests: the server logs them once it is healthy.
    eventually(
        lambda: (
            '"GET /healthz HTTP/1.1" 200' in cli("landscape", "logs", "web", **hello.env).stdout
        ),
        timeout=30,
        what="a logged health check",
    )

    with subprocess.Popen(
        [sys.executable, "-m", "terrace", "landscape", "logs", "web", "--follow"],
        cwd=ROOT,
        env={**cli.env, **hello.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as follower:
        try:
            seen = _read_until(follower, lambda out: b"web[0] starting" in out)
            # What the replica writes once the stream runs arrives too: the next health check.
            before = seen.count(b"GET /healthz")
            _read_until(follower, lambda out: out.count(b"GET /healthz") > before, seen)
        finally:
            follower.send_signal(signal.SIGINT)
            code = follower.wait(timeout=30)
        assert follower.stderr is not None
        errors = follower.stderr.read()
    assert code == 130, errors
    assert b"Traceback" not in errors


def _read_until(
    process: subprocess.Popen[bytes], done: Callable[[bytes], bool], seen: bytes = b""
) -> bytes:
    """Read ``process``'s output until ``done`` with everything so far (30 s at most)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while not done(seen):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; the output so far: {seen!r}"
            if selector.select(left):
                chunk = process.stdout.read1(65536)  # type: ignore[attr-defined]
                assert chunk, f"the stream ended early; the output: {seen!r}"
                seen += chunk
    return seen


def test_stages_run_their_steps_and_show_their_output(cli: Cli, hello: Landscape) -> None:
    prepare = cli("landscape", "stage", "prepare", "--wait", **hello.env)
    assert prepare.returncode == 0, prepare.output
    assert "prepare: success" in prepare.stdout.splitlines()

    tested = cli("landscape", "stage", "test", "--wait", **hello.env)
    assert tested.returncode == 0, tested.output
    assert "test: success" in tested.stdout.splitlines()
    [step] = _rows(tested.stdout)
    assert step[:4] == ["0", "unit tests", "success", "0"], tested.stdout
    assert step[4].startswith("python3 -m unittest discover")
    output = cli("landscape", "logs", "--stage", "test", "--step", "0", **hello.env)
    assert output.returncode == 0, output.output
    assert "OK" in output.stdout.splitlines()


def test_a_failing_prepare_step_is_named_with_its_exit_code(cli: Cli, hello: Landscape) -> None:
    _set_prepare(
        hello,
        "    - name: fine\n      command: echo all good\n"
        "    - name: migrate\n      command: echo 'no database' >&2; exit 3\n"
        "    - name: never\n      command: echo unreachable\n",
    )
    failed = cli("landscape", "stage", "prepare", "--wait", **hello.env)
    assert failed.returncode == 1, failed.output
    assert "prepare: failure" in failed.stdout.splitlines()
    assert [row[:4] for row in _rows(failed.stdout)] == [
        ["0", "fine", "success", "0"],
        ["1", "migrate", "failure", "3"],
        ["2", "never", "skipped", "-"],
    ], failed.stdout
    errors = failed.stderr.splitlines()
    assert errors[0] == "error: prepare failure: step 1 ('migrate') exited with status 3"
    assert "  | no database" in errors

    as_json = cli("landscape", "stage", "prepare", "--wait", "--json", **hello.env)
    assert as_json.returncode == 1
    assert [s["state"] for s in json.loads(as_json.stdout)["steps"]] == [
        "success",
        "failure",
        "skipped",
    ]


def test_a_running_stage_can_be_stopped(cli: Cli, hello: Landscape) -> None:
    _set_prepare(hello, "    - name: slow\n      command: sleep 60\n")
    started = cli("landscape", "stage", "prepare", **hello.env)
    assert started.returncode == 0, started.output
    assert "prepare: running" in started.stdout.splitlines()
    again = cli("landscape", "stage", "prepare", **hello.env)
    assert again.returncode == 1
    assert "already running" in again.stderr

    stopped = cli("landscape", "stage", "prepare", "--stop", "--wait", **hello.env)
    assert stopped.returncode == 0, stopped.output
    assert "prepare: aborted" in stopped.stdout.splitlines()
    not_running = cli("landscape", "stage", "prepare", "--stop", **hello.env)
    assert not_running.returncode == 1
    assert "the prepare stage is not running" in not_running.stderr


def test_an_undeployable_landscape_prints_the_located_problem(cli: Cli, hello: Landscape) -> None:
    ci = hello.folder / "ci.yml"
    ci.write_text(ci.read_text().replace("    replicas: 1\n", "    replicas: 1\n    plan: 999\n"))
    line = ci.read_text().splitlines().index("    plan: 999") + 1
    refused = cli("landscape", "deploy", "--wait", **hello.env)
    assert refused.returncode == 1
    assert refused.stdout == ""
    errors = refused.stderr.splitlines()
    assert errors[0].startswith("error: The landscape or provider file is invalid: 1 problem(s)")
    assert errors[1].startswith(
        f"ci.yml:{line}:11: error: plan 999 is not one of this installation's plans"
    ), errors
    assert errors[1].endswith(" (run.web.plan)")
    assert cli("landscape", "status", **hello.env).stdout == (
        f"The landscape of workspace {hello.workspace} is not deployed.\n"
    )


def test_bad_scale_syntax_is_a_usage_error(cli: Cli, hello: Landscape) -> None:
    for bad in ("web", "web=two", "=2", "web=-1"):
        result = cli("landscape", "scale", "api=1", bad, **hello.env)
        assert result.returncode == 2, (bad, result.output)
        assert f"{bad!r} is not SERVICE=N" in result.stderr
    unknown = cli("landscape", "scale", "nope=1", **hello.env)
    assert unknown.returncode == 1
    assert "not deployed" in unknown.stderr


def test_teardown_stops_the_landscape(cli: Cli, hello: Landscape) -> None:
    assert cli("landscape", "deploy", "--wait", **hello.env).returncode == 0
    unconfirmed = cli("landscape", "teardown", **hello.env)
    assert unconfirmed.returncode == 2
    assert "pass --yes" in unconfirmed.stderr
    assert _status(cli, hello)["state"] == "deployed"

    down = cli("landscape", "teardown", "--yes", **hello.env)
    assert down.returncode == 0, down.output
    assert down.stdout == f"Tore down the landscape of workspace {hello.workspace}.\n"
    status = cli("landscape", "status", **hello.env)
    assert status.stdout == f"The landscape of workspace {hello.workspace} is not deployed.\n"
    assert cli("landscape", "teardown", "--yes", **hello.env).returncode == 0  # idempotent


def test_a_viewer_cannot_deploy(live: LiveServer, cli: Cli, hello: Landscape) -> None:
    viewer = new_user(live)
    with live.client(hello.owner.key) as owner:
        owner.post(
            f"/teams/{hello.team}/members", json={"userId": viewer.id, "role": "viewer"}
        ).raise_for_status()
    env = {**hello.env, "TERRACE_API_KEY": viewer.key}
    refused = cli("landscape", "deploy", **env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: Your role does not allow this: "), refused.stderr
    assert cli("landscape", "status", **env).returncode == 0  # viewers may look
    assert cli("landscape", "teardown", "--yes", **env).returncode == 1
