"""``terrace workspaces``: a team's workspaces, the default one, and its landscape."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from terrace.cli.client import UsageProblem
from terrace.cli.common import (
    ApiOption,
    JsonOption,
    TeamOption,
    WorkspaceOption,
    YesOption,
    confirm,
    connect,
    show,
)
from terrace.cli.config import save_config
from terrace.cli.output import print_table, say

__all__ = ["app"]

app = typer.Typer(
    help="Workspaces: a landscape's source, from git or a server folder.", no_args_is_help=True
)

CREATE_TIMEOUT = 600.0  # seconds: the server clones the repository before it answers

WORKSPACE_FIELDS = [
    ("ID", "id"),
    ("TEAM", "teamId"),
    ("NAME", "name"),
    ("SOURCE", "source"),
    ("GIT URL", "gitUrl"),
    ("REF", "gitRef"),
    ("COMMIT", "commit"),
    ("PATH", "path"),
    ("CREATED", "createdAt"),
]
LIST_FIELDS = [("ID", "id"), ("NAME", "name"), ("SOURCE", "source"), ("FROM", "from")]
SERVICE_FIELDS = [("SERVICE", "name"), ("KIND", "kind"), ("REPLICAS", "replicas"), ("PLAN", "plan")]
OptionalId = Annotated[
    int | None,
    typer.Argument(
        min=1,
        metavar="WORKSPACE_ID",
        help="The workspace's ID.",
        show_default="-w or the default workspace",
    ),
]


@app.command("list")
def list_workspaces(
    team: TeamOption = None, api: ApiOption = None, as_json: JsonOption = False
) -> None:
    """List the team's workspaces."""
    with connect(api) as session:
        rows = session.api.get(f"/workspaces/team/{session.team(team)}")
    if as_json:
        show(rows, True, LIST_FIELDS)
        return
    for row in rows:
        ref = f"@{row['gitRef']}" if row.get("gitRef") else ""
        row["from"] = f"{row['gitUrl']}{ref}" if row["source"] == "git" else row.get("path")
    print_table(
        rows, LIST_FIELDS, empty="No workspaces. Create one with `terrace workspaces create`."
    )


@app.command()
def create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The workspace's name, unique in its team.")
    ],
    *,
    git: Annotated[
        str | None, typer.Option("--git", help="A git repository URL to clone.", show_default=False)
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option("--ref", help="The branch, tag or commit.", show_default="the default branch"),
    ] = None,
    path: Annotated[
        Path | None,
        typer.Option(
            "--path",
            help="A folder on the server, used in place (cluster admins).",
            show_default=False,
        ),
    ] = None,
    team: TeamOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a workspace from --git URL [--ref REF] or from a server folder --path DIR."""
    with connect(api) as session:
        if (git is None) == (path is None):
            raise UsageProblem("give exactly one of --git and --path")
        if path is not None and ref is not None:
            raise UsageProblem("--ref goes with --git, not with --path")
        body: dict[str, Any] = {"teamId": session.team(team), "name": name}
        if git is not None:
            body.update(gitUrl=git, **({"gitRef": ref} if ref else {}))
        else:
            assert path is not None
            body["path"] = str(path.expanduser().resolve())
        workspace = session.api.post("/workspaces", body, timeout=CREATE_TIMEOUT)
    show(workspace, as_json, WORKSPACE_FIELDS)


@app.command()
def get(
    workspace_id: OptionalId = None,
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a workspace."""
    with connect(api) as session:
        found = session.api.get(f"/workspaces/{session.workspace(workspace_id or workspace)}")
    show(found, as_json, WORKSPACE_FIELDS)


@app.command()
def delete(
    workspace_id: Annotated[
        int, typer.Argument(min=1, metavar="WORKSPACE_ID", help="The workspace's ID.")
    ],
    yes: YesOption = False,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a workspace, its env vars and secrets (a git clone's files too)."""
    with connect(api) as session:
        confirm(f"Delete workspace {workspace_id}?", yes)
        session.api.delete(f"/workspaces/{workspace_id}")
        if session.config.workspace == workspace_id:
            session.config.workspace = None
            save_config(session.config)
    if not as_json:
        say(f"Deleted workspace {workspace_id}.")


@app.command()
def use(
    workspace_id: Annotated[
        int, typer.Argument(min=1, metavar="WORKSPACE_ID", help="The workspace's ID.")
    ],
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a workspace (and its team) the default for -w and -t (saved in the config file)."""
    with connect(api) as session:
        found = session.api.get(f"/workspaces/{workspace_id}")
        session.config.workspace, session.config.team = workspace_id, found["teamId"]
        saved = save_config(session.config)
    if as_json:
        show(found, True, WORKSPACE_FIELDS)
    else:
        say(
            f"Default workspace: {workspace_id} ({found['name']}) in team {found['teamId']}, "
            f"saved in {saved}."
        )


@app.command()
def landscape(
    workspace_id: OptionalId = None,
    profile: Annotated[
        str | None,
        typer.Option("--profile", "-p", help="Read ci.<profile>.yml.", show_default="ci.yml"),
    ] = None,
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Read and check the workspace's landscape: its services, managed services and secrets."""
    with connect(api) as session:
        wid = session.workspace(workspace_id or workspace)
        params = {"profile": profile} if profile else None
        found = session.api.get(f"/workspaces/{wid}/landscape", params=params)
    if as_json:
        show(found, True, [])
        return
    profile_note = f", profile {found['profile']}" if found.get("profile") else ""
    say(f"{found['file']}: schema {found['schemaVersion']}{profile_note}")
    print_table(found["services"], SERVICE_FIELDS, empty="No services.")
    say(f"Managed services: {', '.join(found['managedServices']) or '-'}")
    say(f"Vault secrets: {', '.join(found['vaultSecrets']) or '-'}")
    for warning in found.get("warnings") or []:
        where = f" ({warning['path']})" if warning.get("path") else ""
        say(
            f"{warning.get('file', found['file'])}:{warning.get('line')}:{warning.get('column')}: "
            f"warning: {warning.get('message')}{where}"
        )
