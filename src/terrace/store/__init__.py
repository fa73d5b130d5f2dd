"""Terrace's state: SQLAlchemy 2 tables, migrations and the queries the upper layers need.

SQLite (WAL) in ``$TERRACE_HOME`` by default, PostgreSQL when ``TERRACE_DATABASE_URL`` names one.
Nothing here keeps state in memory that matters: several API processes may share one PostgreSQL.
Import the modules themselves (``terrace.store.db``, ...): this package imports nothing, so that
``terrace.store.home`` and ``terrace.store.roles`` stay cheap for the CLI.
"""
