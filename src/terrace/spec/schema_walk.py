"""Walking a JSON Schema: every schema object nested inside another, with its path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from terrace.spec.diagnostics import JsonPath

__all__ = ["CHILD_LISTS", "CHILD_MAPS", "CHILD_SCHEMAS", "iter_subschemas"]

CHILD_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
CHILD_SCHEMAS = (
    "additionalProperties",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "contentSchema",
)
CHILD_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


def iter_subschemas(schema: Any, path: JsonPath = ()) -> Iterator[tuple[dict[str, Any], JsonPath]]:
    """Every schema object inside ``schema`` (itself first), with its path relative to it."""
    if not isinstance(schema, dict):
        return
    yield schema, path
    for keyword in CHILD_MAPS:
        children = schema.get(keyword)
        if isinstance(children, dict):
            for name, child in children.items():
                yield from iter_subschemas(child, (*path, keyword, name))
    for keyword in CHILD_SCHEMAS:
        yield from iter_subschemas(schema.get(keyword), (*path, keyword))
    items = schema.get("items")
    if isinstance(items, list):
        for index, child in enumerate(items):
            yield from iter_subschemas(child, (*path, "items", index))
    else:
        yield from iter_subschemas(items, (*path, "items"))
    for keyword in CHILD_LISTS:
        children = schema.get(keyword)
        if isinstance(children, list):
            for index, child in enumerate(children):
                yield from iter_subschemas(child, (*path, keyword, index))
