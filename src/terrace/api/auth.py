"""Who is calling, and may they? Authentication and the role checks every endpoint uses.

Another team's object is always :class:`NotFound`, worded exactly as for an object that does not
exist, so a caller cannot learn what other teams have.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from terrace.api.context import context
from terrace.errors import Forbidden, NotFound, Unauthenticated
from terrace.store.roles import Role
from terrace.store.tables import Team, Workspace
from terrace.store.tenancy import Caller, authenticate, membership

__all__ = ["CurrentCaller", "require_cluster_admin", "require_team", "require_workspace"]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer trk_...`")


def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthenticated("send an API key as 'Authorization: Bearer <key>'")
    with context(request).db.session() as session:
        return authenticate(session, credentials.credentials)


CurrentCaller = Annotated[Caller, Depends(current_caller)]


def require_cluster_admin(caller: Caller) -> None:
    if not caller.cluster_admin:
        raise Forbidden("only cluster admins may do this")


def require_team(session: Session, caller: Caller, team_id: int, needed: Role) -> Team:
    """The team, if the caller may act in it with ``needed``; else NotFound or Forbidden."""
    team = session.get(Team, team_id)
    member = membership(session, team_id, caller.user_id) if team is not None else None
    if team is None or (member is None and not caller.cluster_admin):
        raise NotFound(f"no team {team_id}")
    if not caller.cluster_admin:
        assert member is not None
        role = Role(member.role)
        if not role.allows(needed):
            raise Forbidden(
                f"this needs the {needed.value} role in team {team_id}; yours is {role.value}"
            )
    return team


def require_workspace(
    session: Session, caller: Caller, workspace_id: int, needed: Role
) -> Workspace:
    """The workspace, if the caller may act on it with ``needed`` in its team."""
    workspace = session.get(Workspace, workspace_id)
    if workspace is None:
        raise NotFound(f"no workspace {workspace_id}")
    try:
        require_team(session, caller, workspace.team_id, needed)
    except NotFound:
        raise NotFound(f"no workspace {workspace_id}") from None
    return workspace
