"""Teams and their members: ``/api/teams``."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from sqlalchemy import select

from terrace.api.auth import CurrentCaller, require_team
from terrace.api.context import context
from terrace.api.models import MemberAdd, MemberOut, MemberRole, TeamCreate, TeamId, TeamOut, UserId
from terrace.errors import InvalidInput, NotFound
from terrace.store.roles import Role
from terrace.store.tables import Membership, Team, User, Workspace
from terrace.store.tenancy import (
    add_member,
    create_team,
    membership,
    remove_member,
    set_role,
)

router = APIRouter(prefix="/teams", tags=["teams"])


def _team_out(team: Team, role: str | None) -> TeamOut:
    return TeamOut(
        id=team.id, name=team.name, created_at=team.created_at, role=Role(role) if role else None
    )


def _member_out(row: Membership, user: User) -> MemberOut:
    return MemberOut(
        user_id=user.id,
        name=user.name,
        email=user.email,
        role=Role(row.role),
        created_at=row.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a team",
    description="You become its admin.",
)
def create(request: Request, caller: CurrentCaller, body: TeamCreate) -> TeamOut:
    with context(request).db.session() as session:
        team = create_team(session, name=body.name, admin_user_id=caller.user_id)
        return _team_out(team, Role.ADMIN)


@router.get("", summary="List teams", description="Yours; a cluster admin sees every team.")
def list_teams(request: Request, caller: CurrentCaller) -> list[TeamOut]:
    query = select(Team, Membership.role).order_by(Team.id)
    member = (Membership.team_id == Team.id) & (Membership.user_id == caller.user_id)
    # A cluster admin sees every team (with no role where not a member); others only theirs.
    query = (
        query.outerjoin(Membership, member)
        if caller.cluster_admin
        else query.join(Membership, member)
    )
    with context(request).db.session() as session:
        rows: list[tuple[Team, str | None]] = [(row[0], row[1]) for row in session.execute(query)]
        return [_team_out(team, role) for team, role in rows]


@router.get("/{teamId}", summary="Get a team")
def get(request: Request, caller: CurrentCaller, team_id: TeamId) -> TeamOut:
    with context(request).db.session() as session:
        team = require_team(session, caller, team_id, Role.VIEWER)
        row = membership(session, team_id, caller.user_id)
        return _team_out(team, row.role if row else None)


@router.delete(
    "/{teamId}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a team and its workspaces"
)
def delete(request: Request, caller: CurrentCaller, team_id: TeamId) -> None:
    ctx = context(request)
    with ctx.db.session() as session:
        team = require_team(session, caller, team_id, Role.ADMIN)
        workspaces = list(session.scalars(select(Workspace).where(Workspace.team_id == team_id)))
        session.delete(team)
    for workspace in workspaces:
        ctx.remove_workspace_files(workspace)


@router.get("/{teamId}/members", summary="List a team's members")
def members(request: Request, caller: CurrentCaller, team_id: TeamId) -> list[MemberOut]:
    with context(request).db.session() as session:
        require_team(session, caller, team_id, Role.VIEWER)
        rows = session.execute(
            select(Membership, User)
            .join(User, User.id == Membership.user_id)
            .where(Membership.team_id == team_id)
            .order_by(User.id)
        ).all()
        return [_member_out(row, user) for row, user in rows]


@router.post(
    "/{teamId}/members", status_code=status.HTTP_201_CREATED, summary="Add a member (team admins)"
)
def add(request: Request, caller: CurrentCaller, team_id: TeamId, body: MemberAdd) -> MemberOut:
    if (body.user_id is None) == (body.email is None):
        raise InvalidInput("give exactly one of userId and email", field="userId")
    with context(request).db.session() as session:
        require_team(session, caller, team_id, Role.ADMIN)
        if body.email is not None:
            user = session.scalar(select(User).where(User.email == body.email.lower()))
            if user is None:
                raise NotFound(f"no user with email {body.email!r}")
        else:
            user = session.get(User, body.user_id)
            if user is None:
                raise NotFound(f"no user {body.user_id}")
        row = add_member(session, team_id=team_id, user_id=user.id, role=body.role)
        return _member_out(row, user)


@router.patch("/{teamId}/members/{userId}", summary="Change a member's role (team admins)")
def change_role(
    request: Request, caller: CurrentCaller, team_id: TeamId, user_id: UserId, body: MemberRole
) -> MemberOut:
    with context(request).db.session() as session:
        require_team(session, caller, team_id, Role.ADMIN)
        row = set_role(session, team_id=team_id, user_id=user_id, role=body.role)
        user = session.get(User, user_id)
        assert user is not None
        return _member_out(row, user)


@router.delete(
    "/{teamId}/members/{userId}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a member (team admins; anyone may leave)",
)
def remove(request: Request, caller: CurrentCaller, team_id: TeamId, user_id: UserId) -> None:
    with context(request).db.session() as session:
        leaving = user_id == caller.user_id
        require_team(session, caller, team_id, Role.VIEWER if leaving else Role.ADMIN)
        remove_member(session, team_id=team_id, user_id=user_id)


__all__ = ["router"]
