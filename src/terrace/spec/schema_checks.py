"""Checking the JSON Schemas inside a provider: ``configSchema``, ``secretsSchema``,
``detailsSchema`` (and ``planSchema``, ``backups``).

Each schema must be valid JSON Schema Draft 2020-12, and on top of that:

- ``format`` is one of :data:`ALLOWED_FORMATS`;
- ``x-update-constraint`` is ``increase-only`` (numeric properties only) or ``immutable``;
- ``x-endpoint`` (``detailsSchema`` only) is a GET URL template whose ``{{field}}`` or
  ``${{ .field }}`` placeholders name other details fields (see
  :mod:`terrace.spec.details_refs`);
- ``$ref`` points inside the schema (``#...``): nothing is ever fetched;
- every ``default`` passes its own schema.

Harmless real-world slips are normalised with a warning: an empty schema (``detailsSchema:``)
becomes an object schema with no properties, ``properties: []`` becomes ``properties: {}``.
"""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from referencing.exceptions import Unresolvable

from terrace.spec.details_refs import check_details_references
from terrace.spec.diagnostics import JsonPath, nearest
from terrace.spec.reader import Reader, describe
from terrace.spec.schema_validator import compile_problem, safe_validator
from terrace.spec.schema_walk import CHILD_LISTS, CHILD_MAPS, CHILD_SCHEMAS, iter_subschemas

__all__ = [
    "ALLOWED_FORMATS",
    "SchemaRole",
    "UpdateConstraint",
    "check_schema",
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

KNOWN_KEYWORDS = frozenset(
    {
        *CHILD_MAPS,
        *CHILD_SCHEMAS,
        *CHILD_LISTS,
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
        if not object_only:
            reader.error(path, f"`{name}` needs a JSON Schema", key=True)
            return None
        reader.warning(
            path, f"`{name}` is empty; read as an object schema with no properties", key=True
        )
        return {"type": "object", "properties": {}}
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
            _check_refs(reader, where, sub)
            _check_patterns(reader, where, sub)
            _check_format(reader, where, sub)
            _check_constraint(
                reader,
                where,
                sub,
                relative=relative,
                value_schema=role is SchemaRole.PLAN_PARAMETER,
            )
            _check_default(reader, where, sub)
    except RecursionError:
        reader.error(path, f"`{name}` nests too deeply to check")
    check_details_references(reader, path, schema, details=role is SchemaRole.DETAILS)
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
    """Say what is wrong with a schema keyword in words; the meta-schema's are cryptic."""
    at = list(error.absolute_path)
    keyword_at = None
    if at and at[-1] == "type":
        keyword_at = len(at) - 1
    elif len(at) >= 2 and at[-2] == "type" and isinstance(at[-1], int):
        keyword_at = len(at) - 2
    is_keyword = keyword_at is not None and (
        keyword_at == 0 or at[keyword_at - 1] not in CHILD_MAPS
    )
    written = error.instance if isinstance(error.instance, list) else [error.instance]
    unknown = [t for t in written if isinstance(t, str) and t not in JSON_TYPES]
    if is_keyword and unknown:
        guess = nearest(unknown[0], JSON_TYPES)
        hint = f"; did you mean {guess!r}?" if guess else ""
        return f"unknown JSON Schema type {unknown[0]!r} (use one of {', '.join(JSON_TYPES)}){hint}"
    if at and at[-1] == "required" and (len(at) == 1 or at[-2] not in CHILD_MAPS):
        return "`required` is a list of property names"
    if len(at) >= 2 and at[-2] in CHILD_MAPS:
        return f"the schema of `{at[-1]}` must be a mapping, got {describe(error.instance)}"
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


def _check_refs(reader: Reader, where: JsonPath, sub: dict[str, Any]) -> None:
    for keyword in ("$ref", "$dynamicRef"):
        ref = sub.get(keyword)
        if isinstance(ref, str) and not ref.startswith("#"):
            reader.error(
                (*where, keyword),
                f"{keyword} {ref!r} points outside the schema; only references inside it "
                "(#/$defs/NAME) are supported, nothing is fetched",
            )


def _check_patterns(reader: Reader, where: JsonPath, sub: dict[str, Any]) -> None:
    candidates: list[tuple[JsonPath, object]] = [((*where, "pattern"), sub.get("pattern"))]
    pattern_properties = sub.get("patternProperties")
    if isinstance(pattern_properties, dict):
        candidates += [((*where, "patternProperties", k), k) for k in pattern_properties]
    for at, pattern in candidates:
        if not isinstance(pattern, str):
            continue
        problem = compile_problem(pattern)
        if problem is not None:
            reader.error(at, f"invalid regular expression {pattern!r}: {problem}")


def _check_format(reader: Reader, where: JsonPath, sub: dict[str, Any]) -> None:
    fmt = sub.get("format")
    if fmt is None or fmt in ALLOWED_FORMATS:
        return
    reader.error(
        (*where, "format"),
        f"format {fmt!r} is not supported; use one of: {', '.join(ALLOWED_FORMATS)}",
    )


def _is_property_path(relative: JsonPath) -> bool:
    """``properties.a`` or ``properties.a.properties.b``...: where update constraints apply."""
    return (
        len(relative) >= 2
        and len(relative) % 2 == 0
        and all(relative[i] == "properties" for i in range(0, len(relative), 2))
    )


def _check_constraint(
    reader: Reader,
    where: JsonPath,
    sub: dict[str, Any],
    *,
    relative: JsonPath,
    value_schema: bool,
) -> None:
    """``value_schema``: the schema describes one value (a plan parameter), so a constraint on
    the schema itself applies to that value."""
    if CONSTRAINT_KEY not in sub:
        return
    at = (*where, CONSTRAINT_KEY)
    value = sub[CONSTRAINT_KEY]
    allowed = [c.value for c in UpdateConstraint]
    if value not in allowed:
        reader.error(at, f"{CONSTRAINT_KEY} {value!r} is not one of: {', '.join(allowed)}")
        return
    if not (_is_property_path(relative) or (value_schema and relative == ())):
        reader.error(
            at,
            f"{CONSTRAINT_KEY} applies to properties (under `properties`, at any depth), "
            "not to the schema itself, list items or allOf/anyOf/oneOf branches",
        )
        return
    if value == UpdateConstraint.INCREASE_ONLY and not numeric_types(sub):
        declared = sub.get("type")
        what = f"type {declared!r}" if declared is not None else "no type"
        reader.error(
            at,
            f"{CONSTRAINT_KEY}: increase-only applies only to numeric properties "
            f"(type integer or number); this one has {what}",
        )


def _check_default(reader: Reader, where: JsonPath, sub: dict[str, Any]) -> None:
    """A ``default`` must pass its own schema. Schemas that refer elsewhere (``$ref``) cannot
    be judged in isolation and are skipped."""
    if "default" not in sub:
        return
    default = sub["default"]
    subschema = {k: v for k, v in sub.items() if k != "default"}
    if any("$ref" in s or "$dynamicRef" in s for s, _ in iter_subschemas(subschema)):
        return
    if isinstance(default, str) and "${{" in default:
        return  # a template, checked with the details references
    try:
        Draft202012Validator.check_schema(subschema)
        errors = list(safe_validator(subschema).iter_errors(default))
    except (SchemaError, Unresolvable, RecursionError, OverflowError, ValueError):
        return
    if errors:
        reader.error(
            (*where, "default"),
            f"default {default!r} does not pass its own schema: {errors[0].message}",
        )
