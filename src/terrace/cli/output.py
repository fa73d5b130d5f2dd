"""What commands print: Rich tables for people, the API's JSON for scripts, errors on stderr."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from terrace.cli.client import CliError
from terrace.cli.terminal import printable

__all__ = ["Columns", "cell", "print_error", "print_json", "print_record", "print_table", "say"]

# (header, JSON key) pairs: which fields of an API object to show, in order.
Columns = Sequence[tuple[str, str]]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def print_json(data: Any) -> None:
    """The API's response as it came, indented: for scripts (``--json``)."""
    if data is not None:
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def say(message: str) -> None:
    """A line for people on stdout: no markup, control characters escaped."""
    typer.echo(printable(message))


def print_error(exc: CliError) -> None:
    """``error: ...`` on stderr; control characters escaped, but a detail may span lines."""
    first, *rest = (printable(line, multiline=True) for line in exc.lines())
    typer.echo(f"error: {first}", err=True)
    for line in rest:
        typer.echo(line, err=True)


def when(value: str) -> str:
    """An API timestamp as ``YYYY-MM-DD HH:MM`` UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M")


def cell(key: str, value: Any) -> str:
    """A value as one line of text, control characters escaped (it may come from anyone)."""
    return printable(_cell(key, value))


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and key.endswith("At"):
        return when(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Columns, *, empty: str) -> None:
    if not rows:
        say(empty)
        return
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for header, _ in columns:
        table.add_column(header, overflow="fold")
    for row in rows:  # Text, not str: a name such as "[red]x" is not Rich markup
        table.add_row(*(Text(cell(key, row.get(key))) for _, key in columns))
    _console().print(table)


def print_record(row: dict[str, Any], fields: Columns) -> None:
    """One object as ``FIELD  value`` lines."""
    width = max((len(label) for label, _ in fields), default=0)
    for label, key in fields:
        say(f"{label:<{width}}  {cell(key, row.get(key))}")
