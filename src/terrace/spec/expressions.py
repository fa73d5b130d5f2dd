"""``${{ ... }}`` expressions in landscape and provider files.

A small, safe parser: there is no ``eval`` and no template engine, only references. Supported:

======================================  ===================================================
``${{ vault.NAME }}``                   a secret from the team's vault
``${{ vault['name'] }}``                the same, for names that are not identifiers
``${{ workspace.env.X }}``              a workspace environment variable
``${{ workspace.env['X'] }}``           the same
``${{ workspace.id }}``                 the workspace's id
``${{ team.id }}``                      the team's id
``${{ .field }}``                       another field of the same managed service's details
                                        (provider ``detailsSchema`` only)
======================================  ===================================================

:func:`parse_template` turns a string into a :class:`Template`: literal text and
:class:`Reference` objects. Every reference is known right after parsing, so that later layers
can check, before a deploy starts, that each vault secret exists. :meth:`Template.render` takes a
context object (see :class:`ExpressionContext`) and never touches anything else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from terrace.errors import TerraceError

__all__ = [
    "EvaluationError",
    "ExpressionContext",
    "ExpressionSyntaxError",
    "RefKind",
    "Reference",
    "StaticContext",
    "Template",
    "bare_placeholders",
    "parse_template",
    "placeholders",
]

OPEN = "${{"
CLOSE = "}}"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_PLACEHOLDER = re.compile(r"(?<!\$)\{\{\s*([^{}]*?)\s*\}\}")
_REF_LIKE = re.compile(r"^\.?[A-Za-z_][A-Za-z0-9_.\-\[\]'\"]*$")

SUPPORTED = (
    "vault.NAME, vault['name'], workspace.env.NAME, workspace.env['NAME'], workspace.id, team.id"
)


class RefKind(StrEnum):
    """What a reference points at."""

    VAULT = "vault"
    WORKSPACE_ENV = "workspace.env"
    WORKSPACE_ID = "workspace.id"
    TEAM_ID = "team.id"
    DETAILS = "details"


@dataclass(frozen=True, slots=True)
class Reference:
    """One ``${{ ... }}`` in a string. ``name`` is the secret, variable or field name."""

    kind: RefKind
    name: str = ""
    expression: str = field(default="", compare=False)
    """The text between ``${{`` and ``}}``, trimmed, as written."""

    def __str__(self) -> str:
        return f"${{{{ {self.expression} }}}}"


class ExpressionSyntaxError(ValueError):
    """A ``${{ ... }}`` that cannot be parsed; ``offset`` is where in the string it starts."""

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class EvaluationError(TerraceError):
    """A reference has no value in the context it is rendered with (a missing vault secret...)."""

    def __init__(self, message: str, *, reference: Reference) -> None:
        super().__init__(message)
        self.reference = reference


class ExpressionContext(Protocol):
    """What a template needs in order to be rendered: one value per reference."""

    def resolve(self, reference: Reference) -> str:
        """The value of ``reference``; raise :class:`EvaluationError` when there is none."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticContext:
    """An :class:`ExpressionContext` over plain mappings."""

    vault: Mapping[str, str] = field(default_factory=dict)
    workspace_env: Mapping[str, str] = field(default_factory=dict)
    workspace_id: str | None = None
    team_id: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, reference: Reference) -> str:
        found: str | None
        match reference.kind:
            case RefKind.VAULT:
                found = self.vault.get(reference.name)
                missing = f"the vault has no secret named {reference.name!r}"
            case RefKind.WORKSPACE_ENV:
                found = self.workspace_env.get(reference.name)
                missing = f"the workspace has no environment variable {reference.name!r}"
            case RefKind.WORKSPACE_ID:
                found = self.workspace_id
                missing = "no workspace id is known here"
            case RefKind.TEAM_ID:
                found = self.team_id
                missing = "no team id is known here"
            case RefKind.DETAILS:
                found = self.details.get(reference.name)
                missing = f"the service details have no field {reference.name!r}"
        if found is None:
            raise EvaluationError(f"{reference}: {missing}", reference=reference)
        return found


@dataclass(frozen=True, slots=True)
class Template:
    """A string split into literal text and references."""

    source: str
    parts: tuple[str | Reference, ...]

    @property
    def references(self) -> tuple[Reference, ...]:
        return tuple(part for part in self.parts if isinstance(part, Reference))

    @property
    def is_literal(self) -> bool:
        return not self.references

    def render(self, context: ExpressionContext) -> str:
        """The string with every reference replaced by its value from ``context``."""
        return "".join(
            part if isinstance(part, str) else context.resolve(part) for part in self.parts
        )

    def __str__(self) -> str:
        return self.source


