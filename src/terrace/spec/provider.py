"""The provider model: what a ``provider.yml`` declares about a managed-service offering.

The parser lives in :mod:`terrace.spec.provider_parser`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from terrace.spec.expressions import Template

__all__ = [
    "ApiBackend",
    "Backend",
    "Capabilities",
    "LandscapeBackend",
    "Plan",
    "PlanParameter",
    "PricedAs",
    "Provider",
    "ProviderVersion",
    "RestBackend",
]

JsonSchema = Mapping[str, Any]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


def _object_schema() -> JsonSchema:
    return MappingProxyType({"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True, kw_only=True)
class LandscapeBackend:
    """Instances are landscapes deployed from ``git_url`` (default: the provider's own repo)
    with ``ci.<ci_profile>.yml``, or from a prebuilt ``static_build_artifact``."""

    git_url: str | None = None
    ci_profile: str | None = None
    static_build_artifact: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiBackend:
    """A REST backend speaking the Managed Service Adapter API at ``endpoint``."""

    endpoint: str
    secret: Template | None = None
    """The bearer token Terrace sends, usually ``${{ vault.NAME }}``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestBackend:
    """The older form of :class:`ApiBackend`: the token is read from ``auth_token_env``."""

    url: str
    auth_token_env: str | None = None


Backend = LandscapeBackend | ApiBackend | RestBackend


class PricedAs(StrEnum):
    """How a plan parameter is metered for usage and cost."""

    STORAGE_MIB = "storage-mib"
    CPU_TENTHS = "cpu-tenths"
    RAM_MIB = "ram-mib"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanParameter:
    """A plan parameter: a fixed ``value`` (``cpu: 2``), or a ``schema`` the user's value must
    pass, optionally ``priced_as`` a metered resource."""

    name: str
    value: object | None = None
    priced_as: PricedAs | None = None
    schema: JsonSchema | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """One plan. Real files use integer and text ids, and ``name`` and/or ``displayName``: both
    names are always set here (each falls back to the other, then to the id)."""

    id: int | str
    name: str
    display_name: str
    description: str | None = None
    parameters: Mapping[str, PlanParameter] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderVersion:
    """One release under ``versions``: which git ref and profile (or artifact) it deploys."""

    version: str
    git_ref: str | None = None
    ci_profile: str | None = None
    description: str | None = None
    app_version: str | None = None
    artifact_tag: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    pause: bool = False
    backups: bool = False
    point_in_time_recovery: bool = False
    high_availability: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """A whole ``provider.yml``.

    ``version`` is the provider's schema version (``v1``), written ``version`` or
    ``schemaVersion`` in real files; releases are under ``versions``. The three schemas are
    JSON Schema (Draft 2020-12) objects, normalised: an empty or missing schema is
    ``{"type": "object", "properties": {}}``.
    """

    name: str
    version: str
    backend: Backend
    display_name: str
    author: str | None = None
    icon_url: str | None = None
    category: str | None = None
    description: str | None = None
    config_schema: JsonSchema = field(default_factory=_object_schema)
    secrets_schema: JsonSchema = field(default_factory=_object_schema)
    details_schema: JsonSchema = field(default_factory=_object_schema)
    plans: tuple[Plan, ...] = ()
    plan_schema: JsonSchema | None = None
    versions: Mapping[str, ProviderVersion] = field(default_factory=_empty)
    capabilities: Capabilities = field(default_factory=Capabilities)
    backups_config_schema: JsonSchema | None = None
    backups_secrets_schema: JsonSchema | None = None
    resource_parameters: Mapping[str, Any] = field(default_factory=_empty)

    def plan(self, plan_id: int | str) -> Plan | None:
        """The plan with this id; ``0`` and ``"0"`` are the same id."""
        wanted = str(plan_id)
        return next((p for p in self.plans if str(p.id) == wanted), None)
