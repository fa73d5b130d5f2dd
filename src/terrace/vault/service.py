"""The vault over the store: put, list, delete and reveal secrets; rotate and retire keys."""

from __future__ import annotations

import secrets as random
from dataclasses import dataclass
from datetime import datetime
from threading import Lock

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from terrace.errors import Conflict, InvalidInput, NotFound, VaultError
from terrace.spec.names import SECRET_NAME
from terrace.store.tables import Secret, VaultKey, utcnow
from terrace.vault.crypto import KEY_BYTES, MasterKey, open_sealed, seal

__all__ = ["SecretInfo", "SecretRef", "Vault", "VaultKeyInfo"]


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: a team's vault, or one workspace's within it."""

    team_id: int
    name: str
    workspace_id: int | None = None

    @property
    def scope(self) -> str:
        return "team" if self.workspace_id is None else f"ws:{self.workspace_id}"

    def aad(self) -> bytes:
        # Binds the ciphertext to its row: a blob copied to another team, workspace or name
        # does not open.
        return f"terrace/secret/{self.team_id}/{self.scope}/{self.name}".encode()


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown about a secret: never its value."""

    name: str
    workspace_id: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class VaultKeyInfo:
    id: int
    created_at: datetime
    retired_at: datetime | None
    primary: bool
    secrets: int


def _info(row: Secret) -> SecretInfo:
    return SecretInfo(row.name, row.workspace_id, row.created_at, row.updated_at)


def check_secret_name(name: str) -> None:
    if not SECRET_NAME.match(name):
        raise InvalidInput(
            f"{name!r} is not a valid secret name: use letters, digits, '_', '.' and '-' "
            "(at most 128 characters, not starting with '.' or '-')",
            field="name",
        )


