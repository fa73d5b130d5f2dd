"""``terrace login`` and ``terrace logout``: the API URL and key in the config file."""

from __future__ import annotations

from typing import Annotated

import typer

from terrace.cli.client import ApiClient, normalize_url
from terrace.cli.common import ApiOption, JsonOption, handled, read_secret
from terrace.cli.config import load_config, resolve_target, save_config
from terrace.cli.output import print_json, say

__all__ = ["login", "logout"]


def login(
    api: ApiOption = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="The API key. Default: asked for (hidden), or read from stdin if not a terminal.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check an API key against the API and save both in ~/.config/terrace/config.json."""
    with handled():
        config = load_config()
        target = resolve_target(api, config)
        secret = key.strip() if key else read_secret("API key").strip()
        with ApiClient(target.with_key(secret)) as client:
            me = client.get("/users/me")
        if config.api and normalize_url(config.api) != target.url:
            config.team = config.workspace = None  # they name another server's objects
        config.api, config.key = target.url, secret
        path = save_config(config)
    if as_json:
        print_json(me)
        return
    admin = " (cluster admin)" if me.get("clusterAdmin") else ""
    say(f"Logged in to {target.url} as {me['name']} <{me['email']}>{admin}.")
    say(f"Saved the URL and key in {path}.")


def logout() -> None:
    """Remove the saved API key from the config file (the URL and defaults stay)."""
    with handled():
        config = load_config()
        if config.key is None:
            say("Not logged in: there is no saved API key.")
            return
        config.key = None
        path = save_config(config)
    say(f"Logged out: removed the API key from {path}.")
