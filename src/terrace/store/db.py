"""Where the store lives and how to open it: engine, sessions, migrations under a lock."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from terrace.errors import Conflict

__all__ = ["Database", "database_url", "flush_unique"]

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant will do: it only has to be the same in every Terrace process.
_PG_MIGRATION_LOCK = 0x7465727261636501


def database_url(home: Path, environ: Mapping[str, str] | None = None) -> str:
    """``$TERRACE_DATABASE_URL`` when set, else the SQLite file in ``home``.

    ``postgresql://`` and ``postgres://`` URLs use the psycopg 3 driver.
    """
    env = os.environ if environ is None else environ
    url = env.get("TERRACE_DATABASE_URL", "").strip()
    return _with_driver(url) if url else f"sqlite:///{home / 'terrace.db'}"


def _with_driver(url: str) -> str:
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


class Database:
    """One store: an engine, a session factory, and its migrations.

    Use :meth:`session` for a unit of work: it commits when the block ends and rolls back when
    it raises.
    """

    def __init__(self, url: str) -> None:
        url = _with_driver(url)
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 10}, hide_parameters=True
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite's own BEGIN handling defers locks; take the write lock up front so two
            # writers wait on busy_timeout instead of failing with "database is locked".
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            event.listen(self.engine, "connect", _no_pysqlite_begin)
        else:
            # uvicorn runs the API's endpoints in 40 threads, each holding one connection at
            # most: the pool must not be what makes a request wait or fail.
            self.engine = create_engine(
                url, pool_size=10, max_overflow=40, pool_pre_ping=True, hide_parameters=True
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed at the end of the block, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest migration. Call it under :meth:`exclusive`."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held by one process at a time (all processes on this store): for migrations and
        first-start setup. A PostgreSQL advisory lock, or a file lock next to the SQLite file."""
        if self.dialect == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                    conn.commit()
            return
        database = make_url(self.url).database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _no_pysqlite_begin(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN IMMEDIATE itself.
    dbapi_connection.isolation_level = None


def flush_unique(session: Session, message: str) -> None:
    """Flush; a unique constraint that another process won first is a Conflict, not a crash."""
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise Conflict(message) from exc
