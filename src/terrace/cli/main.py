"""The ``terrace`` command: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from terrace import __version__
from terrace.cli import env, keys, landscape, teams, users, vault, workspaces
from terrace.cli.login import login, logout
from terrace.cli.server import server
from terrace.cli.up import up
from terrace.cli.validate import validate

app = typer.Typer(
    name="terrace",
    help="Terrace: build, test, run, route and scale a whole landscape from one ci.yml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(validate)
app.command()(server)
app.command()(up)
app.command()(login)
app.command()(logout)
app.add_typer(users.app, name="users")
app.add_typer(teams.app, name="teams")
app.add_typer(keys.app, name="keys")
app.add_typer(workspaces.app, name="workspaces")
app.add_typer(env.app, name="env")
app.add_typer(vault.app, name="vault")
app.add_typer(landscape.app, name="landscape")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"terrace {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Terrace: build, test, run, route and scale a whole landscape from one ci.yml."""


def main() -> None:
    app()
