"""Fields that landscapes and providers share, read the same way in both.

A provider's version (``version`` or ``schemaVersion``), a provider name, a plan id, an
http(s) URL and a secret that should live in the vault mean the same thing in a ``ci.yml``
managed-service entry and in a ``provider.yml``; each is read by one function here.
"""

from __future__ import annotations

import re

from terrace.spec.expressions import Template
from terrace.spec.names import PROVIDER_NAME, PROVIDER_VERSION, RELEASE
from terrace.spec.reader import MapView, describe

__all__ = [
    "http_url",
    "is_http_url",
    "plan_id",
    "provider_name",
    "provider_version",
    "warn_if_plain_secret",
]

_HTTP_URL = re.compile(r"^https?://[^\s/?#@]+(?:[/?#]\S*)?$")


def is_http_url(text: str, *, prefix_only: bool = False) -> bool:
    """True for ``http://host[...]`` or ``https://...``. With ``prefix_only`` the text is the
    literal start of a template, so only the scheme is required."""
    if prefix_only:
        return text.startswith(("http://", "https://"))
    return _HTTP_URL.match(text) is not None


def http_url(view: MapView, key: str, *, required: str) -> str | None:
    """A required http(s) URL at ``key``."""
    url = view.string(key, required=required)
    if url is not None and not is_http_url(url):
        view.error(key, f"{url!r} is not an http:// or https:// URL")
        return None
    return url


def provider_name(view: MapView, key: str, *, required: str) -> str | None:
    """A provider name: ``^[-a-z0-9_]+$``."""
    name = view.string(key, required=required)
    if name is not None and not PROVIDER_NAME.match(name):
        view.error(key, f"provider name {name!r} must match ^[-a-z0-9_]+$")
        return None
    return name


def provider_version(view: MapView) -> str | None:
    """``schemaVersion`` or ``version`` (real files use both), ``v`` and a number.

    When both are written they must agree. A release number (``1.2.3``) gets a hint: releases
    belong under a provider's ``versions``.
    """
    written = {k: view.string(k) for k in ("schemaVersion", "version") if k in view}
    present = {k: v for k, v in written.items() if v is not None}
    if not written:
        view.error(None, "missing `schemaVersion` (or `version`), like v1")
        return None
    if not present:
        key = next(iter(written))
        if view.get(key) is None:
            view.error(key, f"`{key}` needs a value, like v1")
        return None
    if len(set(present.values())) > 1:
        view.error(
            "schemaVersion",
            f"`version` {present['version']!r} and `schemaVersion` {present['schemaVersion']!r} "
            "differ; set one of them",
        )
        return None
    key, value = next(iter(present.items()))
    if not PROVIDER_VERSION.match(value):
        hint = (
            "; release numbers like 1.2.3 go under `versions`"
            if RELEASE.match(value) and "." in value
            else ""
        )
        view.error(key, f"`{key}` {value!r} must look like v1 (v and a number){hint}")
        return None
    return value


def plan_id(view: MapView, key: str = "id") -> int | str | None:
    """A plan id: a whole number >= 0 or a name (real files use both)."""
    if not view.require(key, "the plan's id, a number or a name"):
        return None
    value = view.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            view.error(key, f"plan id must not be negative, got {value}")
            return None
        return value
    if isinstance(value, str) and value.strip():
        return value
    view.error(key, f"plan id must be a number or a name, got {describe(value)}")
    return None


def warn_if_plain_secret(view: MapView, key: str, template: Template, what: str) -> None:
    """Secrets written into a file in plain text belong in the vault: say so."""
    if template.is_literal and template.source:
        view.warning(
            key,
            f"{what} is written in the file in plain text; store it in the vault and write "
            "${{ vault.NAME }}",
        )
