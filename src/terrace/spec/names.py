"""The shapes names must have: services, providers, versions, environment variables, profiles."""

from __future__ import annotations

import re

__all__ = [
    "DNS_LABEL",
    "ENV_NAME",
    "PROFILE",
    "PROVIDER_NAME",
    "PROVIDER_VERSION",
    "RELEASE",
    "SECRET_NAME",
]

DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
"""A service name: it becomes a hostname (``ws-server-<workspace>-<service>``)."""

PROVIDER_NAME = re.compile(r"^[-a-z0-9_]+$")
PROVIDER_VERSION = re.compile(r"^v[0-9]+$")
"""A provider's schema version: ``v1``."""

RELEASE = re.compile(r"^v?[0-9]+(\.[0-9]+){0,2}([-+][0-9A-Za-z.+-]+)?$")
"""A release number under a provider's ``versions``: ``1.2.3``, ``0.0.1-dev``."""
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROFILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
"""A CI profile, as in ``ci.<profile>.yml``."""
SECRET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
"""A vault secret's name: ``${{ vault.DB_PASSWORD }}`` or ``${{ vault['db.password'] }}``."""
