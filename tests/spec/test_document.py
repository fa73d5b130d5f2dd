from __future__ import annotations

import math

import pytest

from terrace.errors import SpecError
from terrace.spec.diagnostics import Collector, Mark
from terrace.spec.document import MAX_DEPTH, Document, load_document


def load(text: str) -> tuple[Document, Collector]:
    collector = Collector("f.yml")
    return load_document(text, file="f.yml", collector=collector), collector


def test_scalars_follow_yaml_1_2_and_keep_the_text_of_numbers() -> None:
    doc, collector = load(
        "a: 2.10\nb: 0x1f\nc: yes\nd: true\ne: ~\nf: '3'\ng: 2001-12-14\nh: -.inf\ni: 1_000\n"
    )
    assert doc.data == {
        "a": 2.1,
        "b": 31,
        "c": "yes",
        "d": True,
        "e": None,
        "f": "3",
        "g": "2001-12-14",
        "h": -math.inf,
        "i": 1000,
    }
    assert doc.raw(("a",)) == "2.10"
    assert doc.raw(("b",)) == "0x1f"
    assert doc.raw(("f",)) is None
    assert collector.errors == ()


def test_marks_are_one_based_for_keys_and_values() -> None:
    doc, _ = load("top:\n  inner: [1, 2]\n")
    assert doc.mark(("top", "inner"), key=True) == Mark(2, 3)
    assert doc.mark(("top", "inner")) == Mark(2, 10)
    assert doc.mark(("top", "inner", 1)) == Mark(2, 14)


def test_a_missing_path_points_at_its_nearest_ancestor() -> None:
    doc, _ = load("top:\n  inner: 1\n")
    assert doc.mark(("top", "absent", "deeper")) == doc.mark(("top",))


def test_every_duplicate_key_is_reported_with_both_lines() -> None:
    _, collector = load("a: 1\nb: 2\na: 3\nnested:\n  x: 1\n  x: 2\n")
    assert [(d.line, d.path, d.message) for d in collector.errors] == [
        (3, "a", "duplicate key 'a' (first defined at line 1)"),
        (6, "nested.x", "duplicate key 'x' (first defined at line 5)"),
    ]


def test_anchors_aliases_and_merge_keys_expand() -> None:
    doc, collector = load(
        "base: &base\n  plan: 8\n  replicas: 1\nweb:\n  <<: *base\n  replicas: 2\nother: *base\n"
    )
    assert doc.data["web"] == {"replicas": 2, "plan": 8}
    assert doc.data["other"] == {"plan": 8, "replicas": 1}
    assert collector.errors == ()


def test_an_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    _, collector = load("\n".join(lines) + "\n")
    assert "expands to more than" in collector.errors[0].message


def test_a_recursive_alias_is_refused() -> None:
    _, collector = load("a: &a [*a]\n")
    assert collector.errors[0].message == "an alias refers to a collection that contains it"


def test_nesting_deeper_than_the_limit_is_an_error_not_a_crash() -> None:
    depth = MAX_DEPTH + 5
    text = "".join(f"{'  ' * i}k:\n" for i in range(depth)) + f"{'  ' * depth}v\n"
    collector = Collector("f.yml")
    try:
        load_document(text, file="f.yml", collector=collector)
    except SpecError as error:
        problems = error.problems
    else:
        problems = collector.errors
    assert "nest more deeply than" in problems[0].message


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("a: [1, 2\n", 2, 1, "expected ',' or ']'"),
        ("a:\n\tb: 1\n", 2, 1, "tabs"),
        ("a: 1\n---\nb: 2\n", 2, 1, "expected a single document"),
        ("a: b: c\n", 1, 5, "mapping values are not allowed"),
        ("a: \x07\n", 1, 4, "invalid character"),
    ],
)
def test_syntax_errors_are_spec_errors_with_a_position(
    text: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(SpecError) as info:
        load(text)
    problem = info.value.first
    assert (problem.line, problem.column) == (line, column)
    assert fragment in problem.message


def test_an_empty_document_is_none() -> None:
    doc, _ = load("# only a comment\n")
    assert doc.data is None


def test_collection_keys_and_unknown_tags_are_errors() -> None:
    _, collector = load("? [a, b]\n: 1\nx: !custom value\n")
    assert [d.message for d in collector.errors] == [
        "mapping keys must be plain text, not collections",
        "unsupported YAML tag '!custom'; write the value as text",
    ]


def test_keys_written_next_to_a_merge_win_with_their_own_text_and_position() -> None:
    doc, collector = load("x: &b {VERSION: 2.10, B: 1.50}\nenv: {<<: *b, VERSION: 3.10}\n")
    assert doc.data["env"] == {"VERSION": 3.1, "B": 1.5}
    assert doc.raw(("env", "VERSION")) == "3.10"
    assert doc.raw(("env", "B")) == "1.50"
    assert doc.mark(("env", "VERSION")) == Mark(2, 24)
    assert collector.errors == ()


def test_yaml_1_1_directive_explicit_tags_and_odd_plain_values() -> None:
    doc, collector = load("%YAML 1.1\n---\na: yes\nb: !!int '3'\nc: <<\nd: =\ne: !!str 12\n")
    assert doc.data == {"a": True, "b": 3, "c": "<<", "d": "=", "e": "12"}
    assert collector.errors == ()
