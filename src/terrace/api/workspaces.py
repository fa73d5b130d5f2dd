"""Workspaces, their env vars and their landscape: ``/api/workspaces``."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, status
from sqlalchemy import select

from terrace.api.auth import CurrentCaller, require_team, require_workspace
from terrace.api.context import context
from terrace.api.models import (
    EnvName,
    EnvVarItem,
    Model,
    TeamId,
    WorkspaceCreate,
    WorkspaceId,
    WorkspaceOut,
    WorkspacePatch,
)
from terrace.api.problems import SpecProblem
from terrace.errors import Forbidden, InvalidInput
from terrace.sources import check_local_folder, checkout
from terrace.sources.local import read_landscape
from terrace.spec.names import PROFILE
from terrace.store.db import flush_unique
from terrace.store.roles import Role
from terrace.store.tables import Workspace, utcnow
from terrace.store.tenancy import Caller
from terrace.store.workspaces import add_workspace, delete_env, env_vars, put_env, require_free_name

router = APIRouter(prefix="/workspaces", tags=["workspaces"])

INCOMING_PREFIX = ".incoming-"
"""Clones in progress live in ``workspaces/.incoming-<random>`` until their row commits."""

MAX_ENV_VARS = 1000


def workspace_out(row: Workspace, caller: Caller) -> WorkspaceOut:
    return WorkspaceOut(
        id=row.id,
        team_id=row.team_id,
        name=row.name,
        source="git" if row.source == "git" else "local",
        git_url=row.git_url,
        git_ref=row.git_ref,
        commit=row.commit,
        # A server path means something only to whoever administers the server.
        path=row.path if row.source == "local" and caller.cluster_admin else None,
        created_at=row.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a workspace",
    description="From `gitUrl` (+ `gitRef`), or from a server folder `path` (cluster admins).",
)
def create(request: Request, caller: CurrentCaller, body: WorkspaceCreate) -> WorkspaceOut:
    ctx = context(request)
    if (body.git_url is None) == (body.path is None):
        raise InvalidInput("give exactly one of gitUrl and path", field="gitUrl")
    if body.path is not None and body.git_ref is not None:
        raise InvalidInput("gitRef goes with gitUrl, not with path", field="gitRef")
    with ctx.db.session() as session:
        require_team(session, caller, body.team_id, Role.DEVELOPER)
        require_free_name(session, body.team_id, body.name)  # before a clone that may be long
    row = Workspace(
        team_id=body.team_id, name=body.name, created_by=caller.user_id, created_at=utcnow()
    )
    incoming: Path | None = None
    if body.path is not None:
        if not caller.cluster_admin:
            raise Forbidden("only cluster admins may create a workspace from a server folder")
        row.source, row.path = "local", str(check_local_folder(body.path))
    else:
        assert body.git_url is not None
        incoming = ctx.workspaces_dir / f"{INCOMING_PREFIX}{secrets.token_hex(8)}"
        # The clone runs outside any transaction: it may take minutes.
        done = checkout(body.git_url, body.git_ref, incoming, allow_local=caller.cluster_admin)
        row.source, row.git_url, row.git_ref = "git", body.git_url, body.git_ref
        row.commit, row.path = done.commit, str(incoming)
    final: Path | None = None
    try:
        with ctx.db.session() as session:
            add_workspace(session, row)
            if incoming is not None:
                final = ctx.workspaces_dir / str(row.id)
                incoming.rename(final)
                row.path = str(final)
    except BaseException:
        for leftover in (incoming, final):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
        raise
    return workspace_out(row, caller)


@router.get("/team/{teamId}", summary="List a team's workspaces")
def list_for_team(request: Request, caller: CurrentCaller, team_id: TeamId) -> list[WorkspaceOut]:
    with context(request).db.session() as session:
        require_team(session, caller, team_id, Role.VIEWER)
        rows = session.scalars(
            select(Workspace).where(Workspace.team_id == team_id).order_by(Workspace.id)
        )
        return [workspace_out(row, caller) for row in rows]


@router.get("/{workspaceId}", summary="Get a workspace")
def get(request: Request, caller: CurrentCaller, workspace_id: WorkspaceId) -> WorkspaceOut:
    with context(request).db.session() as session:
        return workspace_out(require_workspace(session, caller, workspace_id, Role.VIEWER), caller)


@router.patch("/{workspaceId}", summary="Rename a workspace")
def rename(
    request: Request, caller: CurrentCaller, workspace_id: WorkspaceId, body: WorkspacePatch
) -> WorkspaceOut:
    with context(request).db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        require_free_name(session, row.team_id, body.name, other_than=row.id)
        row.name = body.name
        flush_unique(session, f"team {row.team_id} already has a workspace named {body.name!r}")
        return workspace_out(row, caller)


@router.delete(
    "/{workspaceId}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a workspace"
)
def delete(request: Request, caller: CurrentCaller, workspace_id: WorkspaceId) -> None:
    ctx = context(request)
    with ctx.db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        session.delete(row)
    ctx.remove_workspace_files(row)


@router.get("/{workspaceId}/env-vars", summary="List env vars")
def get_env(request: Request, caller: CurrentCaller, workspace_id: WorkspaceId) -> list[EnvVarItem]:
    with context(request).db.session() as session:
        require_workspace(session, caller, workspace_id, Role.VIEWER)
        return [EnvVarItem(name=k, value=v) for k, v in env_vars(session, workspace_id).items()]


@router.put(
    "/{workspaceId}/env-vars",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set env vars",
    description="Creates or replaces the given variables; the others stay.",
)
def set_env(
    request: Request,
    caller: CurrentCaller,
    workspace_id: WorkspaceId,
    body: Annotated[list[EnvVarItem], Body(max_length=MAX_ENV_VARS)],
) -> None:
    values: dict[str, str] = {}
    for index, item in enumerate(body):
        if item.name in values:
            raise InvalidInput(f"{item.name} is given twice", field=f"{index}.name")
        values[item.name] = item.value
    with context(request).db.session() as session:
        require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        put_env(session, workspace_id, values)


@router.delete(
    "/{workspaceId}/env-vars",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete env vars",
    description="The body lists the names; names that are not set are ignored.",
)
def delete_env_vars(
    request: Request,
    caller: CurrentCaller,
    workspace_id: WorkspaceId,
    body: Annotated[list[EnvName], Body(max_length=MAX_ENV_VARS)],
) -> None:
    with context(request).db.session() as session:
        require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        delete_env(session, workspace_id, body)


class ServiceSummary(Model):
    name: str
    kind: str
    replicas: int
    plan: int | None


class LandscapeOut(Model):
    file: str
    schema_version: str
    profile: str | None
    services: list[ServiceSummary]
    managed_services: list[str]
    vault_secrets: list[str]
    warnings: list[SpecProblem]


@router.get(
    "/{workspaceId}/landscape",
    summary="Read and check the workspace's landscape",
    description=(
        "Parses `ci.yml` (or `ci.<profile>.yml`); an invalid file is a 422 listing every problem."
    ),
)
def landscape(
    request: Request,
    caller: CurrentCaller,
    workspace_id: WorkspaceId,
    profile: Annotated[str | None, Query(max_length=64, pattern=PROFILE.pattern)] = None,
) -> LandscapeOut:
    with context(request).db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.VIEWER)
    parsed = read_landscape(Path(row.path), profile).parsed
    spec = parsed.value
    return LandscapeOut(
        file=spec.file,
        schema_version=spec.schema_version,
        profile=spec.profile,
        services=[
            ServiceSummary(name=s.name, kind=s.kind.value, replicas=s.replicas, plan=s.plan)
            for s in spec.services.values()
        ],
        managed_services=list(spec.managed_services),
        vault_secrets=sorted(spec.vault_names),
        warnings=[
            SpecProblem(file=w.file, line=w.line, column=w.column, path=w.path, message=w.message)
            for w in parsed.warnings
        ],
    )


__all__ = ["INCOMING_PREFIX", "router", "workspace_out"]
