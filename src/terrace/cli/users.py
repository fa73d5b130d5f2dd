"""``terrace users``: who you are, and (for cluster admins) everyone and onboarding."""

from __future__ import annotations

from typing import Annotated

import typer

from terrace.cli.common import ApiOption, JsonOption, connect, show
from terrace.cli.keys import print_new_key
from terrace.cli.output import print_json

__all__ = ["USER_FIELDS", "app"]

app = typer.Typer(help="Users: yourself, and everyone for cluster admins.", no_args_is_help=True)

USER_FIELDS = [
    ("ID", "id"),
    ("NAME", "name"),
    ("EMAIL", "email"),
    ("CLUSTER ADMIN", "clusterAdmin"),
    ("CREATED", "createdAt"),
]


@app.command()
def me(api: ApiOption = None, as_json: JsonOption = False) -> None:
    """Show the user the API key belongs to."""
    with connect(api) as session:
        user = session.api.get("/users/me")
    show(user, as_json, USER_FIELDS)


@app.command("list")
def list_users(api: ApiOption = None, as_json: JsonOption = False) -> None:
    """List every user (cluster admins)."""
    with connect(api) as session:
        users = session.api.get("/users")
    show(users, as_json, USER_FIELDS, empty="No users.")


@app.command()
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user's name.")],
    *,
    email: Annotated[str, typer.Option("--email", "-e", help="Their email address.")],
    cluster_admin: Annotated[
        bool, typer.Option("--cluster-admin", help="Make them a cluster admin.")
    ] = False,
    key_name: Annotated[str, typer.Option(help="The name of the API key issued to them.")] = (
        "first key"
    ),
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a user and an API key for them (cluster admins); the key is shown only once."""
    with connect(api) as session:
        body = {"name": name, "email": email, "clusterAdmin": cluster_admin}
        user = session.api.post("/users", body)
        key = session.api.post("/keys", {"name": key_name, "userId": user["id"]})
    if as_json:
        print_json({"user": user, "key": key})
        return
    show(user, False, USER_FIELDS)
    print_new_key(key)
