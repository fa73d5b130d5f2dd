"""Which API, which key, which team and workspace: flags, the environment, the config file.

The API URL comes from ``-a/--api``, else ``TERRACE_API``, else the config file
(``$XDG_CONFIG_HOME/terrace/config.json``), else the server running on this machine
(``$TERRACE_HOME/server.json``). The key comes from ``TERRACE_API_KEY``, else the config file,
else ``$TERRACE_HOME/admin.key``; a saved or local key is only ever sent to the API it belongs to.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from terrace.cli.client import Target, UsageProblem, normalize_url
from terrace.store.home import admin_key_file, discovery_file, terrace_home

__all__ = [
    "Config",
    "config_path",
    "default_team",
    "default_workspace",
    "discover_local",
    "load_config",
    "resolve_target",
    "save_config",
]


@dataclass(slots=True)
class Config:
    """What ``terrace login``, ``teams use`` and ``workspaces use`` remember."""

    api: str | None = None
    key: str | None = None
    team: int | None = None
    workspace: int | None = None


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = _env(environ)
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "terrace" / "config.json"


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    path = config_path(environ)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise UsageProblem(f"{path} must hold a JSON object")
    config = Config()
    for name, kind in (("api", str), ("key", str), ("team", int), ("workspace", int)):
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UsageProblem(f"{path}: `{name}` must be a {kind.__name__}")
        setattr(config, name, value)
    return config


def save_config(config: Config, environ: Mapping[str, str] | None = None) -> Path:
    """Write the file atomically, readable by its owner only (it may hold an API key)."""
    path = config_path(environ)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    body = {k: v for k, v in asdict(config).items() if v is not None}
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(body, indent=2) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True, slots=True)
class LocalServer:
    url: str
    key: str | None


def discover_local(environ: Mapping[str, str] | None = None) -> LocalServer | None:
    """The server ``terrace server`` (or ``terrace up``) runs on this machine, if any."""
    home = terrace_home(_env(environ))
    try:
        raw = json.loads(discovery_file(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str):
        return None
    try:
        key = admin_key_file(home).read_text(encoding="ascii").strip() or None
    except (OSError, ValueError):
        key = None
    return LocalServer(normalize_url(raw["url"]), key)


def resolve_target(
    api: str | None, config: Config, environ: Mapping[str, str] | None = None
) -> Target:
    """The API to call and the key to send it (None when there is none for that API)."""
    env = _env(environ)
    local = discover_local(env)
    if api and api.strip():
        url, source = normalize_url(api), "--api"
    elif env.get("TERRACE_API", "").strip():
        url, source = normalize_url(env["TERRACE_API"]), "TERRACE_API"
    elif config.api:
        url, source = normalize_url(config.api), str(config_path(env))
    elif local is not None:
        url, source = local.url, str(discovery_file(terrace_home(env)))
    else:
        raise UsageProblem(
            "no Terrace API to talk to: run `terrace login -a URL`, set TERRACE_API, "
            "or start a local one with `terrace server`"
        )
    key = env.get("TERRACE_API_KEY", "").strip() or None
    if key is None and config.key and config.api and normalize_url(config.api) == url:
        key = config.key
    if key is None and local is not None and local.url == url:
        key = local.key
    return Target(url=url, key=key, source=source)


# ASCII digits only: isdigit() takes "²", which int() refuses; int() takes "٣" and "1_0".
_ID = re.compile(r"[0-9]{1,18}")


def _id_from_env(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not _ID.fullmatch(raw) or int(raw) < 1:
        raise UsageProblem(f"{name} must be an ID (a positive integer), not {raw!r}")
    return int(raw)


def default_team(flag: int | None, config: Config, environ: Mapping[str, str] | None = None) -> int:
    """``-t/--team``, else ``TERRACE_TEAM``, else the team ``terrace teams use`` saved."""
    team = flag or _id_from_env(_env(environ), "TERRACE_TEAM") or config.team
    if team is None:
        raise UsageProblem(
            "which team? pass -t/--team ID, set TERRACE_TEAM, or run `terrace teams use ID`"
        )
    return team


def default_workspace(
    flag: int | None, config: Config, environ: Mapping[str, str] | None = None
) -> int:
    """``-w/--workspace``, else ``TERRACE_WORKSPACE``, else ``terrace workspaces use``'s."""
    workspace = flag or _id_from_env(_env(environ), "TERRACE_WORKSPACE") or config.workspace
    if workspace is None:
        raise UsageProblem(
            "which workspace? pass -w/--workspace ID, set TERRACE_WORKSPACE, "
            "or run `terrace workspaces use ID`"
        )
    return workspace
