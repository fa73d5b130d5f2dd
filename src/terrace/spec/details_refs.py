"""References between the fields of a provider's ``detailsSchema``.

Two things let one details field use others:

- ``x-endpoint`` on a top-level property: a URL, fetched with GET, whose placeholders name
  other fields: ``https://{{hostname}}:{{port}}/status`` (the documented form) or
  ``${{ .statusUrl }}`` (the form real files use);
- a ``default`` that is a template: ``default: '${{ .hostname }}/health'``.

Every name must be another top-level property, and the references may not go round in a cycle
(``a`` fetched from ``b`` fetched from ``a``), since such values could never be computed.
``x-endpoint`` anywhere but on a top-level details property is an error there, and ignored
with a warning in config, secrets and plan schemas.
"""

from __future__ import annotations

import re
from typing import Any

from terrace.spec.diagnostics import JsonPath, nearest
from terrace.spec.expressions import RefKind, placeholders
from terrace.spec.fields import is_http_url
from terrace.spec.reader import Reader, describe
from terrace.spec.schema_walk import iter_subschemas

__all__ = ["ENDPOINT_KEY", "check_details_references"]

ENDPOINT_KEY = "x-endpoint"
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def check_details_references(
    reader: Reader, path: JsonPath, schema: dict[str, Any], *, details: bool
) -> None:
    """Check ``x-endpoint`` and template defaults of the schema at ``path``."""
    properties = schema.get("properties")
    top = properties if isinstance(properties, dict) else {}
    for sub, relative in iter_subschemas(schema):
        if ENDPOINT_KEY not in sub:
            continue
        at = (*path, *relative, ENDPOINT_KEY)
        if not details:
            reader.warning(
                at, f"{ENDPOINT_KEY} only applies in detailsSchema; ignored here", key=True
            )
        elif not (len(relative) == 2 and relative[0] == "properties"):
            reader.error(at, f"{ENDPOINT_KEY} belongs on a top-level property of detailsSchema")
    if not details:
        return
    edges: dict[str, list[str]] = {}
    for name, sub in top.items():
        if not isinstance(sub, dict):
            continue
        where = (*path, "properties", name)
        uses: list[str] = []
        if ENDPOINT_KEY in sub:
            uses += _endpoint_fields(reader, (*where, ENDPOINT_KEY), sub[ENDPOINT_KEY])
        default = sub.get("default")
        if isinstance(default, str) and "${{" in default:
            uses += _template_fields(reader, (*where, "default"), default, what="a details default")
        edges[name] = []
        for used in uses:
            if used == name:
                reader.error(where, f"`{name}` cannot be computed from itself")
            elif used not in top:
                others = sorted(f for f in top if f != name)
                guess = nearest(used, others)
                hint = f"; did you mean {{{{{guess}}}}}?" if guess else ""
                reader.error(
                    where,
                    f"`{name}` uses {{{{{used}}}}}, which is not a detailsSchema property "
                    f"(known: {', '.join(others) or 'none'}){hint}",
                )
            else:
                edges[name].append(used)
    cycle = _find_cycle(edges)
    if cycle:
        reader.error(
            (*path, "properties", cycle[0]),
            "details fields are computed from each other in a cycle: " + " -> ".join(cycle),
        )


def _endpoint_fields(reader: Reader, at: JsonPath, value: Any) -> list[str]:
    if isinstance(value, dict):
        method = str(value.get("method", "GET"))
        unsupported = f"; method {method!r} is not supported" if method.upper() != "GET" else ""
        reader.error(at, f"{ENDPOINT_KEY} is a URL string and is fetched with GET{unsupported}")
        return []
    if not isinstance(value, str) or not value.strip():
        reader.error(at, f"{ENDPOINT_KEY} must be a URL template, got {describe(value)}")
        return []
    names = _template_fields(reader, at, value, what=ENDPOINT_KEY)
    template = reader.template(at, value, allow_details=True)
    head = template.parts[0] if template.parts and isinstance(template.parts[0], str) else ""
    first = placeholders(head)
    if first:
        head = head[: head.index(first[0][0])]
    if head and not is_http_url(head, prefix_only=True):
        reader.error(at, f"{ENDPOINT_KEY} must be an http:// or https:// URL, got {value!r}")
    return names


def _template_fields(reader: Reader, at: JsonPath, text: str, *, what: str) -> list[str]:
    """The details fields a text uses, through ``${{ .field }}`` and ``{{field}}``."""
    template = reader.template(at, text, allow_details=True)
    names: list[str] = []
    for ref in template.references:
        if ref.kind is RefKind.DETAILS:
            names.append(ref.name)
        else:
            reader.error(at, f"{what} may only use other details fields, not {ref}")
    for part in template.parts:
        if not isinstance(part, str):
            continue
        for whole, name in placeholders(part):
            if _FIELD.match(name):
                names.append(name)
            else:
                reader.error(at, f"{what}: {whole} is not a field name")
    return names


def _find_cycle(edges: dict[str, list[str]]) -> list[str]:
    """A cycle in the graph, as ``[a, b, a]``, or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in edges:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []
