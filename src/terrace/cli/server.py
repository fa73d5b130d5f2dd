"""``terrace server``: run the API."""

from __future__ import annotations

from typing import Annotated

import typer

from terrace.api.server import DEFAULT_PORT, serve
from terrace.errors import TerraceError


def server(
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="The port to listen on (0: any free port).")
    ] = DEFAULT_PORT,
) -> None:
    """Serve the REST API under /api (state in $TERRACE_HOME or TERRACE_DATABASE_URL)."""
    try:
        serve(host=host, port=port)
    except (TerraceError, OSError) as exc:
        typer.echo(f"terrace server: {exc}", err=True)
        raise typer.Exit(1) from None
