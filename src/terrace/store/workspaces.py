"""Workspaces and their environment variables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from terrace.errors import Conflict
from terrace.store.db import flush_unique
from terrace.store.tables import EnvVar, Workspace, utcnow

__all__ = ["add_workspace", "delete_env", "env_vars", "put_env", "require_free_name"]


def require_free_name(
    session: Session, team_id: int, name: str, *, other_than: int | None = None
) -> None:
    """:class:`Conflict` if the team has another workspace called ``name``."""
    query = select(Workspace.id).where(Workspace.team_id == team_id, Workspace.name == name)
    if other_than is not None:
        query = query.where(Workspace.id != other_than)
    if session.scalar(query) is not None:
        raise Conflict(f"team {team_id} already has a workspace named {name!r}")


def add_workspace(session: Session, workspace: Workspace) -> Workspace:
    """Insert a workspace; a name taken meanwhile by another request is a Conflict too."""
    require_free_name(session, workspace.team_id, workspace.name)
    session.add(workspace)
    flush_unique(
        session, f"team {workspace.team_id} already has a workspace named {workspace.name!r}"
    )
    return workspace


def env_vars(session: Session, workspace_id: int) -> dict[str, str]:
    rows = session.scalars(
        select(EnvVar).where(EnvVar.workspace_id == workspace_id).order_by(EnvVar.name)
    )
    return {row.name: row.value for row in rows}


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
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
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
