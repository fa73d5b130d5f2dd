"""After secrets are stored, no byte of the store, its files or the server log holds a value."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from tests.conftest import GitRepo
from tests.support.live import LiveServer


def _encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def _store_bytes(live: LiveServer) -> bytes:
    """Every byte the store keeps: the SQLite files, or a pg_dump and the table files."""
    url = live.database_url
    if not url:
        return b"".join(
            p.read_bytes() for p in sorted(live.home.glob("terrace.db*")) if p.is_file()
        )
    parsed = make_url(url)
    dump = subprocess.run(
        [
            shutil.which("pg_dump") or "pg_dump",
            "--data-only",
            "-h",
            str(parsed.host),
            "-p",
            str(parsed.port),
            "-U",
            str(parsed.username),
            str(parsed.database),
        ],
        check=True,
        capture_output=True,
    ).stdout
    files = b""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        data_dir = conn.execute("SHOW data_directory").fetchone()
        for table in ("secrets", "vault_keys"):
            rel = conn.execute("SELECT pg_relation_filepath(%s)", (table,)).fetchone()
            assert data_dir is not None
            assert rel is not None
            path = Path(data_dir[0]) / rel[0]
            if path.exists():
                files += path.read_bytes()
    return dump + files


def test_no_plaintext_at_rest(live: LiveServer, git_repo: GitRepo) -> None:
    canaries = [f"canary-{secrets.token_hex(8)}" for _ in range(3)]
    with live.client(live.admin_key) as admin:
        team = admin.post("/teams", json={"name": f"rest-{secrets.token_hex(3)}"}).json()["id"]
        ws = admin.post(
            "/workspaces", json={"teamId": team, "name": "w", "gitUrl": git_repo.url}
        ).json()["id"]
        responses = [
            admin.put(f"/vault/teams/{team}/secrets/DB_PASSWORD", json={"value": canaries[0]}),
            admin.put(
                f"/vault/teams/{team}/workspaces/{ws}/secrets/TOKEN", json={"value": canaries[1]}
            ),
            admin.put(f"/vault/teams/{team}/secrets/DB_PASSWORD", json={"value": canaries[2]}),
            admin.get(f"/vault/teams/{team}/secrets"),
            admin.get(f"/vault/teams/{team}/workspaces/{ws}/secrets"),
            admin.post("/vault/keys/rotate"),
            admin.put(f"/vault/teams/{team}/secrets/bad name", json={"value": canaries[0]}),
            admin.put(f"/vault/teams/{team}/secrets/X", json={"value": canaries[0], "extra": 1}),
        ]
        names = [s["name"] for s in admin.get(f"/vault/teams/{team}/secrets").json()]
    assert names == ["DB_PASSWORD"]
    assert [r.status_code for r in responses] == [201, 201, 200, 200, 200, 200, 422, 422]
    stored = _store_bytes(live)
    assert b"DB_PASSWORD" in stored  # the name is stored in clear: the check reads the right bytes
    seen = b"".join(r.content for r in responses) + live.log.read_bytes()
    for canary in canaries:
        for encoded in _encodings(canary):
            assert encoded not in stored
            assert encoded not in seen
