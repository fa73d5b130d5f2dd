"""``terrace landscape``: deploy, scale and tear down a workspace's landscape, run its
``prepare`` and ``test`` stages, and read the output of its steps and replicas.

Waiting (``--wait``) polls the API every 0.2 s until a deadline; nothing here sleeps blindly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console

from terrace.cli.client import (
    ApiClient,
    CliError,
    RequestFailed,
    Target,
    UsageProblem,
)
from terrace.cli.common import (
    ApiOption,
    JsonOption,
    Session,
    WorkspaceOption,
    YesOption,
    confirm,
    connect,
    handled,
)
from terrace.cli.output import print_json, print_table, say
from terrace.cli.terminal import printable
from terrace.spec.names import DNS_LABEL, PROFILE

__all__ = ["app"]

app = typer.Typer(
    help="Deploy, scale and tear down a workspace's landscape; run its stages; read its logs.",
    no_args_is_help=True,
)

POLL_INTERVAL = 0.2  # seconds between two status reads while waiting
LOG_TAIL_LINES = 20  # lines of a failed step's output shown with the error

REPLICA_FIELDS = [
    ("SERVICE", "service"),
    ("REPLICA", "slot"),
    ("STATE", "state"),
    ("RESTARTS", "restarts"),
    ("LAST EXIT", "lastExit"),
]
STEP_FIELDS = [
    ("STEP", "index"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("EXIT CODE", "exitCode"),
    ("COMMAND", "command"),
]


class JobStage(StrEnum):
    """The stages that run steps once (``run`` is the landscape: deploy, status, teardown)."""

    prepare = "prepare"
    test = "test"


ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile", "-p", help="Use ci.<profile>.yml.", show_default="ci.yml", metavar="PROFILE"
    ),
]
WaitTimeout = Annotated[
    float,
    typer.Option("--timeout", min=0.0, help="With --wait: give up after this many seconds."),
]


class Refused(CliError):
    """A failure with details: the first line gets ``error: ``, the others follow as they are."""

    def __init__(self, message: str, details: list[str]) -> None:
        super().__init__(message)
        self.details = details

    def lines(self) -> list[str]:
        return [str(self), *self.details]


class Undeployable(CliError):
    """The API's 422 for a landscape that cannot be deployed, each problem located in its file
    the way ``terrace validate`` prints it."""

    def __init__(self, failed: RequestFailed) -> None:
        super().__init__(str(failed))
        self.failed = failed

    def lines(self) -> list[str]:
        first, *_ = self.failed.lines()
        return [
            first,
            *(
                printable(
                    f"{p.file}:{p.line}:{p.column}: error: {p.message}"
                    + (f" ({p.path})" if p.path else "")
                )
                for p in self.failed.problems
            ),
        ]


# --- helpers -----------------------------------------------------------------------------------


def _profile(profile: str | None) -> str:
    """``/PROFILE`` for a path, or nothing: checked here, as it becomes part of the URL."""
    if profile is None:
        return ""
    if not PROFILE.fullmatch(profile) or len(profile) > 64:
        raise UsageProblem(
            f"--profile: {profile!r} is not a profile name (letters, digits, '-' and '_')"
        )
    return f"/{profile}"


def _scale_pair(text: str) -> tuple[str, int]:
    name, equals, count = text.partition("=")
    if not equals or not name or not (count.isascii() and count.isdigit()):
        raise typer.BadParameter(f"{text!r} is not SERVICE=N", param_hint="SERVICE=N")
    return name, int(count)


def _poll(
    fetch: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout: float
) -> tuple[dict[str, Any], bool]:
    """Read until ``done`` or the deadline: the last reading, and whether it was done."""
    deadline = time.monotonic() + timeout
    while True:
        status = fetch()
        if done(status):
            return status, True
        left = deadline - time.monotonic()
        if left <= 0:
            return status, False
        time.sleep(min(POLL_INTERVAL, left))


def _all_healthy(status: dict[str, Any]) -> bool:
    return status["state"] == "deployed" and all(
        s["healthy"] == s["replicas"] for s in status["services"]
    )


def _warn_unsandboxed(status: dict[str, Any]) -> None:
    if status.get("sandboxed") is False:
        Console(stderr=True, highlight=False).print(
            "[bold red]WARNING: this server runs replicas and steps WITHOUT a sandbox: "
            "as plain processes with the server's rights and no limits.[/]"
        )


def _print_run(status: dict[str, Any]) -> None:
    """The landscape's replicas as a table, then each service's healthy count."""
    _warn_unsandboxed(status)
    rows: list[dict[str, Any]] = []
    for service in status["services"]:
        rows += [{"service": service["name"], **i} for i in service["instances"]]
        if not service["instances"]:
            state = "asleep (the next request wakes it)" if service.get("asleep") else "no replica"
            rows.append({"service": service["name"], "state": state})
    print_table(rows, REPLICA_FIELDS, empty="No services that run replicas.")
    for service in status["services"]:
        say(f"{service['name']}: {service['healthy']}/{service['replicas']} healthy")
    if rollback := status.get("rollback"):
        say(f"Deployment {rollback['deployment']} was rolled back: {rollback['reason']}")
    if not status.get("engine", True):
        say("This API server runs no engine: replica states are known only to the engine's.")


def _not_healthy(status: dict[str, Any], timeout: float) -> Refused:
    details = []
    for service in status["services"]:
        if service["healthy"] == service["replicas"]:
            continue
        exits = "; ".join(
            f"replica {i['slot']} {i['state']}, last exit: {i.get('lastExit') or '-'}"
            for i in service["instances"]
        )
        details.append(
            f"{service['name']}: {service['healthy']}/{service['replicas']} healthy"
            + (f" ({exits})" if exits else "")
        )
    if status["state"] != "deployed":
        return Refused("the landscape is no longer deployed", details)
    return Refused(f"not every replica is healthy after {timeout:g} s", details)


def _failed_step(session: Session, wid: int, stage: str, status: dict[str, Any]) -> Refused:
    """Which step ended the stage, its exit status, and the end of its output."""
    steps = status["steps"]
    failed = next((s for s in steps if s["state"] in ("failure", "aborted")), None)
    if failed is None:
        return Refused(f"{stage} ended {status['state']}", [])
    how = (
        f"exited with status {failed['exitCode']}"
        if failed.get("exitCode") is not None
        else failed["state"]
    )
    message = f"{stage} {status['state']}: step {failed['index']} ({failed['name']!r}) {how}"
    tail: list[str] = []
    with suppress(CliError):
        text = session.api.text(f"/workspaces/{wid}/logs/{stage}/{failed['index']}")
        tail = [f"  | {line}" for line in text.splitlines()[-LOG_TAIL_LINES:]]
    return Refused(message, tail)


def _print_stage(status: dict[str, Any]) -> None:
    _warn_unsandboxed(status)
    profile = f" (profile {status['profile']})" if status.get("profile") else ""
    say(f"{status['stage']}{profile}: {status['state']}")
    if status["steps"]:
        print_table(status["steps"], STEP_FIELDS, empty="No steps.")


def _follow(target: Target, path: str) -> None:
    """Print the log and what is added to it until the server ends the stream (or Ctrl-C)."""
    with (
        ApiClient(target) as api,
        api.stream_text(path, params={"follow": "1"}) as chunks,
    ):
        held = ""  # a chunk's final "\r" waits: the next chunk may start with its "\n"
        for chunk in chunks:
            text, held = held + chunk, ""
            if text.endswith("\r"):
                text, held = text[:-1], "\r"
            if text:
                typer.echo(printable(text, multiline=True), nl=False)
        if held:
            typer.echo(printable(held, multiline=True), nl=False)


# --- commands ----------------------------------------------------------------------------------


@app.command()
def deploy(
    *,
    profile: ProfileOption = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until every replica of every service is healthy.")
    ] = False,
    timeout: WaitTimeout = 120.0,
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deploy the workspace's landscape; what runs keeps running if it cannot be deployed.

    With --json, the deployment as the API returns it (after the wait, with --wait).
    """
    with connect(api) as session:
        wid = session.workspace(workspace)
        try:
            deployed = session.api.post(f"/workspaces/{wid}/landscape/deploy{_profile(profile)}")
        except RequestFailed as exc:
            raise (Undeployable(exc) if exc.problems else exc) from None
        if not as_json:
            note = f", profile {deployed['profile']}" if deployed.get("profile") else ""
            what = f"{deployed['file']}{note}"
            say(f"Deployed {what} to workspace {wid}: deployment {deployed['id']}.")
            say(f"Services: {', '.join(deployed['services']) or '-'}")
            say(f"Routes: {', '.join(deployed['routes']) or '-'}")
        if wait:
            status, healthy = _wait_healthy(session, wid, timeout, quiet=as_json)
            if not as_json:
                _print_run(status)
            if not healthy:
                raise _not_healthy(status, timeout)
    if as_json:
        print_json(deployed)


