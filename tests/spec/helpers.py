"""Small helpers for spec tests: parse text, get the problems as (line, path, message) rows."""

from __future__ import annotations

import textwrap

import pytest

from terrace.errors import Diagnostic, SpecError
from terrace.spec.diagnostics import Parsed
from terrace.spec.landscape import Landscape
from terrace.spec.landscape_parser import parse_landscape
from terrace.spec.provider import Provider
from terrace.spec.provider_parser import parse_provider


def landscape(text: str) -> Parsed[Landscape]:
    return parse_landscape(textwrap.dedent(text), file="ci.yml")


def provider(text: str) -> Parsed[Provider]:
    return parse_provider(textwrap.dedent(text), file="provider.yml")


def landscape_errors(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        landscape(text)
    return info.value


def provider_errors(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        provider(text)
    return info.value


HEADER = "name: x\nversion: v1\nbackend: {landscape: {}}\n"
"""The smallest valid provider head: three lines, so that line numbers after it start at 4."""


def provider_errors_after_header(body: str) -> SpecError:
    """The errors of a provider made of :data:`HEADER` and ``body``."""
    with pytest.raises(SpecError) as info:
        parse_provider(HEADER + textwrap.dedent(body), file="provider.yml")
    return info.value


def rows(diagnostics: tuple[Diagnostic, ...]) -> list[tuple[int, str]]:
    """(line, path) of each diagnostic, for compact assertions."""
    return [(d.line, d.path) for d in diagnostics]


def messages(diagnostics: tuple[Diagnostic, ...]) -> str:
    return "\n".join(d.message for d in diagnostics)
