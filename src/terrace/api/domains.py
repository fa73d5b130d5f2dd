"""A workspace's custom domains: ``/api/workspaces/{id}/domains``. The router serves each with
the workspace's landscape, as it serves ``<workspace>-3000.<domain>``."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from sqlalchemy import select

from terrace.api.auth import CurrentCaller, require_workspace
from terrace.api.context import context
from terrace.api.models import WorkspaceId
from terrace.errors import Conflict, InvalidInput
from terrace.router.table import normalize_host
from terrace.store.db import flush_unique
from terrace.store.roles import Role
from terrace.store.tables import Domain

__all__ = ["router"]

router = APIRouter(prefix="/workspaces", tags=["domains"])

DomainName = Annotated[str, Path(min_length=3, max_length=253)]
_GENERATED = re.compile(r"^[0-9]+-[0-9]+\.")
"""``<workspace>-<port>.<domain>``: the hosts the platform itself gives landscapes."""


def _checked(name: str) -> str:
    host = normalize_host(name)
    if host is None or host != name.lower() or "." not in host:
        raise InvalidInput(
            f"{name!r} is not a domain name such as shop.example.com", field="domain"
        )
    if _GENERATED.match(host):
        raise InvalidInput(
            f"{name!r} has the form of a workspace's own host (<workspace>-<port>.<domain>)",
            field="domain",
        )
    return host


@router.get("/{workspaceId}/domains", summary="List the workspace's custom domains")
def list_domains(request: Request, caller: CurrentCaller, workspace_id: WorkspaceId) -> list[str]:
    with context(request).db.session() as session:
        require_workspace(session, caller, workspace_id, Role.VIEWER)
        return list(
            session.scalars(
                select(Domain.name).where(Domain.workspace_id == workspace_id).order_by(Domain.name)
            )
        )


@router.put(
    "/{workspaceId}/domains/{domain}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Serve the workspace's landscape on a custom domain too",
    description="Point the domain's DNS at the router. A domain serves one workspace: 409 if "
    "another has it.",
)
def add_domain(
    request: Request, caller: CurrentCaller, workspace_id: WorkspaceId, domain: DomainName
) -> None:
    ctx = context(request)
    host = _checked(domain)
    with ctx.db.session() as session:
        require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        found = session.scalar(select(Domain).where(Domain.name == host))
        if found is not None:
            if found.workspace_id == workspace_id:
                return
            raise Conflict(f"the domain {host} is already served for another workspace")
        session.add(Domain(name=host, workspace_id=workspace_id))
        flush_unique(session, f"the domain {host} is already served for another workspace")
    if ctx.engine is not None:
        ctx.engine.poke()


@router.delete(
    "/{workspaceId}/domains/{domain}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Stop serving a custom domain",
    description="Idempotent: removing a domain the workspace does not have changes nothing.",
)
def remove_domain(
    request: Request, caller: CurrentCaller, workspace_id: WorkspaceId, domain: DomainName
) -> None:
    ctx = context(request)
    with ctx.db.session() as session:
        require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        found = session.scalar(
            select(Domain).where(Domain.name == domain.lower(), Domain.workspace_id == workspace_id)
        )
        if found is not None:
            session.delete(found)
    if ctx.engine is not None:
        ctx.engine.poke()
