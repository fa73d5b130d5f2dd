"""From a deployed landscape to what the runtime runs: one :class:`ServiceRun` per service.

Pure: the caller reads the store (workspace env values, vault secret *versions*) and passes
them in. A service's ``revision`` is a digest of everything that needs new processes when it
changes (commands, env as resolved, ports, plan, health check, mount path), so deploying the
same file twice restarts nothing, and changing one service restarts only that one. Secret
values never enter the digest: their versions do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from terrace.engine.plans import PlanTable
from terrace.engine.state import DesiredService, ServiceKey
from terrace.runtimes.base import Limits, Probe
from terrace.spec.expressions import RefKind, StaticContext
from terrace.spec.landscape import Landscape, Service, ServiceKind, Stage

__all__ = [
    "ServiceRun",
    "render_env",
    "service_ports",
    "service_runs",
    "stage_script",
    "step_script",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRun:
    """One service of a deployed landscape, ready for the runtime (but for its secrets)."""

    key: ServiceKey
    team_id: int
    workspace: Path
    service: Service
    revision: str
    replicas: int
    limits: Limits | None
    probe: Probe | None
    ports: tuple[int, ...]

    @property
    def desired(self) -> DesiredService:
        return DesiredService(key=self.key, revision=self.revision, replicas=self.replicas)

    @property
    def script(self) -> str:
        return step_script([step.command for step in self.service.steps])


def step_script(commands: list[str]) -> str:
    """Steps run in order, each by the shell; the first that fails ends the replica."""
    return "set -e\n" + "\n".join(commands) + "\n"


def stage_script(stage: Stage) -> list[str]:
    return [step.command for step in stage.steps]


def service_ports(service: Service) -> tuple[int, ...]:
    """Declared ports, then ports that only paths or the health check name, in that order."""
    found: dict[int, None] = dict.fromkeys(p.number for p in service.network.ports)
    found.update(dict.fromkeys(p.port for p in service.network.paths if p.port is not None))
    if service.health is not None:
        found.setdefault(service.health.port)
    return tuple(found)


def probe_of(service: Service) -> Probe | None:
    """``healthEndpoint``; without one, a TCP connect to the port of the service's first path
    (it gets traffic: not before it listens); a service without paths (a worker: every
    service has port 3000 by default, listening or not) is healthy while it runs."""
    if service.health is not None:
        return Probe(service.health.kind.value, service.health.port, service.health.path)
    routed = [p.port for p in service.network.paths if p.port is not None]
    if routed:
        return Probe("tcp", routed[0])
    return None


def render_env(
    service: Service,
    *,
    workspace_id: int,
    team_id: int,
    workspace_env: Mapping[str, str],
    vault: Mapping[str, str],
) -> dict[str, str]:
    """The service's env with every ``${{ }}`` evaluated (checked before deploy, so complete)."""
    context = StaticContext(
        vault=vault,
        workspace_env=workspace_env,
        workspace_id=str(workspace_id),
        team_id=str(team_id),
    )
    return {name: template.render(context) for name, template in service.env.items()}


def service_runs(
    landscape: Landscape,
    *,
    workspace_id: int,
    team_id: int,
    workspace: Path,
    workspace_env: Mapping[str, str],
    vault_versions: Mapping[str, str],
    plans: PlanTable,
    replicas: Mapping[str, int],
) -> list[ServiceRun]:
    """Every service that runs a process (routes to URLs run none), with its revision."""
    runs = []
    for name, service in landscape.services.items():
        if service.kind is not ServiceKind.REACTIVE:
            continue
        plan = plans.get(service.plan)
        limits = None if plan is None else Limits(cpu=plan.cpu, memory_mib=plan.memory_mib)
        ports = service_ports(service)
        probe = probe_of(service)
        env_inputs = {
            key: [
                template.source,
                [
                    vault_versions.get(r.name)
                    if r.kind is RefKind.VAULT
                    else workspace_env.get(r.name)
                    if r.kind is RefKind.WORKSPACE_ENV
                    else None
                    for r in template.references
                ],
            ]
            for key, template in sorted(service.env.items())
        }
        identity = {
            "steps": [step.command for step in service.steps],
            "env": env_inputs,
            "ports": list(ports),
            "limits": None if limits is None else [limits.cpu, limits.memory_mib],
            "probe": None if probe is None else [probe.kind, probe.port, probe.path],
            "mount": service.mount_sub_path,
            "workspace": str(workspace),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        runs.append(
            ServiceRun(
                key=ServiceKey(workspace_id, name),
                team_id=team_id,
                workspace=workspace,
                service=service,
                revision=digest[:12],
                replicas=replicas.get(name, service.replicas),
                limits=limits,
                probe=probe,
                ports=ports,
            )
        )
    return runs
