"""``terrace server``: run the API."""

from __future__ import annotations

from typing import Annotated

import typer

from terrace.errors import TerraceError
from terrace.store.home import DEFAULT_API_PORT


def server(
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="The port to listen on (0: any free port).")
    ] = DEFAULT_API_PORT,
    engine: Annotated[
        bool,
        typer.Option(
            help="Also run the engine (deploys, replicas). Off: an API-only replica on a shared "
            "PostgreSQL, whose deploys an engine elsewhere carries out."
        ),
    ] = True,
) -> None:
    """Serve the REST API under /api and run the engine (state in $TERRACE_HOME or
    TERRACE_DATABASE_URL)."""
    from terrace.api.server import serve  # noqa: PLC0415 - the API stack loads only for `server`

    try:
        serve(host=host, port=port, engine=engine)
    except (TerraceError, OSError) as exc:
        typer.echo(f"terrace server: {exc}", err=True)
        raise typer.Exit(1) from None
