"""What every command that talks to the API shares: its options, its connection, its exits.

A command body runs inside :func:`connect` (or :func:`handled`): a :class:`CliError` raised there
prints ``error: ...`` on stderr and exits 1, or 2 for a usage problem.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from terrace.cli.client import ApiClient, CliError, UsageProblem
from terrace.cli.config import Config, default_team, default_workspace, load_config, resolve_target
from terrace.cli.output import Columns, print_error, print_json, print_record, print_table
from terrace.router.haproxy_config import DEFAULT_THREADS, MAX_THREADS

__all__ = [
    "ApiOption",
    "DomainOption",
    "JsonOption",
    "RouterOption",
    "Session",
    "TeamOption",
    "WorkspaceOption",
    "YesOption",
    "confirm",
    "connect",
    "handled",
    "read_secret",
    "show",
]

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api",
        "-a",
        help="The API URL. Default: TERRACE_API, then the config file, then a local server.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON response instead of a table.")
]
TeamOption = Annotated[
    int | None,
    typer.Option(
        "--team",
        "-t",
        min=1,
        help="Team ID. Default: TERRACE_TEAM, then `terrace teams use`.",
        show_default=False,
    ),
]
WorkspaceOption = Annotated[
    int | None,
    typer.Option(
        "--workspace",
        "-w",
        min=1,
        help="Workspace ID. Default: TERRACE_WORKSPACE, then `terrace workspaces use`.",
        show_default=False,
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
RouterOption = Annotated[
    str | None,
    typer.Option(
        "--router",
        help="The router's data plane: haproxy or builtin (default: haproxy when installed).",
        show_default=False,
    ),
]
RouterThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--router-threads",
        envvar="TERRACE_ROUTER_THREADS",
        min=1,
        max=MAX_THREADS,
        help=f"HAProxy's threads (default: {DEFAULT_THREADS}, which leaves the other cores to "
        "the apps; the builtin plane runs one).",
        show_default=False,
    ),
]
DomainOption = Annotated[
    str,
    typer.Option("--domain", envvar="TERRACE_DOMAIN", help="Landscapes' hosts end in this domain."),
]


@contextmanager
def handled() -> Iterator[None]:
    """Turn a :class:`CliError` into its message on stderr and its exit status."""
    try:
        yield
    except CliError as exc:
        print_error(exc)
        raise typer.Exit(exc.exit_code) from None


@dataclass(slots=True)
class Session:
    """A command's connection: the API client and the saved defaults."""

    api: ApiClient
    config: Config

    def team(self, flag: int | None) -> int:
        return default_team(flag, self.config)

    def workspace(self, flag: int | None) -> int:
        return default_workspace(flag, self.config)


@contextmanager
def connect(api: str | None) -> Iterator[Session]:
    """Resolve the API and its key, open a client, and report any failure inside the block."""
    with handled():
        config = load_config()
        target = resolve_target(api, config)
        if target.key is None:
            raise UsageProblem(
                f"no API key for {target.url}: run `terrace login -a {target.url}` "
                "or set TERRACE_API_KEY"
            )
        with ApiClient(target) as client:
            yield Session(client, config)


def show(data: Any, as_json: bool, columns: Columns, *, empty: str = "Nothing.") -> None:
    """A list as a table, an object as ``field value`` lines, or either as JSON."""
    if as_json:
        print_json(data)
    elif isinstance(data, list):
        print_table(data, columns, empty=empty)
    else:
        print_record(data, columns)


def read_secret(label: str, *, confirmation: bool = False) -> str:
    """A value that must not show: asked for hidden on a terminal, else read from stdin."""
    if sys.stdin.isatty():
        value: str = typer.prompt(label, hide_input=True, confirmation_prompt=confirmation)
    else:
        value = sys.stdin.read()
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise UsageProblem(f"no {label.lower()} given (stdin was empty)")
    return value


def confirm(question: str, yes: bool) -> None:
    """Go on only if ``--yes`` was given or the user says so on a terminal."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageProblem("stdin is not a terminal, so nobody can confirm: pass --yes")
    typer.confirm(question, abort=True)
