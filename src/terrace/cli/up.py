"""``terrace up [DIR]``: the whole platform in one process, and DIR's landscape deployed on it.

One event loop runs the API, the engine and the public router. With DIR, Terrace makes (or
finds) a local workspace for it in the team ``local``, runs ``prepare`` and ``test``, deploys
the landscape, shows replicas coming up, prints each public route's URL, and serves until
Ctrl-C, which stops every replica before the process ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from terrace.cli.common import DomainOption, RouterOption, RouterThreadsOption
from terrace.errors import TerraceError

__all__ = ["up"]


def up(
    folder: Annotated[
        Path | None,
        typer.Argument(
            help="A folder with a ci.yml to deploy (omit to run only the platform).",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Deploy ci.<profile>.yml.")
    ] = None,
    port: Annotated[
        int, typer.Option("--port", help="Where the landscape's public routes are served.")
    ] = 8080,
    api_port: Annotated[int, typer.Option("--api-port", help="Where the API listens.")] = 8400,
    skip_tests: Annotated[
        bool, typer.Option("--skip-tests", help="Do not run the test stage before deploying.")
    ] = False,
    router: RouterOption = None,
    router_threads: RouterThreadsOption = None,
    domain: DomainOption = "localhost",
) -> None:
    """Run the API, the engine and the router here; deploy FOLDER's landscape and serve it."""
    # The platform loads only for `up`: other commands stay quick to start.
    from terrace.api.edge import EdgeSettings  # noqa: PLC0415
    from terrace.api.server import serve  # noqa: PLC0415
    from terrace.cli.landscape_up import Up  # noqa: PLC0415

    runner = Up(folder, profile=profile, port=port, run_tests=not skip_tests)
    try:
        edge = EdgeSettings(
            host="127.0.0.1", port=port, plane=router, threads=router_threads, domain=domain
        )
        serve(
            host="127.0.0.1",
            port=api_port,
            edge=edge,
            on_ready=runner.ready,
            log_level="warning",
        )
    except (TerraceError, OSError, ValueError) as exc:
        typer.echo(f"terrace up: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("terrace up: stopped; every replica was stopped")
