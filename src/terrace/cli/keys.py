"""``terrace keys``: API keys. A new key is printed once; Terrace keeps only its hash."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from terrace.cli.client import UsageProblem
from terrace.cli.common import ApiOption, JsonOption, connect, show
from terrace.cli.output import say

__all__ = ["KEY_FIELDS", "app", "parse_duration", "print_new_key"]

app = typer.Typer(help="API keys: yours, or everyone's for cluster admins.", no_args_is_help=True)

KEY_FIELDS = [
    ("ID", "id"),
    ("NAME", "name"),
    ("PREFIX", "prefix"),
    ("USER", "userId"),
    ("CREATED", "createdAt"),
    ("EXPIRES", "expiresAt"),
    ("REVOKED", "revokedAt"),
    ("LAST USED", "lastUsedAt"),
]
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w``."""
    match = _DURATION.match(text)
    if not match or int(match[1]) == 0:
        raise UsageProblem(
            f"--expires-in: {text!r} is not a duration such as 12h, 30d or 2w "
            "(units: s, m, h, d, w)"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def print_new_key(key: dict[str, Any]) -> None:
    say(f"API key {key['id']} ({key['name']}) for user {key['userId']}:")
    say(f"  {key['key']}")
    say("It is shown only this once: store it now (Terrace keeps only its hash).")


@app.command("list")
def list_keys(api: ApiOption = None, as_json: JsonOption = False) -> None:
    """List your API keys (a cluster admin sees every key)."""
    with connect(api) as session:
        keys = session.api.get("/keys")
    show(keys, as_json, KEY_FIELDS, empty="No API keys.")


@app.command()
def create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="What the key is for, e.g. `ci` or `laptop`.")
    ],
    expires_in: Annotated[
        str | None,
        typer.Option(help="Stop working after this long: 12h, 30d, 2w...", show_default="never"),
    ] = None,
    user_id: Annotated[
        int | None,
        typer.Option(min=1, help="Whose key (cluster admins).", show_default="yours"),
    ] = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key. It is printed once: store it then."""
    with connect(api) as session:
        body: dict[str, Any] = {"name": name}
        if expires_in is not None:
            body["expiresAt"] = (datetime.now(UTC) + parse_duration(expires_in)).isoformat()
        if user_id is not None:
            body["userId"] = user_id
        key = session.api.post("/keys", body)
    if as_json:
        show(key, True, KEY_FIELDS)
        return
    print_new_key(key)


@app.command()
def revoke(
    key_id: Annotated[
        int, typer.Argument(min=1, metavar="KEY_ID", help="The key's ID (see `terrace keys list`).")
    ],
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an API key: it stops working at once."""
    with connect(api) as session:
        session.api.delete(f"/keys/{key_id}")
    if not as_json:
        say(f"Revoked API key {key_id}.")
