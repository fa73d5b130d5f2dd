"""Users and their API keys: ``/api/users``, ``/api/keys``."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from sqlalchemy import select

from terrace.api.auth import CurrentCaller, require_cluster_admin
from terrace.api.context import context
from terrace.api.models import KeyCreate, KeyCreated, KeyId, KeyOut, UserCreate, UserOut
from terrace.errors import InvalidInput, NotFound
from terrace.store.tables import ApiKey, User, utcnow
from terrace.store.tenancy import create_user, issue_key

router = APIRouter(tags=["users and keys"])


@router.get("/users/me", summary="Who am I")
def me(request: Request, caller: CurrentCaller) -> UserOut:
    with context(request).db.session() as session:
        return UserOut.model_validate(session.get(User, caller.user_id))


@router.get("/users", summary="List users (cluster admins)")
def list_users(request: Request, caller: CurrentCaller) -> list[UserOut]:
    require_cluster_admin(caller)
    with context(request).db.session() as session:
        return [UserOut.model_validate(u) for u in session.scalars(select(User).order_by(User.id))]


@router.post(
    "/users", status_code=status.HTTP_201_CREATED, summary="Create a user (cluster admins)"
)
def add_user(request: Request, caller: CurrentCaller, body: UserCreate) -> UserOut:
    require_cluster_admin(caller)
    with context(request).db.session() as session:
        user = create_user(
            session, name=body.name, email=body.email, cluster_admin=body.cluster_admin
        )
        return UserOut.model_validate(user)


@router.post(
    "/keys",
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key",
    description="The key is in this response only; Terrace keeps just its SHA-256.",
)
def create_key(request: Request, caller: CurrentCaller, body: KeyCreate) -> KeyCreated:
    owner = body.user_id or caller.user_id
    if owner != caller.user_id:
        require_cluster_admin(caller)
    # A key cannot outlive the key that made it: by default it expires with it.
    expires_at = body.expires_at or caller.key_expires_at
    if caller.key_expires_at and expires_at and expires_at > caller.key_expires_at:
        raise InvalidInput(
            f"expiresAt may not be later than the expiry of the key you are using "
            f"({caller.key_expires_at.isoformat()})",
            field="expiresAt",
        )
    with context(request).db.session() as session:
        if session.get(User, owner) is None:
            raise NotFound(f"no user {owner}")
        row, key = issue_key(session, user_id=owner, name=body.name, expires_at=expires_at)
        return KeyCreated.model_validate({**KeyOut.model_validate(row).model_dump(), "key": key})


@router.get("/keys", summary="List API keys", description="Yours; a cluster admin sees every key.")
def list_keys(request: Request, caller: CurrentCaller) -> list[KeyOut]:
    query = select(ApiKey).order_by(ApiKey.id)
    if not caller.cluster_admin:
        query = query.where(ApiKey.user_id == caller.user_id)
    with context(request).db.session() as session:
        return [KeyOut.model_validate(row) for row in session.scalars(query)]


@router.delete("/keys/{keyId}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key")
def revoke_key(request: Request, caller: CurrentCaller, key_id: KeyId) -> None:
    with context(request).db.session() as session:
        row = session.get(ApiKey, key_id, with_for_update=True)
        if row is None or (row.user_id != caller.user_id and not caller.cluster_admin):
            raise NotFound(f"no API key {key_id}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()


__all__ = ["router"]
