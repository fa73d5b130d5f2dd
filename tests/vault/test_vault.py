from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from terrace.errors import Conflict, InvalidInput, NotFound, VaultError
from terrace.store.db import Database
from terrace.store.tables import Secret, Workspace, utcnow
from terrace.store.tenancy import create_team, create_user
from terrace.vault import MasterKey, SecretRef, Vault, load_master_key
from terrace.vault.crypto import open_sealed, seal

KEY = bytes(range(32))


def test_seal_opens_only_with_its_key_and_context() -> None:
    blob = seal(KEY, b"hunter2", b"ctx")
    assert b"hunter2" not in blob
    assert open_sealed(KEY, blob, b"ctx") == b"hunter2"
    with pytest.raises(VaultError):
        open_sealed(KEY, blob, b"other ctx")
    with pytest.raises(VaultError):
        open_sealed(bytes(32), blob, b"ctx")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(VaultError):
        open_sealed(KEY, tampered, b"ctx")
    with pytest.raises(VaultError, match="malformed"):
        open_sealed(KEY, b"\x01short", b"ctx")


def test_master_key_from_the_environment(tmp_path: Path) -> None:
    text = base64.urlsafe_b64encode(KEY).decode().rstrip("=")
    assert load_master_key(tmp_path, {"TERRACE_MASTER_KEY": text}).source == "TERRACE_MASTER_KEY"
    assert load_master_key(tmp_path, {"TERRACE_MASTER_KEY": KEY.hex()}).source == (
        "TERRACE_MASTER_KEY"
    )
    with pytest.raises(VaultError, match="TERRACE_MASTER_KEY must be 32 random bytes"):
        load_master_key(tmp_path, {"TERRACE_MASTER_KEY": "too-short"})
    assert not (tmp_path / "master.key").exists()


def test_master_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    first = load_master_key(tmp_path, {})
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_master_key(tmp_path, {})
    wrapped = first.wrap(KEY, key_id=1)
    assert second.unwrap(wrapped, key_id=1) == KEY
    assert "master.key" in repr(first)
    assert KEY.hex() not in repr(first)
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]  # no temporary file left


def test_a_corrupt_master_key_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "master.key").write_text("not a key\n")
    with pytest.raises(VaultError, match=str(tmp_path / "master.key")):
        load_master_key(tmp_path, {})


@pytest.fixture
def store(database_url: str) -> Iterator[tuple[Database, int, int]]:
    """A migrated store with a team and a second team; yields (db, team, other team)."""
    db = Database(database_url)
    with db.exclusive():
        db.migrate()
    with db.session() as session:
        user = create_user(session, name="u", email="u@x.io")
        team = create_team(session, name="a", admin_user_id=user.id).id
        other = create_team(session, name="b", admin_user_id=user.id).id
    yield db, team, other
    db.dispose()


def test_put_list_reveal_delete(store: tuple[Database, int, int]) -> None:
    db, team, other = store
    vault = Vault(MasterKey(KEY, source="test"))
    with db.session() as s:
        _, created = vault.put(s, SecretRef(team, "DB_PASSWORD"), "one")
        assert created
        _, created = vault.put(s, SecretRef(team, "DB_PASSWORD"), "two")
        assert not created
        vault.put(s, SecretRef(team, "API.token"), "t")
        vault.put(s, SecretRef(other, "DB_PASSWORD"), "other team")
    with db.session() as s:
        assert [i.name for i in vault.list_secrets(s, team)] == ["API.token", "DB_PASSWORD"]
        assert vault.reveal(s, team) == {"API.token": "t", "DB_PASSWORD": "two"}
        vault.delete(s, SecretRef(team, "API.token"))
        with pytest.raises(NotFound):
            vault.delete(s, SecretRef(team, "API.token"))
        with pytest.raises(InvalidInput):
            vault.put(s, SecretRef(team, "bad name"), "x")
    with db.session() as s:
        assert vault.reveal(s, team) == {"DB_PASSWORD": "two"}


def test_workspace_secrets_override_team_secrets(store: tuple[Database, int, int]) -> None:
    db, team, _ = store
    vault = Vault(MasterKey(KEY, source="test"))
    with db.session() as s:
        ws = Workspace(team_id=team, name="w", source="local", path="/tmp", created_at=utcnow())
        s.add(ws)
        s.flush()
        vault.put(s, SecretRef(team, "A"), "team")
        vault.put(s, SecretRef(team, "B"), "team")
        vault.put(s, SecretRef(team, "A", ws.id), "workspace")
    with db.session() as s:
        assert vault.reveal(s, team, workspace_id=ws.id) == {"A": "workspace", "B": "team"}
        assert vault.reveal(s, team) == {"A": "team", "B": "team"}
        assert [i.name for i in vault.list_secrets(s, team, workspace_id=ws.id)] == ["A"]


def test_rotate_reseals_everything_and_old_keys_retire(store: tuple[Database, int, int]) -> None:
    db, team, _ = store
    master = MasterKey(KEY, source="test")
    vault = Vault(master)
    with db.session() as s:
        vault.put(s, SecretRef(team, "A"), "a")
        vault.put(s, SecretRef(team, "B"), "b")
        first = vault.keys(s)
    assert [(k.primary, k.secrets) for k in first] == [(True, 2)]
    with db.session() as s:
        rotated = vault.rotate(s)
    assert rotated.primary
    assert rotated.secrets == 2
    fresh = Vault(master)  # no cached keys: opens through the wrapped keys in the store
    with db.session() as s:
        assert fresh.reveal(s, team) == {"A": "a", "B": "b"}
        with pytest.raises(Conflict, match="newest"):
            fresh.retire(s, rotated.id)
    with db.session() as s:
        retired = fresh.retire(s, first[0].id)
        assert retired.retired_at is not None
        assert fresh.reveal(s, team) == {"A": "a", "B": "b"}
        with pytest.raises(NotFound):
            fresh.retire(s, 999)


def test_a_key_still_in_use_cannot_be_retired(store: tuple[Database, int, int]) -> None:
    db, team, _ = store
    vault = Vault(MasterKey(KEY, source="test"))
    with db.session() as s:
        vault.put(s, SecretRef(team, "A"), "a")
        old = vault.keys(s)[0].id
        new = vault.rotate(s).id
        # Simulate a secret left behind under the old key (a rotation cut off half-way).
        vault.put(s, SecretRef(team, "B"), "b")
        s.execute(update(Secret).where(Secret.name == "B").values(key_id=old))
    with db.session() as s, pytest.raises(Conflict, match="still seals 1 secret"):
        vault.retire(s, old)
    assert new > old


def test_wrong_master_key_and_moved_rows_do_not_open(store: tuple[Database, int, int]) -> None:
    db, team, other = store
    with db.session() as s:
        Vault(MasterKey(KEY, source="test")).put(s, SecretRef(team, "A"), "a")
    with db.session() as s, pytest.raises(VaultError, match="does not open with the master key"):
        Vault(MasterKey(os.urandom(32), source="elsewhere")).reveal(s, team)
    with db.session() as s:
        s.execute(update(Secret).values(team_id=other))
    with db.session() as s, pytest.raises(VaultError):
        Vault(MasterKey(KEY, source="test")).reveal(s, other)
    with db.session() as s:
        assert s.scalar(select(Secret.name)) == "A"
