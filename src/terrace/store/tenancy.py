"""Users, teams, memberships and API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from terrace.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from terrace.store.db import flush_unique
from terrace.store.roles import Role
from terrace.store.tables import ApiKey, Membership, Team, User, utcnow

__all__ = [
    "KEY_PREFIX",
    "add_member",
    "authenticate",
    "create_team",
    "create_user",
    "digest",
    "issue_key",
    "membership",
    "remove_member",
    "set_role",
]

KEY_PREFIX = "trk_"
"""Every API key starts with this, so secret scanners and humans can recognise one."""
SHOWN_PREFIX = 12
MAX_EMAIL = 254
MAX_KEY_LIFETIME = timedelta(days=3650)
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key, so reads do not all become writes."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the user and the key they used."""

    user_id: int
    key_id: int
    cluster_admin: bool
    key_expires_at: datetime | None = None


def digest(key: str) -> bytes:
    """The stored form of a key. Keys are 256 random bits, so a plain SHA-256 is enough."""
    return hashlib.sha256(key.encode()).digest()


def create_user(session: Session, *, name: str, email: str, cluster_admin: bool = False) -> User:
    email = email.strip().lower()
    if len(email) > MAX_EMAIL:
        raise InvalidInput(f"email may have at most {MAX_EMAIL} characters", field="email")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"a user with email {email!r} already exists")
    user = User(name=name, email=email, cluster_admin=cluster_admin, created_at=utcnow())
    session.add(user)
    flush_unique(session, f"a user with email {email!r} already exists")
    return user


def issue_key(
    session: Session, *, user_id: int, name: str, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """A new key for a user: the stored row and the key itself, which is never stored."""
    if expires_at is not None and not utcnow() < expires_at <= utcnow() + MAX_KEY_LIFETIME:
        raise InvalidInput(
            f"expiresAt must be in the future, and at most {MAX_KEY_LIFETIME.days} days away",
            field="expiresAt",
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return _store_key(session, user_id=user_id, name=name, key=key, expires_at=expires_at), key


def adopt_key(session: Session, *, user_id: int, name: str, key: str) -> ApiKey:
    """Make a key chosen outside Terrace (``TERRACE_ADMIN_KEY``) the user's only key of that
    name: the key it replaces, if any, is revoked."""
    row = session.scalar(select(ApiKey).where(ApiKey.digest == digest(key)))
    session.execute(
        update(ApiKey)
        .where(
            ApiKey.user_id == user_id,
            ApiKey.name == name,
            ApiKey.revoked_at.is_(None),
            ApiKey.digest != digest(key),
        )
        .values(revoked_at=utcnow())
    )
    if row is not None:
        return row
    return _store_key(session, user_id=user_id, name=name, key=key, expires_at=None)


def _store_key(
    session: Session, *, user_id: int, name: str, key: str, expires_at: datetime | None
) -> ApiKey:
    row = ApiKey(
        user_id=user_id,
        name=name,
        prefix=key[:SHOWN_PREFIX],
        digest=digest(key),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row


def authenticate(session: Session, key: str) -> Caller:
    """The caller a key belongs to, or :class:`Unauthenticated` (never saying which check)."""
    found = session.execute(
        select(ApiKey, User)
        .join(User, User.id == ApiKey.user_id)
        .where(ApiKey.digest == digest(key))
    ).first()
    now = utcnow()
    if found is None:
        raise Unauthenticated("the API key is not valid")
    row, user = found
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        raise Unauthenticated("the API key is not valid")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return Caller(
        user_id=user.id,
        key_id=row.id,
        cluster_admin=user.cluster_admin,
        key_expires_at=row.expires_at,
    )


def create_team(session: Session, *, name: str, admin_user_id: int) -> Team:
    if session.scalar(select(Team.id).where(func.lower(Team.name) == name.lower())) is not None:
        raise Conflict(f"a team named {name!r} already exists")
    team = Team(name=name, created_at=utcnow())
    session.add(team)
    flush_unique(session, f"a team named {name!r} already exists")
    session.add(
        Membership(team_id=team.id, user_id=admin_user_id, role=Role.ADMIN, created_at=utcnow())
    )
    session.flush()
    return team


def membership(session: Session, team_id: int, user_id: int) -> Membership | None:
    return session.get(Membership, (team_id, user_id))


def add_member(session: Session, *, team_id: int, user_id: int, role: Role) -> Membership:
    if session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}")
    if membership(session, team_id, user_id) is not None:
        raise Conflict(f"user {user_id} is already a member of team {team_id}")
    row = Membership(team_id=team_id, user_id=user_id, role=role, created_at=utcnow())
    session.add(row)
    flush_unique(session, f"user {user_id} is already a member of team {team_id}")
    return row


def set_role(session: Session, *, team_id: int, user_id: int, role: Role) -> Membership:
    _lock_team(session, team_id)
    row = _member(session, team_id, user_id, lock=True)
    if row.role == Role.ADMIN and role != Role.ADMIN:
        _keep_an_admin(session, team_id)
    row.role = role
    session.flush()
    return row


def remove_member(session: Session, *, team_id: int, user_id: int) -> None:
    _lock_team(session, team_id)
    row = _member(session, team_id, user_id, lock=True)
    if row.role == Role.ADMIN:
        _keep_an_admin(session, team_id)
    session.delete(row)
    session.flush()


def _lock_team(session: Session, team_id: int) -> None:
    """Membership changes of one team take turns (on SQLite every write transaction does)."""
    if session.get(Team, team_id, with_for_update=True) is None:
        raise NotFound(f"no team {team_id}")


def _member(session: Session, team_id: int, user_id: int, *, lock: bool) -> Membership:
    row = session.get(Membership, (team_id, user_id), with_for_update=lock)
    if row is None:
        raise NotFound(f"user {user_id} is not a member of team {team_id}")
    return row


def _keep_an_admin(session: Session, team_id: int) -> None:
    admins = session.scalars(
        select(Membership.user_id).where(
            Membership.team_id == team_id, Membership.role == Role.ADMIN
        )
    ).all()
    if len(admins) <= 1:
        raise Conflict(f"team {team_id} must keep at least one admin")
