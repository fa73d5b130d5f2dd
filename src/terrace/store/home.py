"""Where Terrace keeps its files on this machine. Imports nothing heavy: the CLI uses it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DEFAULT_API_PORT", "admin_key_file", "discovery_file", "terrace_home"]

DEFAULT_API_PORT = 8400


def terrace_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$TERRACE_HOME``, or ``~/.local/share/terrace`` (``$XDG_DATA_HOME/terrace``)."""
    env = os.environ if environ is None else environ
    if home := env.get("TERRACE_HOME"):
        return Path(home).expanduser()
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "terrace"


def admin_key_file(home: Path) -> Path:
    """The cluster-admin key made on first start (mode 0600), unless TERRACE_ADMIN_KEY is set."""
    return home / "admin.key"


def discovery_file(home: Path) -> Path:
    """Where a running server says where it listens, so the CLI on this machine finds it."""
    return home / "server.json"