class Vault:
    """Seals and opens secrets. Holds only the master key and a cache of unwrapped data keys."""

    def __init__(self, master: MasterKey) -> None:
        self._master = master
        self._keys: dict[int, bytes] = {}
        self._lock = Lock()

    # --- secrets ---------------------------------------------------------------------------

    def put(self, session: Session, ref: SecretRef, value: str) -> tuple[SecretInfo, bool]:
        """Create or replace a secret. Returns its info and whether it was created."""
        check_secret_name(ref.name)
        key_id, key = self._primary(session)
        sealed = seal(key, value.encode(), ref.aad())
        now = utcnow()
        row = self._row(session, ref)
        if row is None:
            row = Secret(
                team_id=ref.team_id,
                scope=ref.scope,
                workspace_id=ref.workspace_id,
                name=ref.name,
                key_id=key_id,
                sealed=sealed,
                created_at=now,
                updated_at=now,
            )
            try:
                with session.begin_nested():
                    session.add(row)
                    session.flush()
                return _info(row), True
            except IntegrityError:  # another request created it meanwhile: replace theirs
                row = self._row(session, ref)
                if row is None:  # pragma: no cover - it was deleted again just as fast
                    raise Conflict(f"secret {ref.name!r} changed concurrently; retry") from None
        row.key_id, row.sealed, row.updated_at = key_id, sealed, now
        session.flush()
        return _info(row), False

    def delete(self, session: Session, ref: SecretRef) -> None:
        row = self._row(session, ref)
        if row is None:
            raise NotFound(f"no secret named {ref.name!r}")
        session.delete(row)

    def list_secrets(
        self, session: Session, team_id: int, *, workspace_id: int | None = None
    ) -> list[SecretInfo]:
        scope = SecretRef(team_id, "", workspace_id).scope
        rows = session.scalars(
            select(Secret)
            .where(Secret.team_id == team_id, Secret.scope == scope)
            .order_by(Secret.name)
        )
        return [_info(row) for row in rows]

    def reveal(
        self, session: Session, team_id: int, *, workspace_id: int | None = None
    ) -> dict[str, str]:
        """Every secret a workspace sees, opened: its team's, then its own (which win).

        Only the code that injects values into a running service calls this.
        """
        scopes = ["team"] if workspace_id is None else ["team", f"ws:{workspace_id}"]
        rows = session.scalars(
            select(Secret).where(Secret.team_id == team_id, Secret.scope.in_(scopes))
        ).all()
        values: dict[str, str] = {}
        for row in sorted(rows, key=lambda r: r.scope != "team"):
            ref = SecretRef(row.team_id, row.name, row.workspace_id)
            key = self._key(session, row.key_id)
            values[row.name] = open_sealed(key, row.sealed, ref.aad()).decode()
        return values

    def versions(
        self, session: Session, team_id: int, *, workspace_id: int | None = None
    ) -> dict[str, str]:
        """Which version of each secret a workspace sees (the value wins as in :meth:`reveal`),
        without opening any: a deploy's revision changes when a secret it uses does."""
        scopes = ["team"] if workspace_id is None else ["team", f"ws:{workspace_id}"]
        rows = session.execute(
            select(Secret.name, Secret.scope, Secret.id, Secret.updated_at).where(
                Secret.team_id == team_id, Secret.scope.in_(scopes)
            )
        ).all()
        return {
            name: f"{scope}:{row_id}:{updated.isoformat()}"
            for name, scope, row_id, updated in sorted(rows, key=lambda r: r[1] != "team")
        }

    # --- keys ------------------------------------------------------------------------------

    def keys(self, session: Session) -> list[VaultKeyInfo]:
        counts = dict(
            session.execute(select(Secret.key_id, func.count()).group_by(Secret.key_id)).all()
        )
        rows = session.scalars(select(VaultKey).order_by(VaultKey.id)).all()
        live = [row.id for row in rows if row.retired_at is None]
        primary = max(live, default=None)
        return [
            VaultKeyInfo(
                row.id, row.created_at, row.retired_at, row.id == primary, counts.get(row.id, 0)
            )
            for row in rows
        ]

    def rotate(self, session: Session) -> VaultKeyInfo:
        """Add a data key and re-seal every secret under it. Old keys stay until retired."""
        key_id, key = self._new_key(session)
        rows = session.scalars(
            select(Secret).where(Secret.key_id != key_id).with_for_update()
        ).all()
        for row in rows:
            ref = SecretRef(row.team_id, row.name, row.workspace_id)
            plain = open_sealed(self._key(session, row.key_id), row.sealed, ref.aad())
            row.sealed, row.key_id = seal(key, plain, ref.aad()), key_id
        session.flush()
        return next(info for info in self.keys(session) if info.id == key_id)

    def retire(self, session: Session, key_id: int) -> VaultKeyInfo:
        """Erase an old key's material. Refused while it is the newest or still seals a secret."""
        row = session.get(VaultKey, key_id, with_for_update=True)
        if row is None:
            raise NotFound(f"no vault key {key_id}")
        if row.retired_at is None:
            newest = session.scalar(
                select(func.max(VaultKey.id)).where(VaultKey.retired_at.is_(None))
            )
            if newest == key_id:
                raise Conflict(f"vault key {key_id} is the newest key: rotate first")
            used = session.scalar(select(func.count()).where(Secret.key_id == key_id))
            if used:
                raise Conflict(f"vault key {key_id} still seals {used} secret(s): rotate first")
            row.retired_at, row.wrapped = utcnow(), None
            session.flush()
        with self._lock:
            self._keys.pop(key_id, None)
        return next(info for info in self.keys(session) if info.id == key_id)

    # --- internals -------------------------------------------------------------------------

    def _row(self, session: Session, ref: SecretRef) -> Secret | None:
        return session.scalar(
            select(Secret).where(
                Secret.team_id == ref.team_id, Secret.scope == ref.scope, Secret.name == ref.name
            )
        )

    def _primary(self, session: Session) -> tuple[int, bytes]:
        # FOR SHARE: a concurrent retire of this key waits for this transaction, so nothing is
        # ever sealed under a key whose material is being erased.
        key_id = session.scalar(
            select(VaultKey.id)
            .where(VaultKey.retired_at.is_(None))
            .order_by(VaultKey.id.desc())
            .limit(1)
            .with_for_update(read=True)
        )
        if key_id is None:
            return self._new_key(session)
        return key_id, self._key(session, key_id)

    def _new_key(self, session: Session) -> tuple[int, bytes]:
        row = VaultKey(wrapped=b"", created_at=utcnow())
        session.add(row)
        session.flush()  # assigns the id, which the wrapping binds to
        key = random.token_bytes(KEY_BYTES)
        row.wrapped = self._master.wrap(key, key_id=row.id)
        session.flush()
        with self._lock:
            self._keys[row.id] = key
        return row.id, key

    def _key(self, session: Session, key_id: int) -> bytes:
        with self._lock:
            if (key := self._keys.get(key_id)) is not None:
                return key
        row = session.get(VaultKey, key_id)
        if row is None or row.wrapped is None:
            raise VaultError(f"vault key {key_id} is retired or missing")
        key = self._master.unwrap(row.wrapped, key_id=key_id)
        with self._lock:
            self._keys[key_id] = key
        return key