def _wait_healthy(
    session: Session, wid: int, timeout: float, *, quiet: bool
) -> tuple[dict[str, Any], bool]:
    def fetch() -> dict[str, Any]:
        status: dict[str, Any] = session.api.get(f"/workspaces/{wid}/pipeline/run")
        if not status.get("engine", True):
            raise CliError(
                f"the API at {session.api.target.url} runs no engine, so it cannot tell when "
                "replicas are healthy; see `terrace landscape status` on the engine's server"
            )
        return status

    if not quiet:
        say(f"Waiting up to {timeout:g} s for every replica to be healthy...")
    return _poll(fetch, lambda s: _all_healthy(s) or s["state"] != "deployed", timeout)


@app.command()
def status(
    workspace: WorkspaceOption = None, api: ApiOption = None, as_json: JsonOption = False
) -> None:
    """Show the deployed landscape's replicas: state, restarts and why each last exited."""
    with connect(api) as session:
        wid = session.workspace(workspace)
        found = session.api.get(f"/workspaces/{wid}/pipeline/run")
    if as_json:
        print_json(found)
    elif found["state"] != "deployed":
        say(f"The landscape of workspace {wid} is not deployed.")
    else:
        profile = f" (profile {found['profile']})" if found.get("profile") else ""
        say(f"The landscape of workspace {wid} is deployed{profile}.")
        _print_run(found)


