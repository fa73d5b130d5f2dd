"""``terrace vault``: team and workspace secrets, and the vault's data keys.

Values go in and never come out: nothing here prints one, and the API never returns one.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from terrace.cli.common import (
    ApiOption,
    JsonOption,
    Session,
    TeamOption,
    connect,
    read_secret,
    show,
)
from terrace.cli.output import say

__all__ = ["app"]

app = typer.Typer(
    help="Secrets: a team's, or with -w a workspace's (which override the team's).",
    no_args_is_help=True,
)

SECRET_FIELDS = [
    ("NAME", "name"),
    ("WORKSPACE", "workspaceId"),
    ("CREATED", "createdAt"),
    ("UPDATED", "updatedAt"),
]
VAULT_KEY_FIELDS = [
    ("ID", "id"),
    ("PRIMARY", "primary"),
    ("SECRETS", "secrets"),
    ("CREATED", "createdAt"),
    ("RETIRED", "retiredAt"),
]
ScopeWorkspace = Annotated[
    int | None,
    typer.Option(
        "--workspace",
        "-w",
        min=1,
        help="Use this workspace's secrets instead of the team's.",
        show_default=False,
    ),
]
SecretName = Annotated[
    str, typer.Argument(metavar="NAME", help="The secret's name, e.g. DB_PASSWORD.")
]


def _secrets_path(session: Session, team: int | None, workspace: int | None) -> tuple[str, str]:
    """The collection's API path, and how to name it to people."""
    if workspace is None:
        team_id = session.team(team)
        return f"/vault/teams/{team_id}/secrets", f"team {team_id}"
    team_id = team or session.api.get(f"/workspaces/{workspace}")["teamId"]
    return f"/vault/teams/{team_id}/workspaces/{workspace}/secrets", f"workspace {workspace}"


@app.command("list")
def list_secrets(
    team: TeamOption = None,
    workspace: ScopeWorkspace = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """List secret names (never values)."""
    with connect(api) as session:
        path, _ = _secrets_path(session, team, workspace)
        rows = session.api.get(path)
    show(rows, as_json, SECRET_FIELDS, empty="No secrets.")


@app.command("set")
def set_secret(
    name: SecretName,
    *,
    value: Annotated[
        str | None,
        typer.Option(
            "--value",
            help="The value (visible in your shell history). Default: read from stdin when it "
            "is not a terminal, else asked for hidden.",
            show_default=False,
        ),
    ] = None,
    team: TeamOption = None,
    workspace: ScopeWorkspace = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create or replace a secret."""
    with connect(api) as session:
        path, scope = _secrets_path(session, team, workspace)
        secret = value if value is not None else read_secret("Value", confirmation=True)
        info = session.api.put(f"{path}/{quote(name, safe='')}", {"value": secret})
    if as_json:
        show(info, True, SECRET_FIELDS)
    else:
        say(f"Stored {name} in the vault of {scope}.")


@app.command("rm")
def remove(
    name: SecretName,
    team: TeamOption = None,
    workspace: ScopeWorkspace = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a secret."""
    with connect(api) as session:
        path, scope = _secrets_path(session, team, workspace)
        session.api.delete(f"{path}/{quote(name, safe='')}")
    if not as_json:
        say(f"Deleted {name} from the vault of {scope}.")


@app.command("rotate-key")
def rotate_key(api: ApiOption = None, as_json: JsonOption = False) -> None:
    """Add a data key and re-seal every secret with it (cluster admins)."""
    with connect(api) as session:
        key = session.api.post("/vault/keys/rotate")
    if as_json:
        show(key, True, VAULT_KEY_FIELDS)
    else:
        say(f"Data key {key['id']} is now primary; it seals all {key['secrets']} secrets.")


@app.command("keys")
def list_keys(api: ApiOption = None, as_json: JsonOption = False) -> None:
    """List the vault's data keys (cluster admins)."""
    with connect(api) as session:
        rows = session.api.get("/vault/keys")
    show(rows, as_json, VAULT_KEY_FIELDS, empty="No data keys yet.")


@app.command("retire-key")
def retire_key(
    key_id: Annotated[
        int, typer.Argument(min=1, metavar="KEY_ID", help="The data key's ID (see `vault keys`).")
    ],
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase an old data key that seals no secret any more (cluster admins)."""
    with connect(api) as session:
        key = session.api.post(f"/vault/keys/{key_id}/retire")
    show(key, as_json, VAULT_KEY_FIELDS)
