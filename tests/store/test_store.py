from __future__ import annotations

import multiprocessing
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from terrace.api.bootstrap import bootstrap
from terrace.api.context import AppContext
from terrace.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from terrace.store.db import Database, database_url
from terrace.store.home import terrace_home
from terrace.store.roles import Role
from terrace.store.tables import ApiKey, Base, User, Workspace, utcnow
from terrace.store.tenancy import (
    add_member,
    authenticate,
    create_team,
    create_user,
    issue_key,
    remove_member,
    set_role,
)
from terrace.store.workspaces import delete_env, env_vars, put_env
from terrace.vault import MasterKey, Vault


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    with database.exclusive():
        database.migrate()
    yield database
    database.dispose()


def test_home_and_url_defaults(tmp_path: Path) -> None:
    assert terrace_home({"TERRACE_HOME": str(tmp_path)}) == tmp_path
    assert terrace_home({"XDG_DATA_HOME": "/data"}) == Path("/data/terrace")
    assert database_url(tmp_path, {}) == f"sqlite:///{tmp_path / 'terrace.db'}"
    pg = database_url(tmp_path, {"TERRACE_DATABASE_URL": "postgresql://u@h/d"})
    assert pg == "postgresql+psycopg://u@h/d"


def test_migrations_match_the_tables(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    with db.exclusive():
        db.migrate()  # a second run changes nothing
    assert "alembic_version" in inspect(db.engine).get_table_names()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 't.db'}")
    with database.session() as session:
        assert session.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    database.dispose()


def _start(url: str, home: str, queue: multiprocessing.Queue[str | None]) -> None:
    ctx = AppContext(
        home=Path(home), db=Database(url), vault=Vault(MasterKey(bytes(32), source="t"))
    )
    queue.put(bootstrap(ctx, {}))
    ctx.db.dispose()


def test_first_start_from_several_processes_at_once(database_url: str, tmp_path: Path) -> None:
    """Migrations and the admin key are made once, however many processes start together."""
    spawn = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str | None] = spawn.Queue()
    processes = [
        spawn.Process(target=_start, args=(database_url, str(tmp_path), queue)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    keys = [queue.get(timeout=5) for _ in processes]
    assert len([k for k in keys if k]) == 1  # printed once, by the first
    key_file = tmp_path / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    database = Database(database_url)
    with database.session() as session:
        assert authenticate(session, key_file.read_text().strip()).cluster_admin
        assert session.scalar(select(User.email).where(User.cluster_admin)) == "admin@terrace.local"
    database.dispose()


def test_admin_key_from_the_environment(db: Database, tmp_path: Path) -> None:
    ctx = AppContext(home=tmp_path, db=db, vault=Vault(MasterKey(bytes(32), source="t")))
    chosen = "a-long-enough-admin-key-0123"
    assert bootstrap(ctx, {"TERRACE_ADMIN_KEY": chosen}) is None
    assert bootstrap(ctx, {"TERRACE_ADMIN_KEY": chosen}) is None
    assert not (tmp_path / "admin.key").exists()
    with db.session() as session:
        assert authenticate(session, chosen).cluster_admin
        assert len(session.scalars(select(ApiKey)).all()) == 1
    with pytest.raises(InvalidInput, match="at least 20"):
        bootstrap(ctx, {"TERRACE_ADMIN_KEY": "short"})
    replacement = "another-long-enough-admin-key"
    bootstrap(ctx, {"TERRACE_ADMIN_KEY": replacement})
    with db.session() as session:
        assert authenticate(session, replacement).cluster_admin
    with db.session() as session, pytest.raises(Unauthenticated):
        authenticate(session, chosen)  # the key it replaced no longer works


def test_keys_are_stored_hashed_and_expire_and_revoke(db: Database) -> None:
    with db.session() as s:
        user = create_user(s, name="u", email="U@X.io")
        _, key = issue_key(s, user_id=user.id, name="k")
        soon, soon_key = issue_key(
            s, user_id=user.id, name="soon", expires_at=utcnow() + timedelta(hours=1)
        )
        with pytest.raises(InvalidInput, match="future"):
            issue_key(s, user_id=user.id, name="past", expires_at=utcnow() - timedelta(seconds=1))
        stored = [row.digest for row in s.scalars(select(ApiKey))]
    assert key.startswith("trk_")
    assert all(key.encode() not in d and len(d) == 32 for d in stored)
    with db.session() as s:
        caller = authenticate(s, key)
        assert caller.user_id == user.id
        assert not caller.cluster_admin
        assert s.scalar(select(ApiKey.last_used_at).where(ApiKey.name == "k")) is not None
        s.get(ApiKey, soon.id).expires_at = utcnow() - timedelta(seconds=1)  # type: ignore[union-attr]
    with db.session() as s, pytest.raises(Unauthenticated):
        authenticate(s, soon_key)
    with db.session() as s, pytest.raises(Unauthenticated):
        authenticate(s, key + "x")


def test_a_team_keeps_an_admin(db: Database) -> None:
    with db.session() as s:
        alice = create_user(s, name="a", email="a@x.io")
        bob = create_user(s, name="b", email="b@x.io")
        team = create_team(s, name="Acme", admin_user_id=alice.id)
        with pytest.raises(Conflict, match="already exists"):
            create_team(s, name="acme", admin_user_id=bob.id)
        add_member(s, team_id=team.id, user_id=bob.id, role=Role.VIEWER)
        with pytest.raises(Conflict, match="already a member"):
            add_member(s, team_id=team.id, user_id=bob.id, role=Role.ADMIN)
        with pytest.raises(NotFound):
            add_member(s, team_id=team.id, user_id=9999, role=Role.ADMIN)
    with db.session() as s, pytest.raises(Conflict, match="at least one admin"):
        set_role(s, team_id=team.id, user_id=alice.id, role=Role.DEVELOPER)
    with db.session() as s, pytest.raises(Conflict, match="at least one admin"):
        remove_member(s, team_id=team.id, user_id=alice.id)
    with db.session() as s:
        set_role(s, team_id=team.id, user_id=bob.id, role=Role.ADMIN)
        remove_member(s, team_id=team.id, user_id=alice.id)
    with db.session() as s, pytest.raises(NotFound):
        remove_member(s, team_id=team.id, user_id=alice.id)


def test_env_vars_upsert_and_delete(db: Database) -> None:
    with db.session() as s:
        user = create_user(s, name="u", email="u@x.io")
        team = create_team(s, name="t", admin_user_id=user.id)
        ws = Workspace(team_id=team.id, name="w", source="local", path="/", created_at=utcnow())
        s.add(ws)
    with db.session() as s:
        put_env(s, ws.id, {"A": "1", "B": "2"})
        put_env(s, ws.id, {"B": "3", "C": ""})
        put_env(s, ws.id, {})
    with db.session() as s:
        assert env_vars(s, ws.id) == {"A": "1", "B": "3", "C": ""}
        delete_env(s, ws.id, ["A", "NOT_SET"])
    with db.session() as s:
        assert env_vars(s, ws.id) == {"B": "3", "C": ""}
