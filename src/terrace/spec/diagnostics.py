"""Collecting problems while reading a file: positions, JSON paths and the collector itself."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from terrace.errors import Diagnostic, Severity, SpecError

__all__ = ["Collector", "JsonPath", "Mark", "Parsed", "format_path", "nearest"]

T = TypeVar("T")

JsonPath = tuple[str | int, ...]
"""A path into a document: mapping keys and sequence indexes, outermost first."""

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")


@dataclass(frozen=True, slots=True)
class Mark:
    """A 1-based position in a file."""

    line: int
    column: int


START = Mark(1, 1)


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """A file read successfully: its model and the warnings worth showing the user."""

    value: T
    warnings: tuple[Diagnostic, ...] = ()


def format_path(path: JsonPath) -> str:
    """Render a path the way users read it: ``run.web.network.paths[0].port``.

    Keys that are not plain identifiers use brackets: ``versions['0.1.0']``.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _PLAIN_KEY.match(part):
            out.append(f".{part}" if out else part)
        else:
            quoted = part.replace("\\", "\\\\").replace("'", "\\'")
            out.append(f"['{quoted}']")
    return "".join(out)


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` (for "did you mean ...?"), or None if none is close."""
    pool = list(choices)
    lowered = {c.lower(): c for c in pool}
    if word.lower() in lowered:
        return lowered[word.lower()]
    found = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return found[0] if found else None


class Collector:
    """Gathers the errors and warnings for one file, so that all of them can be reported at once."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._items: list[Diagnostic] = []

    def add(self, severity: Severity, mark: Mark, path: JsonPath, message: str) -> None:
        self._items.append(
            Diagnostic(
                file=self.file,
                line=mark.line,
                column=mark.column,
                path=format_path(path),
                message=message,
                severity=severity,
            )
        )

    def error(self, mark: Mark, path: JsonPath, message: str) -> None:
        self.add(Severity.ERROR, mark, path, message)

    def warning(self, mark: Mark, path: JsonPath, message: str) -> None:
        self.add(Severity.WARNING, mark, path, message)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return self._sorted(Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return self._sorted(Severity.WARNING)

    def _sorted(self, severity: Severity) -> tuple[Diagnostic, ...]:
        unique = {d for d in self._items if d.severity is severity}
        return tuple(sorted(unique, key=Diagnostic.sort_key))

    def raise_if_errors(self) -> None:
        """Raise a :class:`SpecError` carrying every error collected so far, if there is any."""
        if errors := self.errors:
            raise SpecError(errors, warnings=self.warnings)
