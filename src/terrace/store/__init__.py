"""Terrace's state: SQLAlchemy 2 tables, migrations and the queries the upper layers need.

SQLite (WAL) in ``$TERRACE_HOME`` by default, PostgreSQL when ``TERRACE_DATABASE_URL`` names one.
Nothing here keeps state in memory that matters: several API processes may share one PostgreSQL.
"""

from terrace.store.db import Database, database_url, terrace_home

__all__ = ["Database", "database_url", "terrace_home"]
