"""What every request handler needs: the store, the vault, the home folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request

from terrace.store.db import Database, database_url
from terrace.store.home import terrace_home
from terrace.store.tables import Workspace
from terrace.vault import Vault, load_master_key

if TYPE_CHECKING:
    from terrace.api.edge import Edge
    from terrace.engine.reconciler import Engine

__all__ = ["AppContext", "context"]


@dataclass(frozen=True, slots=True)
class AppContext:
    home: Path
    db: Database
    vault: Vault
    engine: Engine | None = None
    """The engine in this process (``terrace up``, ``terrace server``); None in an API-only
    process, where deploys are stored for an engine elsewhere to carry out."""
    edge: Edge | None = None
    """The public router in this process (``terrace up``; ``terrace server --router-port``)."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> AppContext:
        """The embedded default: ``$TERRACE_HOME``, ``TERRACE_DATABASE_URL``, the master key."""
        env = os.environ if environ is None else environ
        home = terrace_home(env)
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        db = Database(database_url(home, env))
        return cls(home=home, db=db, vault=Vault(load_master_key(home, env)))

    @property
    def workspaces_dir(self) -> Path:
        """Where workspaces cloned from git live, one folder per workspace id."""
        return self.home / "workspaces"

    def remove_workspace_files(self, workspace: Workspace) -> None:
        """Delete a cloned workspace's files. A local folder belongs to its owner: it stays."""
        path = Path(workspace.path)
        if workspace.source == "git" and path.parent == self.workspaces_dir:
            shutil.rmtree(path, ignore_errors=True)


def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.terrace
    return ctx
