"""First start: migrate the store and make sure a cluster admin and their key exist."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import select

from terrace.api.context import AppContext
from terrace.api.workspaces import INCOMING_PREFIX
from terrace.errors import InvalidInput
from terrace.store.home import admin_key_file
from terrace.store.tables import User
from terrace.store.tenancy import adopt_key, create_user, issue_key

__all__ = ["ADMIN_EMAIL", "bootstrap"]

ADMIN_EMAIL = "admin@terrace.local"
MIN_ADMIN_KEY = 20
ABANDONED_AFTER = 3600.0
"""Seconds after which a clone folder with no workspace row is taken to be abandoned."""


def bootstrap(ctx: AppContext, environ: Mapping[str, str] | None = None) -> str | None:
    """Migrate, then ensure the cluster admin. Safe with several processes on one store.

    ``TERRACE_ADMIN_KEY``, when set, becomes a cluster-admin key. Otherwise, when
    ``$TERRACE_HOME/admin.key`` does not exist, a key is generated, written there (mode 0600)
    and returned so the caller can print it once; else None.
    """
    env = os.environ if environ is None else environ
    chosen = env.get("TERRACE_ADMIN_KEY", "").strip()
    if chosen and len(chosen) < MIN_ADMIN_KEY:
        raise InvalidInput(
            f"TERRACE_ADMIN_KEY must be at least {MIN_ADMIN_KEY} characters",
            field="TERRACE_ADMIN_KEY",
        )
    key_file = admin_key_file(ctx.home)
    with ctx.db.exclusive():
        ctx.db.migrate()
        _clear_abandoned_clones(ctx.workspaces_dir)
        with ctx.db.session() as session:
            admin = session.scalar(select(User).where(User.email == ADMIN_EMAIL))
            if admin is None:
                admin = create_user(session, name="admin", email=ADMIN_EMAIL, cluster_admin=True)
            if chosen:
                adopt_key(session, user_id=admin.id, name="TERRACE_ADMIN_KEY", key=chosen)
                return None
            if key_file.exists():
                return None
            _, key = issue_key(session, user_id=admin.id, name="admin.key")
        # Written once the key is committed, so the file never holds a key the store lacks.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
        return key


def _clear_abandoned_clones(folder: Path) -> None:
    """Remove clones a crashed process left half-done (older than any clone may take)."""
    cutoff = time.time() - ABANDONED_AFTER
    for leftover in folder.glob(f"{INCOMING_PREFIX}*"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
