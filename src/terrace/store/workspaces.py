"""Workspaces and their environment variables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from terrace.errors import Conflict, InvalidInput, NotFound
from terrace.spec.names import ENV_NAME
from terrace.store.db import flush_unique
from terrace.store.tables import EnvVar, Workspace, utcnow

__all__ = ["delete_env", "env_vars", "get_workspace", "put_env", "team_workspaces"]


def get_workspace(session: Session, workspace_id: int) -> Workspace:
    row = session.get(Workspace, workspace_id)
    if row is None:
        raise NotFound(f"no workspace {workspace_id}")
    return row


def team_workspaces(session: Session, team_id: int) -> list[Workspace]:
    return list(
        session.scalars(
            select(Workspace).where(Workspace.team_id == team_id).order_by(Workspace.id)
        )
    )


def add_workspace(session: Session, workspace: Workspace) -> Workspace:
    taken = select(Workspace.id).where(
        Workspace.team_id == workspace.team_id, Workspace.name == workspace.name
    )
    message = f"team {workspace.team_id} already has a workspace named {workspace.name!r}"
    if session.scalar(taken) is not None:
        raise Conflict(message)
    session.add(workspace)
    flush_unique(session, message)
    return workspace


def env_vars(session: Session, workspace_id: int) -> dict[str, str]:
    rows = session.scalars(
        select(EnvVar).where(EnvVar.workspace_id == workspace_id).order_by(EnvVar.name)
    )
    return {row.name: row.value for row in rows}


def check_env_name(name: str, field: str) -> None:
    if not ENV_NAME.match(name) or len(name) > 255:
        raise InvalidInput(
            f"{name!r} is not a valid environment variable name: use letters, digits and '_', "
            "not starting with a digit",
            field=field,
        )


def put_env(session: Session, workspace_id: int, values: Mapping[str, str]) -> None:
    """Set (create or replace) the given variables; leave the others as they are.

    One upsert statement, so two requests setting the same new name at once both succeed.
    """
    if not values:
        return
    now = utcnow()
    rows = [
        {"workspace_id": workspace_id, "name": name, "value": value, "updated_at": now}
        for name, value in values.items()
    ]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(EnvVar).values(rows)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[EnvVar.workspace_id, EnvVar.name],
            set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
        )
    )


def delete_env(session: Session, workspace_id: int, names: Iterable[str]) -> None:
    """Delete the named variables; names that are not set are ignored, as in Codesphere."""
    session.execute(
        delete(EnvVar).where(EnvVar.workspace_id == workspace_id, EnvVar.name.in_(list(names)))
    )
