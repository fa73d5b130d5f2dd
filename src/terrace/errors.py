"""Terrace's exceptions.

Every exception Terrace raises on purpose derives from :class:`TerraceError`. HTTP status codes and
CLI exit codes are assigned only at the edges (``terrace.api``, ``terrace.cli``), never here.

::

    TerraceError
    ├── SpecError            a file a user wrote is invalid; carries every problem, each with
    │                        file, line, column and JSON path (see Diagnostic)
    ├── Unauthenticated      no credentials, or an unknown, expired or revoked API key
    ├── Forbidden            the caller is known but their role does not allow the action
    ├── NotFound             no such object, or one the caller may not know exists
    ├── Conflict             contradicts what is stored (a duplicate name, the last admin)
    ├── InvalidInput         a value in a request is wrong; names the field
    ├── SourceError          a workspace's source cannot be fetched (git clone, missing folder)
    ├── VaultError           a secret cannot be sealed or opened (wrong or retired key)
    ├── RuntimeFailure       a sandbox or network step failed (terrace.runtimes.base)
    └── HaproxyError         HAProxy refused a command or cannot start (terrace.router)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "Conflict",
    "Diagnostic",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "Severity",
    "SourceError",
    "SpecError",
    "TerraceError",
    "Unauthenticated",
    "VaultError",
]


class TerraceError(Exception):
    """The root of every exception Terrace raises on purpose."""


class Unauthenticated(TerraceError):
    """No credentials, or an unknown, expired or revoked API key."""


class Forbidden(TerraceError):
    """The caller is known, but their role does not allow the action."""


class NotFound(TerraceError):
    """No such object, or one in a team the caller does not belong to (never say which)."""


class Conflict(TerraceError):
    """The request contradicts what is stored: a duplicate name, removing the last admin."""


class InvalidInput(TerraceError):
    """A value in a request is wrong. ``field`` names it (a JSON path such as ``gitUrl``)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class SourceError(TerraceError):
    """A workspace's source cannot be fetched: a failed git clone, a missing folder."""


class VaultError(TerraceError):
    """A secret cannot be sealed or opened: no master key, the wrong key, a retired key."""


class Severity(StrEnum):
    """How bad a :class:`Diagnostic` is: errors make a file invalid, warnings do not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostic:
    """One problem found in a file, located as precisely as the file allows.

    ``line`` and ``column`` are 1-based. ``path`` is a JSON path into the document such as
    ``run.web.network.paths[0].port`` (empty for the whole document).
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return (
            f"{self.file}:{self.line}:{self.column}: {self.severity.value}: {self.message}{where}"
        )

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line, self.column, self.path, self.message)

    def to_json(self) -> dict[str, object]:
        """The form ``terrace validate --json`` and the API use for one problem."""
        return {
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


class SpecError(TerraceError):
    """A landscape or provider file is invalid.

    It carries every error found in the file (``problems``, sorted by line), the warnings found
    along the way, and for convenience the location of the first error as ``file``, ``line``,
    ``column``, ``path`` and ``message``.
    """

    problems: tuple[Diagnostic, ...]
    warnings: tuple[Diagnostic, ...]

    def __init__(
        self, problems: Iterable[Diagnostic], *, warnings: Iterable[Diagnostic] = ()
    ) -> None:
        ordered = tuple(sorted(problems, key=Diagnostic.sort_key))
        if not ordered:
            raise ValueError("SpecError needs at least one problem")
        self.problems = ordered
        self.warnings = tuple(sorted(warnings, key=Diagnostic.sort_key))
        super().__init__("\n".join(str(p) for p in ordered))

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their args; ours is built from problems, so rebuild from those.
        return (_rebuild_spec_error, (self.problems, self.warnings))

    @classmethod
    def single(
        cls, message: str, *, file: str, line: int = 1, column: int = 1, path: str = ""
    ) -> SpecError:
        """A SpecError with exactly one problem."""
        return cls([Diagnostic(file=file, line=line, column=column, path=path, message=message)])

    @property
    def first(self) -> Diagnostic:
        return self.problems[0]

    @property
    def file(self) -> str:
        return self.first.file

    @property
    def line(self) -> int:
        return self.first.line

    @property
    def column(self) -> int:
        return self.first.column

    @property
    def path(self) -> str:
        return self.first.path

    @property
    def message(self) -> str:
        return self.first.message


def _rebuild_spec_error(
    problems: tuple[Diagnostic, ...], warnings: tuple[Diagnostic, ...]
) -> SpecError:
    return SpecError(problems, warnings=warnings)
