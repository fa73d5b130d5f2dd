"""Typed, located access to a parsed document, reporting every mistake with its position.

A parser walks a :class:`~terrace.spec.document.Document` through :class:`MapView` objects:
``view.integer("replicas", default=1, minimum=1)`` returns the value when it is right, and when it
is not, records an error that names the line, the JSON path and what was expected, and returns a
fallback so that parsing goes on and finds the next problem too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any, TypeVar

from terrace.spec.diagnostics import Collector, JsonPath, Mark, nearest
from terrace.spec.document import Document
from terrace.spec.expressions import ExpressionSyntaxError, Template, parse_template

__all__ = ["MapView", "Reader", "describe"]

_Choice = TypeVar("_Choice", bound=StrEnum)


def describe(value: Any) -> str:
    """Say what a value is, for messages: 'text "abc"', 'a number (5)', 'a list', ..."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"text {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Reader:
    """A document and the collector its problems go to."""

    def __init__(self, doc: Document, collector: Collector) -> None:
        self.doc = doc
        self.collector = collector

    def mark(self, path: JsonPath, *, key: bool = False) -> Mark:
        return self.doc.mark(path, key=key)

    def error(self, path: JsonPath, message: str, *, key: bool = False) -> None:
        self.collector.error(self.mark(path, key=key), path, message)

    def warning(self, path: JsonPath, message: str, *, key: bool = False) -> None:
        self.collector.warning(self.mark(path, key=key), path, message)

    def template(self, path: JsonPath, text: str, *, allow_details: bool = False) -> Template:
        """Parse ``${{ }}`` references in ``text``; a syntax error is reported at ``path`` and the
        text is kept literally so that parsing can go on."""
        try:
            return parse_template(text, allow_details=allow_details)
        except ExpressionSyntaxError as exc:
            self.error(path, exc.message)
            return Template(source=text, parts=(text,))

    def root(self, what: str) -> MapView | None:
        """The top-level mapping, or an error saying the file should be one."""
        data = self.doc.data
        if isinstance(data, dict):
            return MapView(self, (), data)
        if data is None:
            self.error((), f"the file is empty; a {what} is a YAML mapping")
        else:
            self.error((), f"a {what} must be a YAML mapping, got {describe(data)}")
        return None

    def as_map(self, path: JsonPath, value: Any, *, what: str = "a mapping") -> MapView | None:
        if isinstance(value, dict):
            return MapView(self, path, value)
        self.error(path, f"expected {what}, got {describe(value)}")
        return None


class MapView:
    """One mapping of the document, with typed getters that report problems at the right place."""

    def __init__(self, reader: Reader, path: JsonPath, data: dict[str, Any]) -> None:
        self.reader = reader
        self.path = path
        self.data = data

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def keys(self) -> Iterable[str]:
        return self.data.keys()

    def at(self, key: str | int) -> JsonPath:
        return (*self.path, key)

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def error(self, key: str | None, message: str, *, on_key: bool = False) -> None:
        """Report at ``key``'s value (or its key with ``on_key``); with no key, at the key that
        names this whole mapping."""
        path = self.path if key is None else self.at(key)
        self.reader.error(path, message, key=on_key or key is None)

    def warning(self, key: str | None, message: str, *, on_key: bool = False) -> None:
        path = self.path if key is None else self.at(key)
        self.reader.warning(path, message, key=on_key or key is None)

    def raw(self, key: str) -> str | None:
        return self.reader.doc.raw(self.at(key))

    # -- keys -------------------------------------------------------------------------------

    def check_keys(self, known: Iterable[str], *, where: str) -> None:
        """Warn about every key not in ``known``, suggesting the nearest known one."""
        allowed = list(known)
        for key in self.data:
            if key in allowed:
                continue
            guess = nearest(key, allowed)
            hint = f"; did you mean `{guess}`?" if guess else ""
            self.warning(key, f"unknown key `{key}` in {where}, ignored{hint}", on_key=True)

    def require(self, key: str, what: str) -> bool:
        """Report a missing required key; True when it is present and not empty."""
        if self.data.get(key) is None:
            if key in self.data:
                self.error(key, f"`{key}` needs a value: {what}")
            else:
                self.error(None, f"missing required key `{key}`: {what}")
            return False
        return True

    # -- typed values -----------------------------------------------------------------------

    def string(self, key: str, *, required: str | None = None) -> str | None:
        """A text value. Numbers are accepted as their source text (``version: 1.10``)."""
        if required is not None and not self.require(key, required):
            return None
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self.raw(key) or str(value)
        self.error(key, f"`{key}` must be text, got {describe(value)}")
        return None

    def choice(self, key: str, kind: type[_Choice]) -> _Choice | None:
        """One of ``kind``'s values; None when absent or not one of them (an error names them)."""
        value = self.data.get(key)
        if value is None:
            return None
        known = {choice.value: choice for choice in kind}
        if isinstance(value, str) and value in known:
            return known[value]
        *others, last = known
        options = f"{', '.join(others)} or {last}" if others else last
        self.error(key, f"{key} {value!r} must be {options}")
        return None

    def integer(
        self,
        key: str,
        *,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
        required: str | None = None,
    ) -> int | None:
        if required is not None and not self.require(key, required):
            return None
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(key, f"`{key}` must be a whole number, got {describe(value)}")
            return default
        if minimum is not None and value < minimum:
            self.error(key, f"`{key}` must be at least {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.error(key, f"`{key}` must be at most {maximum}, got {value}")
            return default
        return value

    def text_value(self, key: str, *, what: str) -> str | None:
        """An env-like value as text: strings as they are, numbers as written in the file,
        booleans as ``true``/``false`` and nothing as "" (both with a warning)."""
        value = self.data.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            text = "true" if value else "false"
            self.warning(
                key, f"{what} {text} is a boolean; it is passed as the text {text!r}; quote it"
            )
            return text
        if isinstance(value, int | float):
            return self.raw(key) or str(value)
        if value is None:
            self.warning(key, f'`{key}` has no value; it is set to the empty string (write "")')
            return ""
        self.error(key, f"{what} must be text or a number, got {describe(value)}")
        return None

    def number(self, key: str, *, minimum: float, required: str) -> float | None:
        """A required number (whole or not) of at least ``minimum``."""
        if not self.require(key, required):
            return None
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            self.error(key, f"`{key}` must be a number of at least {minimum}")
            return None
        return float(value)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        self.error(key, f"`{key}` must be true or false, got {describe(value)}")
        return default

    def mapping(self, key: str, *, required: str | None = None) -> MapView | None:
        """A nested mapping; absent or empty (``key:``) gives None."""
        if required is not None and not self.require(key, required):
            return None
        value = self.data.get(key)
        if value is None:
            return None
        return self.reader.as_map(self.at(key), value, what=f"`{key}` to be a mapping")

    def sequence(self, key: str) -> Iterator[tuple[JsonPath, Any]]:
        """The items of a list with their paths; absent or empty gives nothing."""
        value = self.data.get(key)
        if value is None:
            return
        if not isinstance(value, list):
            self.error(key, f"`{key}` must be a list, got {describe(value)}")
            return
        for index, item in enumerate(value):
            yield (*self.at(key), index), item

    def items(self) -> Iterator[tuple[str, JsonPath, Any]]:
        for key, value in self.data.items():
            yield key, self.at(key), value
