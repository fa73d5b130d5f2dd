"""``x-update-constraint``: which changes to an existing managed service's config are allowed.

:func:`update_violations` is pure: given a provider's schema, the config a service has now and
the config a user proposes, it returns every violation with a message a user understands
("MAX_USERS may only increase: 100 -> 50"). Creation is not an update: any value that passes
the schema is accepted then, so callers only use this for changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from terrace.spec.schema_checks import CONSTRAINT_KEY, UpdateConstraint

__all__ = ["ConstraintViolation", "update_violations"]

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class ConstraintViolation:
    """One change the schema forbids. ``path`` names the property (``storage``, ``db.size``)."""

    path: str
    constraint: UpdateConstraint
    current: Any
    proposed: Any
    """The proposed value; ``None`` when the change removes the property."""
    message: str


def update_violations(
    schema: Mapping[str, Any], current: Mapping[str, Any], proposed: Mapping[str, Any]
) -> list[ConstraintViolation]:
    """Every way ``proposed`` breaks an ``x-update-constraint`` of ``schema`` relative to
    ``current``, in the schema's property order.

    - ``immutable``: once set, the value may not change or be removed. Setting a property that
      had no value yet (absent or null) is allowed.
    - ``increase-only``: the new number must be >= the current one, and may not be removed.

    Removing means leaving the property out, or setting it to null. Values of the wrong type are
    left to schema validation and are not reported here. Nested object properties are followed
    (``db.size``); removing the object that holds them removes them too.
    """
    violations: list[ConstraintViolation] = []
    _walk(schema, current, proposed, "", violations)
    return violations


def _walk(
    schema: Mapping[str, Any],
    current: Mapping[str, Any],
    proposed: Mapping[str, Any],
    prefix: str,
    out: list[ConstraintViolation],
) -> None:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return
    for name, subschema in properties.items():
        if not isinstance(subschema, Mapping):
            continue
        path = f"{prefix}{name}"
        old = current.get(name)
        new = proposed.get(name, _MISSING)
        if new is None:
            new = _MISSING
        constraint = subschema.get(CONSTRAINT_KEY)
        if old is not None:
            violation = _check(constraint, path, old, new)
            if violation is not None:
                out.append(violation)
        if isinstance(old, Mapping):
            _walk(subschema, old, new if isinstance(new, Mapping) else {}, f"{path}.", out)


_PHRASE = {
    UpdateConstraint.IMMUTABLE: "is immutable",
    UpdateConstraint.INCREASE_ONLY: "may only increase",
}


def _check(constraint: object, path: str, old: Any, new: Any) -> ConstraintViolation | None:
    if constraint not in _PHRASE:
        return None
    kind = UpdateConstraint(str(constraint))
    phrase = _PHRASE[kind]
    if new is _MISSING:
        message = f"{path} {phrase} and cannot be removed (it is {_show(old)})"
        return _violation(path, kind, old, None, message)
    if kind is UpdateConstraint.IMMUTABLE:
        broken = not _same(old, new)
    else:
        broken = _is_number(old) and _is_number(new) and new < old
    if broken:
        return _violation(path, kind, old, new, f"{path} {phrase}: {_show(old)} -> {_show(new)}")
    return None


def _violation(
    path: str, constraint: UpdateConstraint, old: Any, new: Any, message: str
) -> ConstraintViolation:
    return ConstraintViolation(
        path=path, constraint=constraint, current=old, proposed=new, message=message
    )


def _same(old: Any, new: Any) -> bool:
    """Equal values; 1 and 1.0 are the same number, but true is not 1."""
    if _is_number(old) and _is_number(new):
        return bool(old == new)
    return type(old) is type(new) and bool(old == new)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: Any) -> str:
    if _is_number(value):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)
