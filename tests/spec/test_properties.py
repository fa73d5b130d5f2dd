"""Whatever text a user feeds the parsers, the only exception that escapes is SpecError."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from terrace.errors import SpecError
from terrace.spec.diagnostics import Parsed
from terrace.spec.expressions import ExpressionSyntaxError, parse_template
from terrace.spec.files import FileKind, discover, kind_of
from terrace.spec.landscape_parser import parse_landscape
from terrace.spec.provider_parser import parse_provider
from tests.conftest import CONFORMANCE

EXAMPLES = int(os.environ.get("TERRACE_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

Parser = Callable[[str], Parsed[Any]]
PARSERS: dict[FileKind, Parser] = {
    FileKind.LANDSCAPE: lambda text: parse_landscape(text, file="ci.yml"),
    FileKind.PROVIDER: lambda text: parse_provider(text, file="provider.yml"),
}
CORPUS = [(p.read_text(), kind_of(p.name) or FileKind.LANDSCAPE) for p in discover([CONFORMANCE])]
KEYS = [
    "schemaVersion",
    "run",
    "steps",
    "command",
    "network",
    "ports",
    "paths",
    "port",
    "path",
    "stripPath",
    "isPublic",
    "env",
    "provider",
    "plan",
    "id",
    "parameters",
    "config",
    "secrets",
    "image",
    "volumeMounts",
    "healthEndpoint",
    "replicas",
    "name",
    "version",
    "backend",
    "landscape",
    "configSchema",
    "detailsSchema",
    "properties",
    "type",
    "format",
    "x-update-constraint",
    "x-endpoint",
    "default",
    "plans",
    "versions",
    "target",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "${{ vault.X }}",
            "${{",
            "${{ .a }}",
            "{{x}}",
            "/",
            "/api",
            "v1",
            "v0.2",
            "object",
            "increase-only",
            "http://localhost:3000/x",
            "tcp://localhost:1",
            "_workspace",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), children, max_size=5
        ),
    ),
    max_leaves=25,
)


def dump(data: Any) -> str:
    stream = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.dump(data, stream)
    return stream.getvalue()


def only_spec_errors(parser: Parser, text: str) -> None:
    raised: SpecError | None = None
    try:
        parser(text)
    except SpecError as error:
        raised = error
    if raised is not None:
        assert raised.problems
        assert all(p.line >= 1 and p.column >= 1 for p in raised.problems)


@SETTINGS
@given(kind=st.sampled_from(list(FileKind)), text=st.text(max_size=300))
def test_arbitrary_text(kind: FileKind, text: str) -> None:
    only_spec_errors(PARSERS[kind], text)


@SETTINGS
@given(kind=st.sampled_from(list(FileKind)), data=VALUES)
def test_arbitrary_yaml(kind: FileKind, data: Any) -> None:
    only_spec_errors(PARSERS[kind], dump(data))


def _replace_at(data: Any, choices: list[int], value: Any) -> Any:
    """Replace the node reached by following ``choices`` (indexes into children) with value."""
    if not choices or not isinstance(data, dict | list) or not data:
        return value
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    key = keys[choices[0] % len(keys)]
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[key] = _replace_at(copy[key], choices[1:], value)  # type: ignore[index]
    return copy


@SETTINGS
@given(
    index=st.integers(min_value=0, max_value=len(CORPUS) - 1),
    choices=st.lists(st.integers(min_value=0, max_value=50), max_size=7),
    value=VALUES,
)
def test_structural_mutations_of_real_files(index: int, choices: list[int], value: Any) -> None:
    text, kind = CORPUS[index]
    data = YAML(typ="safe", pure=True).load(text)
    only_spec_errors(PARSERS[kind], dump(_replace_at(data, choices, value)))


MUTATIONS = st.sampled_from(["delete", "duplicate", "indent", "dedent", "insert", "truncate"])


@SETTINGS
@given(
    index=st.integers(min_value=0, max_value=len(CORPUS) - 1),
    edits=st.lists(
        st.tuples(MUTATIONS, st.integers(min_value=0, max_value=10_000), st.text(max_size=8)),
        min_size=1,
        max_size=4,
    ),
)
def test_textual_mutations_of_real_files(index: int, edits: list[tuple[str, int, str]]) -> None:
    text, kind = CORPUS[index]
    lines = text.split("\n")
    for action, position, extra in edits:
        at = position % max(len(lines), 1)
        if action == "delete" and lines:
            del lines[at]
        elif action == "duplicate" and lines:
            lines.insert(at, lines[at])
        elif action == "indent" and lines:
            lines[at] = "  " + lines[at]
        elif action == "dedent" and lines:
            lines[at] = lines[at][2:]
        elif action == "insert" and lines:
            column = position % (len(lines[at]) + 1)
            lines[at] = lines[at][:column] + extra + lines[at][column:]
        elif action == "truncate":
            lines = lines[:at]
    only_spec_errors(PARSERS[kind], "\n".join(lines))


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("${}.[]'\" avultwrkspce_.-X")), max_size=40))
def test_expressions_raise_only_syntax_errors(text: str) -> None:
    offset = 0
    try:
        parse_template(text, allow_details=True)
    except ExpressionSyntaxError as error:
        offset = error.offset
    assert 0 <= offset <= len(text)


def test_the_corpus_is_loaded() -> None:
    assert len(CORPUS) == 52
    assert all(isinstance(text, str) and text for text, _ in CORPUS)
    assert Path(CONFORMANCE).is_dir()