def parse_template(text: str, *, allow_details: bool = False) -> Template:
    """Split ``text`` into literal parts and references.

    Raises :class:`ExpressionSyntaxError` for a ``${{`` that is not closed or whose content is
    not a supported reference. ``allow_details`` permits ``${{ .field }}`` (provider details).
    """
    parts: list[str | Reference] = []
    position = 0
    while True:
        start = text.find(OPEN, position)
        if start < 0:
            break
        end = text.find(CLOSE, start + len(OPEN))
        if end < 0:
            raise ExpressionSyntaxError(
                f"`{OPEN}` at character {start + 1} is never closed with `{CLOSE}`", offset=start
            )
        if start > position:
            parts.append(text[position:start])
        inner = text[start + len(OPEN) : end]
        parts.append(_parse_reference(inner, offset=start, allow_details=allow_details))
        position = end + len(CLOSE)
    if position < len(text):
        parts.append(text[position:])
    return Template(source=text, parts=tuple(parts))


def placeholders(text: str) -> list[tuple[str, str]]:
    """Every ``{{ name }}`` not preceded by ``$``: (the whole match, the trimmed name)."""
    return [(m.group(0), m.group(1)) for m in _PLACEHOLDER.finditer(text)]


def bare_placeholders(text: str) -> list[str]:
    """``{{ x }}`` without the leading ``$``: text that looks like a reference but is literal."""
    return [whole for whole, name in placeholders(text) if _REF_LIKE.match(name)]


def _parse_reference(inner: str, *, offset: int, allow_details: bool) -> Reference:
    expression = inner.strip()
    if not expression:
        raise ExpressionSyntaxError(f"empty `{OPEN} {CLOSE}`", offset=offset)
    segments, relative = _split_path(expression, offset=offset)
    shown = f"`{OPEN} {expression} {CLOSE}`"
    if relative:
        if not allow_details:
            raise ExpressionSyntaxError(
                f"{shown}: `.field` references are only allowed in a provider's detailsSchema",
                offset=offset,
            )
        if len(segments) != 1:
            raise ExpressionSyntaxError(
                f"{shown}: a details reference names one field, like `.hostname`", offset=offset
            )
        return Reference(RefKind.DETAILS, segments[0], expression)
    match segments:
        case ["vault", name]:
            return Reference(RefKind.VAULT, name, expression)
        case ["workspace", "env", name]:
            return Reference(RefKind.WORKSPACE_ENV, name, expression)
        case ["workspace", "id"]:
            return Reference(RefKind.WORKSPACE_ID, "", expression)
        case ["team", "id"]:
            return Reference(RefKind.TEAM_ID, "", expression)
    raise ExpressionSyntaxError(
        f"{shown} is not a supported reference; use one of: {SUPPORTED}", offset=offset
    )


def _split_path(expression: str, *, offset: int) -> tuple[list[str], bool]:
    """``workspace.env['X']`` -> ``["workspace", "env", "X"]``; a leading ``.`` is relative."""
    segments: list[str] = []
    index = 0
    relative = expression.startswith(".")
    if relative:
        index = 1
    length = len(expression)
    while index < length:
        char = expression[index]
        if char == "[":
            _close_quote, name, index = _bracket(expression, index, offset=offset)
            segments.append(name)
            continue
        if char == "." and segments:
            index += 1
        match = _IDENT.match(expression, index)
        if match is None:
            raise ExpressionSyntaxError(
                f"`{OPEN} {expression} {CLOSE}`: unexpected {expression[index:]!r}; "
                f"expressions are references like {SUPPORTED}",
                offset=offset,
            )
        segments.append(match.group(0))
        index = match.end()
    return segments, relative


def _bracket(expression: str, index: int, *, offset: int) -> tuple[str, str, int]:
    """Parse ``['name']`` or ``["name"]`` at ``index``; return the quote, the name and the end."""
    shown = f"`{OPEN} {expression} {CLOSE}`"
    rest = expression[index + 1 :].lstrip()
    quote = rest[:1]
    if quote not in ("'", '"'):
        raise ExpressionSyntaxError(
            f"{shown}: brackets take a quoted name, like ['NAME']", offset=offset
        )
    body_start = expression.index(quote, index)
    body_end = expression.find(quote, body_start + 1)
    if body_end < 0:
        raise ExpressionSyntaxError(f"{shown}: unterminated string", offset=offset)
    name = expression[body_start + 1 : body_end]
    after = body_end + 1
    while after < len(expression) and expression[after] == " ":
        after += 1
    if after >= len(expression) or expression[after] != "]":
        raise ExpressionSyntaxError(
            f"{shown}: expected `]` after {quote}{name}{quote}", offset=offset
        )
    if not name:
        raise ExpressionSyntaxError(f"{shown}: empty name in brackets", offset=offset)
    return quote, name, after + 1
