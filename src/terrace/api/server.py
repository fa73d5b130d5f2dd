"""``terrace server``: the API and the engine, with the first-start setup and a discovery file."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from terrace.api.bootstrap import bootstrap
from terrace.api.context import AppContext
from terrace.api.edge import EdgeSettings
from terrace.api.platform import OnReady, make_engine, run_platform
from terrace.store.home import DEFAULT_API_PORT, discovery_file

__all__ = ["serve", "start"]
log = logging.getLogger("terrace.server")


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_API_PORT,
    environ: Mapping[str, str] | None = None,
    engine: bool = True,
    edge: EdgeSettings | None = None,
    on_ready: OnReady | None = None,
    log_level: str = "info",
) -> None:
    """Run the API (and the engine, and with ``edge`` the public router) until SIGINT or
    SIGTERM; ``on_ready`` runs once all serve (``terrace up`` deploys its folder there)."""
    ctx, sock, _url = start(host=host, port=port, environ=environ)
    if engine:
        ctx = make_engine(ctx, edge=edge)
    marker = discovery_file(ctx.home)
    try:
        asyncio.run(run_platform(ctx, sock, on_ready=on_ready, log_level=log_level))
    finally:
        sock.close()
        _clean_up(ctx, marker)


def start(
    *, host: str, port: int, environ: Mapping[str, str] | None = None
) -> tuple[AppContext, socket.socket, str]:
    """First-start setup, the listening socket and the discovery file: what a server does
    before it serves. Returns the context, the socket and the API's base URL."""
    ctx = AppContext.from_environment(environ)
    new_key = bootstrap(ctx, environ)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    # What a client on this machine should dial: a wildcard address is not one.
    client_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    shown_host = f"[{client_host}]" if ":" in client_host else client_host
    url = f"http://{shown_host}:{bound}"
    if new_key:
        print(
            f"terrace: created the cluster admin key (also in {ctx.home / 'admin.key'}, mode 0600;"
            " it is shown only this once):\n"
            f"  {new_key}",
            file=sys.stderr,
        )
    print(f"terrace: API on {url}/api (store: {ctx.db.dialect}, home: {ctx.home})", file=sys.stderr)
    marker = discovery_file(ctx.home)
    marker.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n", encoding="utf-8")
    # Everything imported so far lives as long as the process: move it out of the collector's
    # sight, so a full collection under load walks only request garbage. Without this, one
    # collection paused the server for 115-275 ms in bench/api.py.
    gc.collect()
    gc.freeze()
    return ctx, sock, url


def _clean_up(ctx: AppContext, marker: Path) -> None:
    """Remove our discovery file (not one a newer server wrote) and close the store."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text(encoding="utf-8")).get("pid") == os.getpid():
            marker.unlink()
    ctx.db.dispose()
