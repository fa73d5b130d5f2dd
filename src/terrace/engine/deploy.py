"""Changing desired state: deploy, scale and tear down a workspace's landscape.

Each runs in the caller's unit of work, under a lock on the workspace row, and checks
everything before it writes: a bad landscape or scale is refused whole, and what runs keeps
running. The engine notices the new state on its next pass (the caller pokes it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from terrace.engine.checks import require_deployable
from terrace.engine.desired import ServiceRun, service_runs
from terrace.engine.plans import PlanTable
from terrace.errors import Conflict, InvalidInput
from terrace.sources.local import read_landscape
from terrace.spec.landscape import Landscape, ServiceKind
from terrace.spec.landscape_parser import parse_landscape
from terrace.store.tables import Deployment, Workspace
from terrace.store.workspaces import env_vars
from terrace.vault import Vault

__all__ = [
    "MAX_REPLICAS",
    "active_deployment",
    "deploy",
    "deployed_runs",
    "roll_back",
    "scale",
    "teardown",
]

MAX_REPLICAS = 100
"""The most replicas one service may have on this installation."""


def _lock(session: Session, workspace: Workspace) -> None:
    session.execute(
        select(Workspace.id).where(Workspace.id == workspace.id).with_for_update()
    ).one()


def active_deployment(session: Session, workspace_id: int) -> Deployment | None:
    return session.scalar(
        select(Deployment).where(
            Deployment.workspace_id == workspace_id, Deployment.active.is_(True)
        )
    )


def deploy(
    session: Session,
    workspace: Workspace,
    *,
    profile: str | None,
    vault: Vault,
    plans: PlanTable,
    user_id: int | None,
) -> tuple[Deployment, Landscape]:
    """Read the workspace's landscape, check it against the team's vault, the workspace's env
    and the plans, and make it the desired state. :class:`SpecError` lists every problem."""
    found = read_landscape(Path(workspace.path), profile)
    landscape = found.parsed.value
    _lock(session, workspace)
    require_deployable(
        landscape,
        vault_names=vault.versions(session, workspace.team_id, workspace_id=workspace.id),
        env=env_vars(session, workspace.id),
        plans=plans,
    )
    previous = active_deployment(session, workspace.id)
    if previous is not None:
        previous.active = False
    row = Deployment(
        workspace_id=workspace.id,
        profile=landscape.profile,
        file=found.name,
        source=found.text,
        replicas="{}",
        active=True,
        created_by=user_id,
        replaces_id=None if previous is None else previous.id,
    )
    session.add(row)
    session.flush()
    return row, landscape


def roll_back(session: Session, workspace: Workspace, deployment_id: int, reason: str) -> bool:
    """Deployment ``deployment_id`` failed its rollout: make the one it replaced the desired
    state again, and keep ``reason``. False (and nothing changed) when it is no longer the
    active one, or replaced nothing that still exists."""
    _lock(session, workspace)
    row = active_deployment(session, workspace.id)
    if row is None or row.id != deployment_id or row.replaces_id is None:
        return False
    previous = session.get(Deployment, row.replaces_id)
    if previous is None or previous.workspace_id != workspace.id:
        return False
    row.active, row.failure = False, reason
    previous.active = True
    return True


def scale(session: Session, workspace: Workspace, replicas: Mapping[str, int]) -> Deployment:
    """Set the replica count of some services of the deployed landscape."""
    _lock(session, workspace)
    row = active_deployment(session, workspace.id)
    if row is None:
        raise Conflict("the landscape is not deployed: deploy it before scaling")
    landscape = parse_landscape(row.source, file=row.file, profile=row.profile).value
    for name, count in replicas.items():
        service = landscape.services.get(name)
        if service is None or service.kind is not ServiceKind.REACTIVE:
            known = ", ".join(
                n for n, s in landscape.services.items() if s.kind is ServiceKind.REACTIVE
            )
            raise InvalidInput(
                f"the deployed landscape has no service {name!r} that runs replicas "
                f"(services: {known or 'none'})",
                field=name,
            )
        if not 0 <= count <= MAX_REPLICAS:
            raise InvalidInput(
                f"replicas must be between 0 and {MAX_REPLICAS}, not {count}", field=name
            )
    current = {str(k): int(v) for k, v in json.loads(row.replicas).items()}
    current.update(replicas)
    row.replicas = json.dumps(current, sort_keys=True)
    return row


def teardown(session: Session, workspace: Workspace) -> bool:
    """Nothing of the landscape should run; False if nothing was deployed."""
    _lock(session, workspace)
    row = active_deployment(session, workspace.id)
    if row is None:
        return False
    row.active = False
    return True


def deployed_runs(
    session: Session,
    *,
    workspace: Workspace,
    deployment: Deployment,
    landscape: Landscape,
    vault: Vault,
    plans: PlanTable,
) -> list[ServiceRun]:
    """What a deployment asks to run now, with each service's revision as of the workspace's
    env vars and the team's secrets today (what the engine converges to)."""
    overrides = {str(k): int(v) for k, v in json.loads(deployment.replicas).items()}
    return service_runs(
        landscape,
        workspace_id=workspace.id,
        team_id=workspace.team_id,
        workspace=Path(workspace.path),
        workspace_env=env_vars(session, workspace.id),
        vault_versions=vault.versions(session, workspace.team_id, workspace_id=workspace.id),
        plans=plans,
        replicas=overrides,
    )
