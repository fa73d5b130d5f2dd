"""``terrace server``: the API on uvicorn, with the first-start setup and a discovery file."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from terrace.api.app import create_app
from terrace.api.bootstrap import bootstrap
from terrace.api.context import AppContext

__all__ = ["DEFAULT_PORT", "discovery_file", "serve"]

DEFAULT_PORT = 8400
log = logging.getLogger("terrace.server")


def discovery_file(home: Path) -> Path:
    """Where a running server says where it listens, so the CLI on this machine finds it."""
    return home / "server.json"


def serve(
    *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, environ: Mapping[str, str] | None = None
) -> None:
    """Run the API until SIGINT or SIGTERM."""
    ctx = AppContext.from_environment(environ)
    new_key = bootstrap(ctx, environ)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
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
    config = uvicorn.Config(
        create_app(ctx),
        log_level="info",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("pid") == os.getpid():
                marker.unlink()
        except (OSError, ValueError):
            pass
        ctx.db.dispose()
