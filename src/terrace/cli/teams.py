"""``terrace teams``: teams, their members, and the default team."""

from __future__ import annotations

from typing import Annotated

import typer

from terrace.cli.common import (
    ApiOption,
    JsonOption,
    TeamOption,
    YesOption,
    confirm,
    connect,
    show,
)
from terrace.cli.config import save_config
from terrace.cli.output import say
from terrace.store.roles import Role

__all__ = ["app"]

app = typer.Typer(help="Teams and their members.", no_args_is_help=True)
members = typer.Typer(help="A team's members and their roles.", no_args_is_help=True)
app.add_typer(members, name="members")

TEAM_FIELDS = [("ID", "id"), ("NAME", "name"), ("YOUR ROLE", "role"), ("CREATED", "createdAt")]
MEMBER_FIELDS = [
    ("USER", "userId"),
    ("NAME", "name"),
    ("EMAIL", "email"),
    ("ROLE", "role"),
    ("SINCE", "createdAt"),
]
TeamId = Annotated[
    int, typer.Argument(min=1, metavar="TEAM_ID", help="The team's ID (see `terrace teams list`).")
]
UserId = Annotated[int, typer.Argument(min=1, metavar="USER_ID", help="The member's user ID.")]


@app.command("list")
def list_teams(api: ApiOption = None, as_json: JsonOption = False) -> None:
    """List your teams (a cluster admin sees every team)."""
    with connect(api) as session:
        teams = session.api.get("/teams")
    show(teams, as_json, TEAM_FIELDS, empty="No teams. Create one with `terrace teams create`.")


@app.command()
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The team's name.")],
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a team; you become its admin."""
    with connect(api) as session:
        team = session.api.post("/teams", {"name": name})
    show(team, as_json, TEAM_FIELDS)


@app.command()
def get(
    team_id: Annotated[
        int | None,
        typer.Argument(
            min=1, metavar="TEAM_ID", help="The team's ID.", show_default="-t or the default team"
        ),
    ] = None,
    team: TeamOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a team."""
    with connect(api) as session:
        found = session.api.get(f"/teams/{session.team(team_id or team)}")
    show(found, as_json, TEAM_FIELDS)


@app.command()
def delete(
    team_id: TeamId, yes: YesOption = False, api: ApiOption = None, as_json: JsonOption = False
) -> None:
    """Delete a team with all its workspaces and secrets (team admins)."""
    with connect(api) as session:
        confirm(f"Delete team {team_id}, its workspaces and its secrets?", yes)
        session.api.delete(f"/teams/{team_id}")
        if session.config.team == team_id:
            session.config.team = session.config.workspace = None
            save_config(session.config)
    if not as_json:
        say(f"Deleted team {team_id}.")


@app.command()
def use(team_id: TeamId, api: ApiOption = None, as_json: JsonOption = False) -> None:
    """Make a team the default for -t/--team (saved in the config file)."""
    with connect(api) as session:
        team = session.api.get(f"/teams/{team_id}")
        if session.config.team != team_id:
            session.config.workspace = None
        session.config.team = team_id
        path = save_config(session.config)
    if as_json:
        show(team, True, TEAM_FIELDS)
    else:
        say(f"Default team: {team_id} ({team['name']}), saved in {path}.")


@members.command("list")
def list_members(
    team: TeamOption = None, api: ApiOption = None, as_json: JsonOption = False
) -> None:
    """List the team's members and their roles."""
    with connect(api) as session:
        rows = session.api.get(f"/teams/{session.team(team)}/members")
    show(rows, as_json, MEMBER_FIELDS, empty="No members.")


@members.command()
def add(
    *,
    user_id: Annotated[
        int | None, typer.Option("--user-id", min=1, help="The user's ID.", show_default=False)
    ] = None,
    email: Annotated[
        str | None, typer.Option("--email", "-e", help="The user's email.", show_default=False)
    ] = None,
    role: Annotated[Role, typer.Option(help="Their role in the team.")] = Role.DEVELOPER,
    team: TeamOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a user to the team, by --user-id or --email (team admins)."""
    if (user_id is None) == (email is None):
        raise typer.BadParameter("give exactly one of --user-id and --email")
    with connect(api) as session:
        body = {"userId": user_id} if user_id is not None else {"email": email}
        member = session.api.post(
            f"/teams/{session.team(team)}/members", {**body, "role": role.value}
        )
    show(member, as_json, MEMBER_FIELDS)


@members.command("set-role")
def set_role(
    user_id: UserId,
    role: Annotated[
        Role, typer.Argument(metavar="ROLE", help="The new role: viewer, developer or admin.")
    ],
    team: TeamOption = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a member's role (team admins)."""
    with connect(api) as session:
        path = f"/teams/{session.team(team)}/members/{user_id}"
        member = session.api.patch(path, {"role": role.value})
    show(member, as_json, MEMBER_FIELDS)


@members.command("rm")
def remove(
    user_id: UserId, team: TeamOption = None, api: ApiOption = None, as_json: JsonOption = False
) -> None:
    """Remove a member from the team (team admins; anyone may remove themselves)."""
    with connect(api) as session:
        team_id = session.team(team)
        session.api.delete(f"/teams/{team_id}/members/{user_id}")
    if not as_json:
        say(f"Removed user {user_id} from team {team_id}.")