@app.command()
def scale(
    assignments: Annotated[
        list[str],
        typer.Argument(help="SERVICE=N pairs: N replicas of SERVICE.", metavar="SERVICE=N"),
    ],
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change how many replicas services of the deployed landscape run (until the next deploy)."""
    pairs = dict(_scale_pair(text) for text in assignments)
    with connect(api) as session:
        wid = session.workspace(workspace)
        overrides = session.api.patch(f"/workspaces/{wid}/landscape/scale", pairs)
    if as_json:
        print_json(overrides)
        return
    scaled = ", ".join(f"{name}={count}" for name, count in pairs.items())
    say(f"Scaled {scaled} in workspace {wid}.")


@app.command()
def teardown(
    yes: YesOption = False,
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop every replica of the landscape (nothing changes if it is not deployed)."""
    with connect(api) as session:
        wid = session.workspace(workspace)
        confirm(f"Tear down the landscape of workspace {wid}? Every replica stops.", yes)
        session.api.delete(f"/workspaces/{wid}/landscape/teardown")
    if not as_json:
        say(f"Tore down the landscape of workspace {wid}.")


@app.command()
def stage(
    name: Annotated[JobStage, typer.Argument(metavar="STAGE", help="prepare or test.")],
    *,
    profile: ProfileOption = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait until the stage ends; exit 1 unless it succeeded."),
    ] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the running stage.")] = False,
    timeout: WaitTimeout = 600.0,
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a stage (or --stop it); its steps run once each, in order, until one fails."""
    stage_name = name.value
    with connect(api) as session:
        if stop and profile is not None:
            raise UsageProblem("--profile goes with starting a stage, not with --stop")
        wid = session.workspace(workspace)
        base = f"/workspaces/{wid}/pipeline/{stage_name}"
        if stop:
            found: dict[str, Any] = session.api.post(f"{base}/stop")
        else:
            found = session.api.post(f"{base}/start{_profile(profile)}")
        if not as_json:
            action = "Stopping" if stop else "Started"
            say(f"{action} {stage_name} in workspace {wid}.")
        if wait:
            found, ended = _poll(
                lambda: session.api.get(base), lambda s: s["state"] != "running", timeout
            )
            if as_json:
                print_json(found)
            else:
                _print_stage(found)
            if not ended:
                running = [
                    f"step {s['index']} ({s['name']!r}) is running"
                    for s in found["steps"]
                    if s["state"] == "running"
                ]
                raise Refused(
                    f"{stage_name} is still running after {timeout:g} s; stop it with "
                    f"`terrace landscape stage {stage_name} --stop`",
                    running,
                )
            if found["state"] != "success" and not stop:
                raise _failed_step(session, wid, stage_name, found)
            return
    if as_json:
        print_json(found)
    else:
        _print_stage(found)


@app.command()
def logs(
    service: Annotated[
        str | None,
        typer.Argument(
            metavar="SERVICE", help="A service of the deployed landscape.", show_default=False
        ),
    ] = None,
    *,
    replica: Annotated[
        int, typer.Option("--replica", "-r", min=0, help="Which replica of SERVICE.")
    ] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output until Ctrl-C.")
    ] = False,
    job_stage: Annotated[
        JobStage | None,
        typer.Option("--stage", help="A step's output instead of a replica's.", show_default=False),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            "--step", min=0, help="With --stage: which step (0 is the first).", show_default="0"
        ),
    ] = None,
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
) -> None:
    """Print a replica's output (SERVICE [--replica N]) or a step's (--stage S [--step N]).

    The last MiB, control characters escaped; --follow keeps printing until Ctrl-C.
    """
    with connect(api) as session:
        if (service is None) == (job_stage is None):
            raise UsageProblem("give either SERVICE or --stage (with --step)")
        if job_stage is not None:
            if follow:
                raise UsageProblem("--follow goes with a SERVICE's replica, not with --stage")
            if replica:
                raise UsageProblem("--replica goes with SERVICE, not with --stage")
        elif step is not None:
            raise UsageProblem("--step goes with --stage")
        elif service is not None and not DNS_LABEL.fullmatch(service):
            raise UsageProblem(f"{service!r} is not a service name")
        wid = session.workspace(workspace)
        if job_stage is not None:
            path = f"/workspaces/{wid}/logs/{job_stage.value}/{step or 0}"
        else:
            path = f"/workspaces/{wid}/logs/run/{service}/replica/{replica}"
        target = session.api.target
        if not follow:
            text = session.api.text(path)
    if follow:
        try:
            with handled():
                _follow(target, path)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        return
    if text:
        shown = printable(text, multiline=True)
        typer.echo(shown, nl=not shown.endswith("\n"))
