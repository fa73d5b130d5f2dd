"""``terrace keys``: API keys. A new key is printed once; Terrace keeps only its hash."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from terrace.cli.client import UsageProblem
from terrace.cli.common import ApiOption, JsonOption, connect, handled, show
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
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# ASCII digits only: \d would take "²" or "٣" too.
_DURATION = re.compile(r"[ \t]*([0-9]{1,12})[ \t]*([smhdw])[ \t]*")
MAX_EXPIRES_IN = timedelta(days=3650)  # ten years: far enough, and well inside datetime's range


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w``: more than nothing, at most 3650 days."""
    match = _DURATION.fullmatch(text)
    if not match or int(match[1]) == 0:
        raise UsageProblem(
            f"--expires-in: {text!r} is not a duration such as 12h, 30d or 2w "
            f"(units: s, m, h, d, w; at most {MAX_EXPIRES_IN.days}d)"
        )
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]  # no timedelta yet: it may overflow
    if seconds > MAX_EXPIRES_IN.total_seconds():
        raise UsageProblem(
            f"--expires-in: {text!r} is too long; it must be between 1s and "
            f"{MAX_EXPIRES_IN.days}d (10 years)"
        )
    return timedelta(seconds=seconds)


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
        typer.Option(
            help="Stop working after this long: 12h, 30d, 2w... (at most 3650d).",
            show_default="never",
        ),
    ] = None,
    user_id: Annotated[
        int | None,
        typer.Option(min=1, help="Whose key (cluster admins).", show_default="yours"),
    ] = None,
    api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key. It is printed once: store it then."""
    with handled():  # a bad duration is a usage error, whether or not an API is there
        lifetime = None if expires_in is None else parse_duration(expires_in)
    with connect(api) as session:
        body: dict[str, Any] = {"name": name}
        if lifetime is not None:
            body["expiresAt"] = (datetime.now(UTC) + lifetime).isoformat()
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
