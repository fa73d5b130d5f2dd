"""``terrace env``: a workspace's env vars (plain configuration; secrets go in the vault)."""

from __future__ import annotations

from typing import Annotated

import typer

from terrace.cli.common import ApiOption, JsonOption, WorkspaceOption, connect, show
from terrace.cli.output import say

__all__ = ["app"]

app = typer.Typer(
    help="A workspace's env vars. For secrets use `terrace vault`.", no_args_is_help=True
)

ENV_FIELDS = [("NAME", "name"), ("VALUE", "value")]


def _assignment(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise typer.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="NAME=VALUE")
    return name, value


@app.command("list")
def list_env(
    workspace: WorkspaceOption = None, api: ApiOption = None, as_json: JsonOption = False
) -> None:
    """List the workspace's env vars and their values."""
    with connect(api) as session:
        rows = session.api.get(f"/workspaces/{session.workspace(workspace)}/env-vars")
    show(rows, as_json, ENV_FIELDS, empty="No env vars.")


@app.command("set")
def set_env(
    assignments: Annotated[
        list[str], typer.Argument(help="NAME=VALUE pairs.", metavar="NAME=VALUE")
    ],
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create or replace env vars; the others stay."""
    pairs = [_assignment(text) for text in assignments]
    with connect(api) as session:
        wid = session.workspace(workspace)
        body = [{"name": name, "value": value} for name, value in pairs]
        session.api.put(f"/workspaces/{wid}/env-vars", body)
    if not as_json:
        say(f"Set {', '.join(name for name, _ in pairs)} in workspace {wid}.")


@app.command("rm")
def remove(
    names: Annotated[list[str], typer.Argument(help="The names to delete.", metavar="NAME")],
    workspace: WorkspaceOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete env vars (names that are not set are ignored)."""
    with connect(api) as session:
        wid = session.workspace(workspace)
        session.api.delete(f"/workspaces/{wid}/env-vars", names)
    if not as_json:
        say(f"Removed {', '.join(names)} from workspace {wid}.")
