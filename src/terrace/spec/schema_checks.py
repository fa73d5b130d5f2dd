"""Checking the JSON Schemas inside a provider: ``configSchema``, ``secretsSchema``,
``detailsSchema`` (and ``planSchema``, ``backups``).

Each schema must be valid JSON Schema Draft 2020-12, and on top of that:

- ``format`` is one of :data:`ALLOWED_FORMATS`;
- ``x-update-constraint`` is ``increase-only`` (numeric properties only) or ``immutable``;
- ``x-endpoint`` (``detailsSchema`` only) is a GET URL template whose ``{{field}}`` or
  ``${{ .field }}`` placeholders name other details fields;
- every ``default`` passes its own schema.

Harmless real-world slips are normalised with a warning: an empty schema (``detailsSchema:``)
becomes an object schema with no properties, ``properties: []`` becomes ``properties: {}``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from referencing.exceptions import Unresolvable

from terrace.spec.diagnostics import JsonPath, nearest
from terrace.spec.expressions import RefKind, Template
from terrace.spec.reader import Reader, describe

__all__ = [
    "ALLOWED_FORMATS",
    "SchemaRole",
    "UpdateConstraint",
    "check_schema",
    "iter_subschemas",
    "numeric_types",
]

ALLOWED_FORMATS = (
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "password",
    "uri",
    "hostname",
)

CONSTRAINT_KEY = "x-update-constraint"
ENDPOINT_KEY = "x-endpoint"

_MAP_KEYWORDS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_ONE_KEYWORDS = (
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
_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf", "prefixItems")

KNOWN_KEYWORDS = frozenset(
    {
        *_MAP_KEYWORDS,
        *_ONE_KEYWORDS,
        *_LIST_KEYWORDS,
        "items",
        "$schema",
        "$id",
        "$ref",
        "$anchor",
        "$dynamicRef",
        "$dynamicAnchor",
        "$vocabulary",
        "$comment",
        "type",
        "enum",
        "const",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxContains",
        "minContains",
        "maxProperties",
        "minProperties",
        "required",
        "dependentRequired",
        "dependencies",
        "format",
        "contentEncoding",
        "contentMediaType",
        "title",
        "description",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
        "examples",
        "nullable",
    }
)

JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
_PLACEHOLDER = re.compile(r"(?<!\$)\{\{\s*([^{}]*?)\s*\}\}")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class SchemaRole(StrEnum):
    """Which schema of a provider is being checked; ``x-endpoint`` belongs to details only."""

    CONFIG = "configSchema"
    SECRETS = "secretsSchema"
    DETAILS = "detailsSchema"
    PLAN = "planSchema"
    PLAN_PARAMETER = "plan parameter schema"
    BACKUPS = "backups schema"


class UpdateConstraint(StrEnum):
    INCREASE_ONLY = "increase-only"
    IMMUTABLE = "immutable"


def iter_subschemas(schema: Any, path: JsonPath = ()) -> Iterator[tuple[dict[str, Any], JsonPath]]:
    """Every schema object inside ``schema`` (itself first), with its path relative to it."""
    if not isinstance(schema, dict):
        return
    yield schema, path
    for keyword in _MAP_KEYWORDS:
        children = schema.get(keyword)
        if isinstance(children, dict):
            for name, child in children.items():
                yield from iter_subschemas(child, (*path, keyword, name))
    for keyword in _ONE_KEYWORDS:
        yield from iter_subschemas(schema.get(keyword), (*path, keyword))
    items = schema.get("items")
    if isinstance(items, list):
        for index, child in enumerate(items):
            yield from iter_subschemas(child, (*path, "items", index))
    else:
        yield from iter_subschemas(items, (*path, "items"))
    for keyword in _LIST_KEYWORDS:
        children = schema.get(keyword)
        if isinstance(children, list):
            for index, child in enumerate(children):
                yield from iter_subschemas(child, (*path, keyword, index))


def numeric_types(schema: dict[str, Any]) -> bool:
    """True when the schema's ``type`` allows only numbers (``null`` aside)."""
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else declared
    if not isinstance(types, list) or not types:
        return False
    meaningful = [t for t in types if t != "null"]
    return bool(meaningful) and all(t in ("integer", "number") for t in meaningful)


