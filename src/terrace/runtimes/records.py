"""What survives the engine: one record file per replica, ``run/replicas/<id>.json``.

A record is written before anything of its replica is made, so that after a crash at any point
the next engine finds every piece and can remove it. One engine runs per home: the records are
read once, when the runtime starts, and kept in memory after that.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from terrace.runtimes.base import Kind, Replica

__all__ = ["Record", "Records", "pid_start"]


@dataclass(slots=True, kw_only=True)
class Record:
    """One replica, as on disk."""

    id: str
    kind: str
    workspace_id: int
    team_id: int
    name: str
    slot: int
    revision: str
    restarts: int
    started_at: float
    sandboxed: bool
    index: int = 0
    netns: str = ""
    """Its network namespace ("": the one named after it, as records before spares had)."""
    address: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    pid: int | None = None
    pid_start: str | None = None
    exit_code: int | None = None
    last_exit: str | None = None

    def replica(self, *, running: bool) -> Replica:
        return Replica(
            id=self.id,
            kind=Kind(self.kind),
            workspace_id=self.workspace_id,
            name=self.name,
            slot=self.slot,
            revision=self.revision,
            restarts=self.restarts,
            started_at=self.started_at,
            address=self.address,
            ports={int(k): v for k, v in self.ports.items()},
            running=running,
            exit_code=self.exit_code,
            last_exit=self.last_exit,
        )


class Records:
    """The records of one home, on disk and in memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, Record] = {}
        for path in sorted(folder.glob("*.json")):
            try:
                data: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a record torn by a crash mid-write is never renamed into place
            self._cache[path.stem] = Record(**data)

    def save(self, record: Record) -> None:
        path = self.folder / f"{record.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(path)
        self._cache[record.id] = record

    def forget(self, replica_id: str) -> None:
        (self.folder / f"{replica_id}.json").unlink(missing_ok=True)
        self._cache.pop(replica_id, None)

    def get(self, replica_id: str) -> Record | None:
        return self._cache.get(replica_id)

    def all(self) -> list[Record]:
        return sorted(self._cache.values(), key=lambda r: r.id)


def pid_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]
