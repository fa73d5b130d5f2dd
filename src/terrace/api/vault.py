"""Team and workspace secrets, and the vault's key ring: ``/api/vault``.

Values go in and never come out: list shows names and timestamps only.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session

from terrace.api.auth import CurrentCaller, require_cluster_admin, require_team
from terrace.api.context import context
from terrace.api.models import (
    KeyId,
    SecretName,
    SecretOut,
    SecretValue,
    TeamId,
    VaultKeyOut,
    WorkspaceId,
)
from terrace.errors import NotFound
from terrace.store.roles import Role
from terrace.store.tables import Workspace
from terrace.store.tenancy import Caller
from terrace.vault import SecretInfo, SecretRef, VaultKeyInfo

router = APIRouter(prefix="/vault", tags=["vault"])


def _secret_out(info: SecretInfo) -> SecretOut:
    return SecretOut.model_validate(info)


def _key_out(info: VaultKeyInfo) -> VaultKeyOut:
    return VaultKeyOut.model_validate(info)


def _scope(
    session: Session, caller: Caller, team_id: int, workspace_id: int | None, needed: Role
) -> None:
    require_team(session, caller, team_id, needed)
    if workspace_id is not None:
        workspace = session.get(Workspace, workspace_id)
        if workspace is None or workspace.team_id != team_id:
            raise NotFound(f"no workspace {workspace_id}")


def _list(
    request: Request, caller: Caller, team_id: int, workspace_id: int | None
) -> list[SecretOut]:
    ctx = context(request)
    with ctx.db.session() as session:
        _scope(session, caller, team_id, workspace_id, Role.VIEWER)
        return [
            _secret_out(i)
            for i in ctx.vault.list_secrets(session, team_id, workspace_id=workspace_id)
        ]


def _put(
    request: Request, response: Response, caller: Caller, ref: SecretRef, body: SecretValue
) -> SecretOut:
    ctx = context(request)
    with ctx.db.session() as session:
        _scope(session, caller, ref.team_id, ref.workspace_id, Role.DEVELOPER)
        info, created = ctx.vault.put(session, ref, body.value)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return _secret_out(info)


def _delete(request: Request, caller: Caller, ref: SecretRef) -> None:
    ctx = context(request)
    with ctx.db.session() as session:
        _scope(session, caller, ref.team_id, ref.workspace_id, Role.DEVELOPER)
        ctx.vault.delete(session, ref)


PUT_RESPONSES: dict[int | str, dict[str, object]] = {
    201: {"description": "Created", "model": SecretOut},
    200: {"description": "Replaced", "model": SecretOut},
}


@router.get("/teams/{teamId}/secrets", summary="List a team's secrets (names only)")
def list_team(request: Request, caller: CurrentCaller, team_id: TeamId) -> list[SecretOut]:
    return _list(request, caller, team_id, None)


@router.put("/teams/{teamId}/secrets/{name}", summary="Set a team secret", responses=PUT_RESPONSES)
def put_team(
    request: Request,
    response: Response,
    caller: CurrentCaller,
    team_id: TeamId,
    name: SecretName,
    body: SecretValue,
) -> SecretOut:
    return _put(request, response, caller, SecretRef(team_id, name), body)


@router.delete(
    "/teams/{teamId}/secrets/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a team secret",
)
def delete_team(request: Request, caller: CurrentCaller, team_id: TeamId, name: SecretName) -> None:
    _delete(request, caller, SecretRef(team_id, name))


@router.get(
    "/teams/{teamId}/workspaces/{workspaceId}/secrets",
    summary="List a workspace's secrets (names only)",
)
def list_workspace(
    request: Request, caller: CurrentCaller, team_id: TeamId, workspace_id: WorkspaceId
) -> list[SecretOut]:
    return _list(request, caller, team_id, workspace_id)


@router.put(
    "/teams/{teamId}/workspaces/{workspaceId}/secrets/{name}",
    summary="Set a workspace secret (it overrides a team secret of the same name)",
    responses=PUT_RESPONSES,
)
def put_workspace(
    request: Request,
    response: Response,
    caller: CurrentCaller,
    team_id: TeamId,
    workspace_id: WorkspaceId,
    name: SecretName,
    body: SecretValue,
) -> SecretOut:
    return _put(request, response, caller, SecretRef(team_id, name, workspace_id), body)


@router.delete(
    "/teams/{teamId}/workspaces/{workspaceId}/secrets/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a workspace secret",
)
def delete_workspace(
    request: Request,
    caller: CurrentCaller,
    team_id: TeamId,
    workspace_id: WorkspaceId,
    name: SecretName,
) -> None:
    _delete(request, caller, SecretRef(team_id, name, workspace_id))


@router.get("/keys", summary="List the vault's data keys (cluster admins)")
def list_keys(request: Request, caller: CurrentCaller) -> list[VaultKeyOut]:
    require_cluster_admin(caller)
    ctx = context(request)
    with ctx.db.session() as session:
        return [_key_out(info) for info in ctx.vault.keys(session)]


@router.post("/keys/rotate", summary="Add a data key and re-seal every secret (cluster admins)")
def rotate(request: Request, caller: CurrentCaller) -> VaultKeyOut:
    require_cluster_admin(caller)
    ctx = context(request)
    with ctx.db.session() as session:
        return _key_out(ctx.vault.rotate(session))


@router.post("/keys/{keyId}/retire", summary="Erase an old data key (cluster admins)")
def retire(request: Request, caller: CurrentCaller, key_id: KeyId) -> VaultKeyOut:
    require_cluster_admin(caller)
    ctx = context(request)
    with ctx.db.session() as session:
        return _key_out(ctx.vault.retire(session, key_id))


__all__ = ["router"]