def check_schema(
    reader: Reader, path: JsonPath, value: Any, *, role: SchemaRole, object_only: bool = True
) -> dict[str, Any] | None:
    """Check the schema at ``path`` and return it normalised (a copy), or None when invalid.

    ``object_only`` demands that the schema describe an object (true for config, secrets and
    details, whose properties become environment variables, vault entries and fields).
    """
    name = path[-1] if path else role.value
    if value is None:
        if object_only:
            reader.warning(
                path,
                f"`{name}` is empty; read as an object schema with no properties",
                key=True,
            )
            return {"type": "object", "properties": {}}
        return None
    if not isinstance(value, dict):
        reader.error(path, f"`{name}` must be a JSON Schema (a mapping), got {describe(value)}")
        return None
    schema = copy.deepcopy(value)
    before = len(reader.collector.errors)
    _normalise(reader, path, schema)
    if object_only and "type" in schema and schema["type"] != "object":
        reader.error(
            (*path, "type"),
            f"`{name}` must describe an object (type: object), got type {schema['type']!r}",
        )
    try:
        _meta_validate(reader, path, schema)
        for sub, relative in iter_subschemas(schema):
            where = (*path, *relative)
            _check_keywords(reader, where, sub)
            _check_patterns(reader, where, sub)
            _check_format(reader, where, sub)
            _check_constraint(reader, where, sub)
            _check_endpoint(reader, where, sub, role=role, root=schema, relative=relative)
            _check_default(reader, where, sub, role=role, root=schema)
    except RecursionError:
        reader.error(path, f"`{name}` nests too deeply to check")
    if len(reader.collector.errors) > before:
        return None
    return schema


def _normalise(reader: Reader, path: JsonPath, schema: dict[str, Any]) -> None:
    for sub, relative in list(iter_subschemas(schema)):
        properties = sub.get("properties")
        if properties == []:
            reader.warning(
                (*path, *relative, "properties"),
                "`properties: []` is a list; read as `properties: {}` "
                "(JSON Schema wants a mapping)",
            )
            sub["properties"] = {}


_META = Draft202012Validator(Draft202012Validator.META_SCHEMA)


def _meta_validate(reader: Reader, path: JsonPath, schema: dict[str, Any]) -> None:
    for error in _META.iter_errors(schema):
        where = (*path, *error.absolute_path)
        reader.error(where, _meta_message(error))


def _meta_message(error: ValidationError) -> str:
    keyword = error.absolute_path[-1] if error.absolute_path else None
    if keyword == "type":
        value = error.instance
        shown = value if isinstance(value, str) else describe(value)
        guess = nearest(value, JSON_TYPES) if isinstance(value, str) else None
        hint = f"; did you mean {guess!r}?" if guess else ""
        return f"unknown JSON Schema type {shown!r} (use one of {', '.join(JSON_TYPES)}){hint}"
    if keyword == "required" and isinstance(error.instance, str | dict):
        return "`required` is a list of property names"
    return f"invalid JSON Schema: {error.message}"


def _check_keywords(reader: Reader, where: JsonPath, sub: dict[str, Any]) -> None:
    for key in sub:
        if key in KNOWN_KEYWORDS or key.startswith("x-"):
            continue
        guess = nearest(key, KNOWN_KEYWORDS)
        if guess is not None:
            reader.warning(
                (*where, key),
                f"`{key}` is not a JSON Schema keyword and is ignored; did you mean `{guess}`?",
                key=True,
            )


def _check_patterns(reader: Reader, where: JsonPath, sub: dict[str, Any]) -> None:
    candidates: list[tuple[JsonPath, object]] = [((*where, "pattern"), sub.get("pattern"))]
    pattern_properties = sub.get("patternProperties")
    if isinstance(pattern_properties, dict):
        candidates += [((*where, "patternProperties", k), k) for k in pattern_properties]
    for at, pattern in candidates:
        if not isinstance(pattern, str):
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            reader.error(at, f"invalid regular expression {pattern!r}: {exc}")


def _check_format(reader: Reader, where: JsonPath, sub: dict[str, Any]) -> None:
    fmt = sub.get("format")
    if fmt is None or fmt in ALLOWED_FORMATS:
        return
    reader.error(
        (*where, "format"),
        f"format {fmt!r} is not supported; use one of: {', '.join(ALLOWED_FORMATS)}",
    )


def _check_constraint(reader: Reader, where: JsonPath, sub: dict[str, Any]) -> None:
    if CONSTRAINT_KEY not in sub:
        return
    value = sub[CONSTRAINT_KEY]
    allowed = [c.value for c in UpdateConstraint]
    if value not in allowed:
        reader.error(
            (*where, CONSTRAINT_KEY),
            f"{CONSTRAINT_KEY} {value!r} is not one of: {', '.join(allowed)}",
        )
        return
    if value == UpdateConstraint.INCREASE_ONLY and not numeric_types(sub):
        declared = sub.get("type")
        what = f"type {declared!r}" if declared is not None else "no type"
        reader.error(
            (*where, CONSTRAINT_KEY),
            f"{CONSTRAINT_KEY}: increase-only applies only to numeric properties "
            f"(type integer or number); this one has {what}",
        )


