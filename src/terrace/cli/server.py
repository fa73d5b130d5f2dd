"""``terrace server``: run the API."""

from __future__ import annotations

from typing import Annotated

import typer

from terrace.cli.common import DomainOption, RouterOption, RouterThreadsOption
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
    router_port: Annotated[
        int | None,
        typer.Option(
            help="Serve deployed landscapes on this port (at <workspace>-<port>.<domain> and "
            "/_ws/<workspace>-<port>/); without it, no public router runs here."
        ),
    ] = None,
    router_host: Annotated[
        str, typer.Option(help="The address the public router listens on.")
    ] = "127.0.0.1",
    router: RouterOption = None,
    router_threads: RouterThreadsOption = None,
    domain: DomainOption = "localhost",
) -> None:
    """Serve the REST API under /api and run the engine (state in $TERRACE_HOME or
    TERRACE_DATABASE_URL)."""
    from terrace.api.edge import EdgeSettings  # noqa: PLC0415 - loads only for `server`
    from terrace.api.server import serve  # noqa: PLC0415

    try:
        edge = None
        if router_port is not None and engine:
            edge = EdgeSettings(
                host=router_host,
                port=router_port,
                plane=router,
                threads=router_threads,
                domain=domain,
            )
        serve(host=host, port=port, engine=engine, edge=edge)
    except (TerraceError, OSError, ValueError) as exc:
        typer.echo(f"terrace server: {exc}", err=True)
        raise typer.Exit(1) from None
