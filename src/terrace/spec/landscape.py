"""The landscape model: what a ``ci.yml`` declares, normalised across every schema version.

Legacy files (no ``schemaVersion``, a flat ``run.steps``), ``v0.2`` and ``v0.4`` all become the
same :class:`Landscape`. The parser lives in :mod:`terrace.spec.landscape_parser`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from terrace.errors import Diagnostic
from terrace.spec.diagnostics import START, JsonPath, Mark, format_path
from terrace.spec.expressions import Reference, RefKind, Template

__all__ = [
    "DEFAULT_PORT",
    "LEGACY_SERVICE_NAME",
    "WORKSPACE_MOUNT",
    "ConfigValue",
    "HealthCheck",
    "HealthCheckKind",
    "Landscape",
    "LoadBalancing",
    "ManagedServiceEntry",
    "Network",
    "PathRoute",
    "Port",
    "ProviderRef",
    "Service",
    "ServiceKind",
    "Stage",
    "Step",
    "VolumeMount",
    "config_references",
]

DEFAULT_PORT = 3000
"""The port a service listens on when its file does not say (Codesphere's convention)."""

LEGACY_SERVICE_NAME = "app"
"""The name given to the single service of a legacy (no ``schemaVersion``) landscape."""

WORKSPACE_MOUNT = "/home/user/app"
"""Where every replica sees the workspace."""


def _frozen_map() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One shell command of a stage or a service."""

    command: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """``prepare`` or ``test``: steps run once per deploy, in order, on the shared workspace."""

    steps: tuple[Step, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    """A port a service listens on. ``public`` ports are also exposed whole on their own host."""

    number: int
    public: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PathRoute:
    """A path prefix on the landscape's host, routed to a port of the service or to a URL.

    Exactly one of ``port`` and ``target`` is set. With ``strip_path`` the prefix is removed
    before the request is forwarded (``/api/users`` arrives as ``/users``).
    """

    path: str
    port: int | None = None
    target: Template | None = None
    strip_path: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    ports: tuple[Port, ...] = ()
    paths: tuple[PathRoute, ...] = ()

    def port(self, number: int) -> Port | None:
        return next((p for p in self.ports if p.number == number), None)


class HealthCheckKind(StrEnum):
    HTTP = "http"
    TCP = "tcp"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """``healthEndpoint``: ``http://localhost:PORT/path`` or ``tcp://localhost:PORT``, checked
    from inside each replica."""

    kind: HealthCheckKind
    port: int
    path: str = "/"


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeMount:
    """A folder of the workspace (``workspace_path``, relative; "" is the root) mounted into a
    managed container at ``mount_path``."""

    mount_path: str
    workspace_path: str = ""
    name: str = "_workspace"


class LoadBalancing(StrEnum):
    """``loadBalancing``: how a service's requests are spread over its replicas."""

    ROUND_ROBIN = "roundRobin"
    """Each replica in turn (the default)."""
    LEAST_CONNECTIONS = "leastConnections"
    """The replica with the fewest requests in flight: for requests of very unequal length."""


class ServiceKind(StrEnum):
    REACTIVE = "reactive"
    """Commands run as a sandboxed process on the shared workspace."""
    CONTAINER = "container"
    """The team's own OCI image (``image``), with the workspace mounted."""
    ROUTE = "route"
    """No process: only ``network.paths`` that forward to URLs (``target``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """One runnable entry under ``run``."""

    name: str
    kind: ServiceKind
    steps: tuple[Step, ...] = ()
    plan: int | None = None
    replicas: int = 1
    network: Network = field(default_factory=Network)
    env: Mapping[str, Template] = field(default_factory=_frozen_map)
    health: HealthCheck | None = None
    mount_sub_path: str | None = None
    sleep_after: float | None = None
    """``sleepAfter``, in seconds: with no request for that long, the service is stopped; the
    next request (public, or by name from the landscape) wakes it and waits for it."""
    load_balancing: LoadBalancing = LoadBalancing.ROUND_ROBIN
    """``loadBalancing``: how the router spreads the service's public requests over its
    replicas (calls by name go to each replica in turn, connection by connection)."""
    image: str | None = None
    command: tuple[str, ...] | None = None
    """For containers: the command to run instead of the image's own (``command:`` as a list)."""
    run_as_user: int | None = None
    run_as_group: int | None = None
    volume_mounts: tuple[VolumeMount, ...] = ()

    @property
    def references(self) -> tuple[Reference, ...]:
        found = [ref for value in self.env.values() for ref in value.references]
        found += [ref for p in self.network.paths if p.target for ref in p.target.references]
        return tuple(found)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderRef:
    """Which provider a managed service comes from: ``name`` at schema ``version`` (``v1``)."""

    name: str
    version: str


ConfigValue = Template | int | float | bool | None | list["ConfigValue"] | dict[str, "ConfigValue"]
"""A managed service's config value: text is a :class:`Template` at any depth."""


def config_references(value: ConfigValue) -> list[Reference]:
    """Every reference inside a config value, depth first."""
    if isinstance(value, Template):
        return list(value.references)
    if isinstance(value, list):
        return [ref for item in value for ref in config_references(item)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in config_references(item)]
    return []


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagedServiceEntry:
    """A managed service declared in the landscape (``provider:`` under ``run``)."""

    name: str
    provider: ProviderRef
    plan_id: int | str
    plan_parameters: Mapping[str, object] = field(default_factory=_frozen_map)
    config: Mapping[str, ConfigValue] = field(default_factory=_frozen_map)
    """Text is a :class:`Template` (also inside lists and mappings); other values as written."""
    secrets: Mapping[str, Template] = field(default_factory=_frozen_map)

    @property
    def references(self) -> tuple[Reference, ...]:
        found = [ref for value in self.config.values() for ref in config_references(value)]
        found += [ref for value in self.secrets.values() for ref in value.references]
        return tuple(found)


def _no_marks() -> Mapping[JsonPath, Mark]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Landscape:
    """A whole ``ci.yml``: stages, services and managed services, in file order."""

    schema_version: str
    """``v0.1`` for legacy files, else as written (``v0.2``, ``v0.4``)."""
    profile: str | None = None
    """``prod`` for ``ci.prod.yml``; None for ``ci.yml``."""
    prepare: Stage = field(default_factory=Stage)
    test: Stage = field(default_factory=Stage)
    services: Mapping[str, Service] = field(default_factory=_frozen_map)
    managed_services: Mapping[str, ManagedServiceEntry] = field(default_factory=_frozen_map)
    file: str = "ci.yml"
    """The file's name as given to the parser: what problems found later name."""
    marks: Mapping[JsonPath, Mark] = field(default_factory=_no_marks, compare=False, repr=False)
    """Where each value of the file starts, so that checks made after parsing (a deploy's)
    can point at a line too."""

    def service_path(self, name: str) -> JsonPath:
        """The JSON path of a service in the file: ``run.<name>``, or ``run`` in a legacy file."""
        return ("run",) if self.schema_version == "v0.1" else ("run", name)

    def problem(self, path: JsonPath, message: str) -> Diagnostic:
        """A problem at ``path`` (or its nearest ancestor the file has), located in the file."""
        probe = path
        while probe and probe not in self.marks:
            probe = probe[:-1]
        mark = self.marks.get(probe, START)
        return Diagnostic(
            file=self.file,
            line=mark.line,
            column=mark.column,
            path=format_path(path),
            message=message,
        )

    @property
    def references(self) -> tuple[Reference, ...]:
        """Every ``${{ }}`` reference in the landscape, in file order, without duplicates."""
        found: dict[Reference, None] = {}
        for service in self.services.values():
            found.update(dict.fromkeys(service.references))
        for entry in self.managed_services.values():
            found.update(dict.fromkeys(entry.references))
        return tuple(found)

    @property
    def vault_names(self) -> frozenset[str]:
        """The vault secrets this landscape needs; a deploy checks each exists before it starts."""
        return frozenset(ref.name for ref in self.references if ref.kind is RefKind.VAULT)