def _check_endpoint(
    reader: Reader,
    where: JsonPath,
    sub: dict[str, Any],
    *,
    role: SchemaRole,
    root: dict[str, Any],
    relative: JsonPath,
) -> None:
    if ENDPOINT_KEY not in sub:
        return
    at = (*where, ENDPOINT_KEY)
    if role is not SchemaRole.DETAILS:
        reader.warning(at, f"{ENDPOINT_KEY} only applies in detailsSchema; ignored here", key=True)
        return
    if relative[:1] != ("properties",) or len(relative) != 2:
        reader.error(at, f"{ENDPOINT_KEY} belongs on a top-level property of detailsSchema")
        return
    own = str(relative[1])
    value = sub[ENDPOINT_KEY]
    if isinstance(value, dict):
        method = str(value.get("method", "GET"))
        reader.error(
            at,
            f"{ENDPOINT_KEY} is a URL string and is fetched with GET"
            + (f"; method {method!r} is not supported" if method.upper() != "GET" else ""),
        )
        return
    if not isinstance(value, str) or not value.strip():
        reader.error(at, f"{ENDPOINT_KEY} must be a URL template, got {describe(value)}")
        return
    fields = _details_fields(root)
    names, literal_head = _endpoint_placeholders(reader, at, value)
    for field_name in names:
        if field_name == own:
            reader.error(at, f"{ENDPOINT_KEY} of `{own}` cannot use `{own}` itself")
        elif field_name not in fields:
            others = sorted(f for f in fields if f != own)
            guess = nearest(field_name, others)
            hint = f"; did you mean {{{{{guess}}}}}?" if guess else ""
            reader.error(
                at,
                f"{ENDPOINT_KEY} uses {{{{{field_name}}}}}, which is not a detailsSchema "
                f"property (known: {', '.join(others) or 'none'}){hint}",
            )
    if literal_head is not None and not re.match(r"^https?://", literal_head):
        reader.error(at, f"{ENDPOINT_KEY} must be an http:// or https:// URL, got {value!r}")


def _details_fields(root: dict[str, Any]) -> set[str]:
    properties = root.get("properties")
    return set(properties) if isinstance(properties, dict) else set()


def _endpoint_placeholders(
    reader: Reader, at: JsonPath, value: str
) -> tuple[list[str], str | None]:
    """The field names a URL template uses, and its literal start (None if it starts with one)."""
    template = reader.template(at, value, allow_details=True)
    names: list[str] = []
    for ref in template.references:
        if ref.kind is RefKind.DETAILS:
            names.append(ref.name)
        else:
            reader.error(at, f"{ENDPOINT_KEY} may only use other details fields, not {ref}")
    head: str | None = None
    for index, part in enumerate(template.parts):
        if not isinstance(part, str):
            continue
        for match in _PLACEHOLDER.finditer(part):
            name = match.group(1)
            if not _FIELD.match(name):
                reader.error(at, f"{ENDPOINT_KEY}: {{{{{name}}}}} is not a field name")
                continue
            names.append(name)
        if index == 0:
            first = _PLACEHOLDER.search(part)
            head = part if first is None or first.start() > 0 else None
    return names, head


def _check_default(
    reader: Reader, where: JsonPath, sub: dict[str, Any], *, role: SchemaRole, root: dict[str, Any]
) -> None:
    if "default" not in sub:
        return
    default = sub["default"]
    at = (*where, "default")
    if role is SchemaRole.DETAILS and isinstance(default, str) and "${{" in default:
        template: Template = reader.template(at, default, allow_details=True)
        fields = _details_fields(root)
        for ref in template.references:
            if ref.kind is not RefKind.DETAILS:
                reader.error(at, f"a details default may only use other details fields, not {ref}")
            elif ref.name not in fields:
                reader.error(at, f"{ref} is not a detailsSchema property")
    subschema = {k: v for k, v in sub.items() if k != "default"}
    try:
        Draft202012Validator.check_schema(subschema)
        errors = list(Draft202012Validator(subschema).iter_errors(default))
    except (SchemaError, Unresolvable, re.error):
        return
    if errors:
        reader.error(at, f"default {default!r} does not pass its own schema: {errors[0].message}")
