"""A JSON Schema Draft 2020-12 validator that is safe to run on schemas and values users wrote.

Provider schemas come from people other than the ones whose values are checked against them, so
validation must not be a way to reach the network, read files or burn a CPU:

- ``$ref`` resolves only inside the schema itself: no remote or ``file://`` retrieval (jsonschema
  would otherwise fetch them, without a timeout);
- ``pattern``, ``patternProperties`` and ``additionalProperties`` match with the ``regex``
  module under a time limit (:data:`PATTERN_TIMEOUT`), so a catastrophically backtracking
  pattern fails one value instead of hanging the process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from referencing import Registry

__all__ = ["PATTERN_TIMEOUT", "PatternError", "compile_problem", "safe_validator"]

PATTERN_TIMEOUT = 0.1
"""Seconds one ``pattern`` may take on one value."""

_NO_RETRIEVAL: Registry[Any] = Registry()


class PatternError(ValueError):
    """A pattern that does not compile or that took longer than :data:`PATTERN_TIMEOUT`."""


def compile_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable regular expression, or None when it is."""
    try:
        regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _search(pattern: str, text: str) -> bool:
    try:
        return regex.search(pattern, text, timeout=PATTERN_TIMEOUT) is not None
    except TimeoutError as exc:
        raise PatternError(f"pattern {pattern!r} took too long on {text[:40]!r}") from exc
    except (regex.error, OverflowError, RecursionError, ValueError) as exc:
        raise PatternError(f"invalid pattern {pattern!r}: {exc}") from exc


def _pattern(
    validator: Any, pattern: str, instance: Any, _schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    try:
        matched = _search(pattern, instance)
    except PatternError as exc:
        yield ValidationError(str(exc))
        return
    if not matched:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, _schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            try:
                matched = _search(pattern, key)
            except PatternError as exc:
                yield ValidationError(str(exc))
                return
            if matched:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras: list[str] = []
    for key in instance:
        if key in properties:
            continue
        try:
            if any(_search(pattern, key) for pattern in patterns):
                continue
        except PatternError as exc:
            yield ValidationError(str(exc))
            return
        extras.append(key)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        shown = ", ".join(repr(e) for e in sorted(extras))
        yield ValidationError(f"additional properties are not allowed ({shown})")


_SafeValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


def safe_validator(schema: Mapping[str, Any]) -> Validator:
    """A Draft 2020-12 validator for ``schema`` with local-only ``$ref`` and timed patterns.

    The schema itself is assumed to have passed the meta-schema already.
    """
    validator: Validator = _SafeValidator(schema, registry=_NO_RETRIEVAL)
    return validator
