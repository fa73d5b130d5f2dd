"""YAML text to plain Python values that remember where each value and key came from.

ruamel.yaml composes the text into a node graph (which keeps every position); this module turns
that graph into dicts, lists and scalars itself, so that it can:

- report *every* duplicate key, with both lines, instead of failing at the first;
- keep the source text of numbers (``APP_VERSION: 2.10`` stays ``"2.10"`` in an env var);
- expand anchors, aliases and ``<<`` merge keys, while refusing alias bombs and cycles;
- turn every syntax error into a :class:`~terrace.errors.SpecError` with a line and column.

The YAML 1.2 core schema applies (``yes``/``no``/``on``/``off`` are strings), as in Go's yaml.v3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from terrace.errors import SpecError
from terrace.spec.diagnostics import START, Collector, JsonPath, Mark

__all__ = ["MAX_DEPTH", "MAX_NODES", "Document", "load_document"]

MAX_NODES = 100_000
"""Values one document may expand to (anchors count each time they are used): stops alias bombs."""

MAX_DEPTH = 100
"""How deeply collections may nest."""

_TAG = "tag:yaml.org,2002:"


@dataclass(slots=True)
class Document:
    """A YAML document as plain values (``data``) plus the position of every value and key."""

    file: str
    data: Any
    value_marks: dict[JsonPath, Mark] = field(default_factory=dict)
    key_marks: dict[JsonPath, Mark] = field(default_factory=dict)
    raw_scalars: dict[JsonPath, str] = field(default_factory=dict)
    """Source text of plain (unquoted) scalars that did not become strings: numbers, booleans."""

    def mark(self, path: JsonPath, *, key: bool = False) -> Mark:
        """Where the value (or, with ``key=True``, the key) at ``path`` starts.

        A path that does not exist (a missing required key, say) resolves to its nearest
        existing ancestor, so that an error always points somewhere useful.
        """
        if key and path in self.key_marks:
            return self.key_marks[path]
        probe = path
        while probe:
            if probe in self.value_marks:
                return self.value_marks[probe]
            if probe in self.key_marks:
                return self.key_marks[probe]
            probe = probe[:-1]
        return self.value_marks.get((), START)

    def raw(self, path: JsonPath) -> str | None:
        """The source text of a plain non-string scalar at ``path``, if it is one."""
        return self.raw_scalars.get(path)


def load_document(text: str, *, file: str, collector: Collector) -> Document:
    """Parse one YAML document.

    Syntax errors raise :class:`SpecError` at once (nothing after them can be trusted); problems
    that leave the structure readable (duplicate keys, unsupported tags) go to ``collector``.
    An empty document yields ``data=None``.
    """
    yaml = YAML(typ="safe", pure=True)
    try:
        root = yaml.compose(text)
    except MarkedYAMLError as exc:
        raise _syntax_error(exc, file) from exc
    except ReaderError as exc:
        line, column = _offset_to_mark(text, exc.position)
        raise SpecError.single(
            f"invalid character {exc.character!r}: {exc.reason}",
            file=file,
            line=line,
            column=column,
        ) from exc
    except YAMLError as exc:
        raise SpecError.single(f"invalid YAML: {exc}", file=file) from exc
    except RecursionError as exc:
        raise SpecError.single(
            f"invalid YAML: collections nest more deeply than {MAX_DEPTH} levels", file=file
        ) from exc
    doc = Document(file=file, data=None)
    if root is None:
        return doc
    builder = _Builder(doc, collector)
    doc.data = builder.build(root, (), 0)
    return doc


def _syntax_error(exc: MarkedYAMLError, file: str) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "invalid YAML"
    if exc.context and exc.problem:
        problem = f"{exc.context}: {exc.problem}"
    if "found character '\\t'" in problem:
        problem += " (YAML indentation must use spaces, not tabs)"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return SpecError.single(f"invalid YAML: {problem}", file=file, line=line, column=column)


def _offset_to_mark(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return line, column


def _is_empty(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.value == "" and node.style is None


def _mark_of(node: Node) -> Mark:
    start = node.start_mark
    return Mark(start.line + 1, start.column + 1)


def _tag(node: Node) -> str:
    tag = node.tag
    return str(getattr(tag, "value", tag))


class _Builder:
    def __init__(self, doc: Document, collector: Collector) -> None:
        self.doc = doc
        self.collector = collector
        self.count = 0
        self.stack: set[int] = set()
        self.failed = False

    def _fail(self, node: Node, path: JsonPath, message: str) -> None:
        if not self.failed:
            self.collector.error(_mark_of(node), path, message)
        self.failed = True

    def build(self, node: Node, path: JsonPath, depth: int) -> Any:
        self.count += 1
        self.doc.value_marks.setdefault(path, _mark_of(node))
        if self.count > MAX_NODES:
            self._fail(node, path, f"document expands to more than {MAX_NODES} values")
            return None
        if depth > MAX_DEPTH:
            self._fail(node, path, f"collections nest more deeply than {MAX_DEPTH} levels")
            return None
        if id(node) in self.stack:
            self._fail(node, path, "an alias refers to a collection that contains it")
            return None
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        self.stack.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [
                    self.build(child, (*path, index), depth + 1)
                    for index, child in enumerate(node.value)
                ]
            if isinstance(node, MappingNode):
                return self._mapping(node, path, depth)
        finally:
            self.stack.discard(id(node))
        self._fail(node, path, f"unsupported YAML node {type(node).__name__}")
        return None

    def _mapping(self, node: MappingNode, path: JsonPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, Mark] = {}
        merged: list[tuple[Node, JsonPath]] = []
        for key_node, value_node in node.value:
            if _tag(key_node) == _TAG + "merge":
                merged.append((value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self.collector.error(
                    _mark_of(key_node), path, "mapping keys must be plain text, not collections"
                )
                continue
            key = str(key_node.value)
            key_mark = _mark_of(key_node)
            if key in seen:
                first = seen[key]
                self.collector.error(
                    key_mark,
                    (*path, key),
                    f"duplicate key {key!r} (first defined at line {first.line})",
                )
                continue
            seen[key] = key_mark
            self.doc.key_marks[(*path, key)] = key_mark
            if _is_empty(value_node):
                # `key:` with nothing after it: point at the key, not at the next line.
                self.doc.value_marks[(*path, key)] = key_mark
            result[key] = self.build(value_node, (*path, key), depth + 1)
        for source, at in merged:
            self._merge(result, source, at, depth)
        return result

    def _merge(self, into: dict[str, Any], source: Node, path: JsonPath, depth: int) -> None:
        """``<<: *base`` or ``<<: [*a, *b]``: keys not set explicitly come from the sources."""
        sources = source.value if isinstance(source, SequenceNode) else [source]
        for item in sources:
            if not isinstance(item, MappingNode):
                self.collector.error(_mark_of(item), path, "'<<' merges only mappings")
                continue
            # Build the source into a scratch document, then keep only what the mapping does
            # not set itself: explicit keys win, with their own positions and source text.
            real, scratch = self.doc, Document(file=self.doc.file, data=None)
            self.doc = scratch
            try:
                built = self.build(item, path, depth)
            finally:
                self.doc = real
            if not isinstance(built, dict):
                continue
            for key, value in built.items():
                if key in into:
                    continue
                into[key] = value
                prefix = (*path, key)
                for table, source_table in (
                    (real.value_marks, scratch.value_marks),
                    (real.key_marks, scratch.key_marks),
                    (real.raw_scalars, scratch.raw_scalars),
                ):
                    for at, entry in source_table.items():
                        if at[: len(prefix)] == prefix:
                            table.setdefault(at, entry)  # type: ignore[arg-type]

    def _scalar(self, node: ScalarNode, path: JsonPath) -> Any:
        text = str(node.value)
        tag = _tag(node)
        if tag in (_TAG + "str", "!"):
            return text
        value = _resolve_plain(tag, text)
        if value is _UNSUPPORTED:
            self.collector.error(
                _mark_of(node), path, f"unsupported YAML tag {tag!r}; write the value as text"
            )
            return text
        if not isinstance(value, str):
            self.doc.raw_scalars[path] = text
        return value


_UNSUPPORTED = object()


def _resolve_plain(tag: str, text: str) -> Any:
    if tag == _TAG + "null":
        return None
    if tag == _TAG + "bool":
        # Under `%YAML 1.1` the resolver also tags yes/on/y as booleans.
        return text.lower() in ("true", "yes", "on", "y")
    if tag == _TAG + "int":
        return _parse_int(text)
    if tag == _TAG + "float":
        return _parse_float(text)
    if tag in (_TAG + "timestamp", _TAG + "binary", _TAG + "merge", _TAG + "value"):
        return text
    return _UNSUPPORTED


def _parse_int(text: str) -> int | str:
    digits = text.replace("_", "")
    sign = 1
    if digits[:1] in "+-" and digits:
        sign = -1 if digits[0] == "-" else 1
        digits = digits[1:]
    bases: Mapping[str, int] = {"0x": 16, "0o": 8, "0b": 2}
    base = bases.get(digits[:2].lower(), 10)
    if base != 10:
        digits = digits[2:]
    try:
        return sign * int(digits, base)
    except ValueError:
        return text


def _parse_float(text: str) -> float | str:
    lowered = text.lower().replace("_", "")
    if lowered.lstrip("+-") in (".inf", "inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered in (".nan", "nan"):
        return math.nan
    try:
        return float(lowered)
    except ValueError:
        return text
