"""What API users see: workspaces from git and folders, env vars, landscapes, problem documents."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES, GitRepo
from tests.support.live import LiveServer, start_server
from tests.support.postgres import PostgresServer


def _in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0).isoformat()


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def admin(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client(live.admin_key) as client:
        yield client


@pytest.fixture
def team(admin: httpx.Client) -> int:
    response = admin.post("/teams", json={"name": _name("team")})
    assert response.status_code == 201
    team_id: int = response.json()["id"]
    return team_id


@pytest.fixture
def developer(live: LiveServer, admin: httpx.Client, team: int) -> Iterator[httpx.Client]:
    user = admin.post("/users", json={"name": "dev", "email": _name("dev") + "@x.io"}).json()
    key = admin.post("/keys", json={"name": "k", "userId": user["id"]}).json()["key"]
    added = admin.post(f"/teams/{team}/members", json={"userId": user["id"], "role": "developer"})
    assert added.status_code == 201
    with live.client(key) as client:
        yield client


@pytest.mark.parametrize("ref", [None, "main", "v1", "commit"])
def test_workspace_from_git(
    live: LiveServer, developer: httpx.Client, team: int, git_repo: GitRepo, ref: str | None
) -> None:
    body = {"teamId": team, "name": _name("ws"), "gitUrl": git_repo.url}
    if ref is not None:
        body["gitRef"] = git_repo.commit if ref == "commit" else ref
    response = developer.post("/workspaces", json=body)
    assert response.status_code == 201, response.text
    ws = response.json()
    assert ws["commit"] == git_repo.commit
    assert ws["source"] == "git"
    assert ws["path"] is None  # server paths are not shown for cloned workspaces
    folder = live.home / "workspaces" / str(ws["id"])
    assert (folder / "ci.yml").is_file()
    assert developer.get(f"/workspaces/{ws['id']}/landscape").json()["services"][0]["name"]
    assert developer.delete(f"/workspaces/{ws['id']}").status_code == 204
    assert not folder.exists()
    assert developer.get(f"/workspaces/{ws['id']}").status_code == 404


def test_git_failures_are_explained(developer: httpx.Client, team: int, git_repo: GitRepo) -> None:
    bad_ref = developer.post(
        "/workspaces",
        json={"teamId": team, "name": "w", "gitUrl": git_repo.url, "gitRef": "no-such-branch"},
    )
    assert bad_ref.status_code == 422
    assert bad_ref.json()["type"] == "urn:terrace:problem:source-unavailable"
    assert "no-such-branch" in bad_ref.json()["detail"]
    missing = developer.post(
        "/workspaces", json={"teamId": team, "name": "w", "gitUrl": git_repo.url + "-missing"}
    )
    assert missing.status_code == 422
    assert "git clone failed" in missing.json()["detail"]
    for url in ("ext::sh -c id", "-upload-pack=id", "https://me:token@example.com/r.git"):
        bad = developer.post("/workspaces", json={"teamId": team, "name": "w", "gitUrl": url})
        assert bad.status_code == 422, url
        assert bad.json()["errors"][0]["path"] == "body.gitUrl"
        assert "token" not in bad.text
    for url in ("file:///etc", "/etc"):
        local = developer.post("/workspaces", json={"teamId": team, "name": "w", "gitUrl": url})
        assert local.status_code == 403, url
    folder = developer.post("/workspaces", json={"teamId": team, "name": "w", "path": "/etc"})
    assert folder.status_code == 403
    assert developer.get(f"/workspaces/team/{team}").json() == []


def test_workspace_names_are_unique_per_team(
    admin: httpx.Client, team: int, git_repo: GitRepo
) -> None:
    body = {"teamId": team, "name": "same", "path": str(EXAMPLES / "01-hello")}
    assert admin.post("/workspaces", json=body).status_code == 201
    again = admin.post("/workspaces", json={**body, "gitUrl": None})
    assert again.status_code == 409
    assert again.json()["type"] == "urn:terrace:problem:conflict"
    both = admin.post("/workspaces", json={**body, "name": "x", "gitUrl": git_repo.url})
    assert both.status_code == 422


def test_env_vars(developer: httpx.Client, admin: httpx.Client, team: int) -> None:
    ws = admin.post(
        "/workspaces", json={"teamId": team, "name": "env", "path": str(EXAMPLES / "01-hello")}
    ).json()["id"]
    url = f"/workspaces/{ws}/env-vars"
    assert developer.get(url).json() == []
    put = developer.put(url, json=[{"name": "B", "value": "2"}, {"name": "A", "value": "1"}])
    assert put.status_code == 204
    developer.put(url, json=[{"name": "B", "value": "two"}])
    assert developer.get(url).json() == [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}]
    removed = developer.request("DELETE", url, json=["A", "NEVER_SET"])
    assert removed.status_code == 204
    assert developer.get(url).json() == [{"name": "B", "value": "two"}]
    twice = developer.put(url, json=[{"name": "X", "value": "1"}, {"name": "X", "value": "2"}])
    assert twice.status_code == 422
    bad = developer.put(url, json=[{"name": "1BAD", "value": "v"}])
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["path"] == "body.0.name"
    assert "v" not in bad.json()["detail"].split(": ", 1)[0]


def test_landscape_problems_carry_their_location(
    admin: httpx.Client, team: int, tmp_path: Path
) -> None:
    (tmp_path / "ci.yml").write_text(
        "schemaVersion: v0.2\nprepare:\n  steps: []\ntest:\n  steps: []\nrun:\n"
        "  web:\n    replicas: 0\n    plan: 8\n    steps:\n      - command: ./serve\n"
    )
    ws = admin.post(
        "/workspaces", json={"teamId": team, "name": "broken", "path": str(tmp_path)}
    ).json()["id"]
    response = admin.get(f"/workspaces/{ws}/landscape")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:terrace:problem:invalid-spec"
    assert problem["problems"][0] == {
        "file": "ci.yml",
        "line": 8,
        "column": 15,
        "path": "run.web.replicas",
        "message": problem["problems"][0]["message"],
    }
    missing = admin.get(f"/workspaces/{ws}/landscape", params={"profile": "prod"})
    assert missing.status_code == 422
    assert missing.json()["problems"][0]["file"] == "ci.prod.yml"


def test_shop_landscape_lists_what_a_deploy_needs(admin: httpx.Client, team: int) -> None:
    ws = admin.post(
        "/workspaces", json={"teamId": team, "name": "shop", "path": str(EXAMPLES / "02-shop")}
    ).json()["id"]
    landscape = admin.get(f"/workspaces/{ws}/landscape", params={"profile": "prod"}).json()
    assert [s["name"] for s in landscape["services"]] == ["web", "api", "worker"]
    assert landscape["vaultSecrets"] == ["SHOP_DB_PASSWORD"]
    assert landscape["managedServices"] == ["db"]


def test_members(admin: httpx.Client, team: int) -> None:
    email = _name("m") + "@x.io"
    user = admin.post("/users", json={"name": "m", "email": email}).json()
    added = admin.post(f"/teams/{team}/members", json={"email": email.upper(), "role": "viewer"})
    assert added.status_code == 201
    assert added.json()["role"] == "viewer"
    both = admin.post(f"/teams/{team}/members", json={"email": email, "userId": user["id"]})
    assert both.status_code == 422
    again = admin.post(f"/teams/{team}/members", json={"userId": user["id"]})
    assert again.status_code == 409
    changed = admin.patch(f"/teams/{team}/members/{user['id']}", json={"role": "admin"})
    assert changed.json()["role"] == "admin"
    members = admin.get(f"/teams/{team}/members").json()
    assert [m["role"] for m in members] == ["admin", "admin"]
    admin_id = members[0]["userId"]
    assert admin.delete(f"/teams/{team}/members/{admin_id}").status_code == 204
    last = admin.delete(f"/teams/{team}/members/{user['id']}")
    assert last.status_code == 409
    assert "at least one admin" in last.json()["detail"]


def test_unauthenticated_responses_say_how_to_authenticate(live: LiveServer) -> None:
    response = httpx.get(live.api + "/teams")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["title"] == "Missing or invalid API key"
    unknown = httpx.get(live.api + "/nowhere", headers={"Authorization": "Bearer x"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    wrong_method = httpx.put(live.api + "/health")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["type"] == "urn:terrace:problem:method-not-allowed"


def test_key_lifecycle(live: LiveServer, admin: httpx.Client) -> None:
    created = admin.post("/keys", json={"name": "ci", "expiresAt": _in_days(30)})
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(body["prefix"])
    listed = {k["id"]: k for k in admin.get("/keys").json()}
    assert "key" not in listed[body["id"]]
    assert listed[body["id"]]["lastUsedAt"] is None
    with live.client(body["key"]) as client:
        assert client.get("/users/me").json()["clusterAdmin"] is True
    used = {k["id"]: k for k in admin.get("/keys").json()}[body["id"]]
    assert used["lastUsedAt"] is not None
    assert admin.delete(f"/keys/{body['id']}").status_code == 204
    with live.client(body["key"]) as client:
        assert client.get("/users/me").status_code == 401
    naive = admin.post("/keys", json={"name": "x", "expiresAt": _in_days(30)[:-6]})
    assert naive.status_code == 422
    past = admin.post("/keys", json={"name": "x", "expiresAt": "2001-01-01T00:00:00Z"})
    assert past.status_code == 422
    assert past.json()["errors"][0]["path"] == "body.expiresAt"


def test_two_api_processes_share_one_postgresql(
    postgres: PostgresServer, tmp_path: Path, git_repo: GitRepo
) -> None:
    """No state that matters lives in a process: what one writes, the other serves."""
    url = postgres.create_database()
    key = "shared-admin-key-" + secrets.token_hex(8)
    servers = [
        start_server(tmp_path / f"home{n}", url, TERRACE_ADMIN_KEY=key, TERRACE_MASTER_KEY="a" * 64)
        for n in (1, 2)
    ]
    try:
        one, two = (s.client(key) for s in servers)
        with one, two:
            team = one.post("/teams", json={"name": "shared"}).json()["id"]
            ws = two.post(
                "/workspaces", json={"teamId": team, "name": "w", "gitUrl": git_repo.url}
            ).json()["id"]
            for n in range(20):
                client = (one, two)[n % 2]
                assert (
                    client.put(
                        f"/workspaces/{ws}/env-vars", json=[{"name": f"V{n % 3}", "value": str(n)}]
                    ).status_code
                    == 204
                )
            assert one.put(f"/vault/teams/{team}/secrets/S", json={"value": "x"}).status_code == 201
            assert [s["name"] for s in two.get(f"/vault/teams/{team}/secrets").json()] == ["S"]
            assert two.post("/vault/keys/rotate").status_code == 200
            assert len(one.get(f"/workspaces/{ws}/env-vars").json()) == 3
            assert one.get(f"/workspaces/{ws}").json()["commit"] == git_repo.commit
    finally:
        for server in servers:
            server.stop()
        postgres.drop_database(url)


def test_a_landscape_link_out_of_the_workspace_is_not_followed(
    admin: httpx.Client, team: int, tmp_path: Path
) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("key: SECRET-CONTENT\n")
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "ci.yml").symlink_to(secret)
    ws = admin.post(
        "/workspaces", json={"teamId": team, "name": "link", "path": str(folder)}
    ).json()["id"]
    response = admin.get(f"/workspaces/{ws}/landscape")
    assert response.status_code == 422
    assert response.json()["type"] == "urn:terrace:problem:source-unavailable"
    assert "SECRET" not in response.text
    (folder / "ci.yml").unlink()
    folder.rmdir()
    gone = admin.get(f"/workspaces/{ws}/landscape")
    assert gone.status_code == 422
    assert str(tmp_path) not in gone.text


def test_requests_that_are_not_json_or_not_routes(live: LiveServer, admin: httpx.Client) -> None:
    broken = admin.post(
        "/teams", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["type"] == "urn:terrace:problem:bad-request"
    wrong = httpx.put(live.api + "/health")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET"
    slash = admin.get("/teams/")
    assert slash.status_code == 404
    assert slash.headers["content-type"] == "application/problem+json"


def test_values_at_the_edges_are_refused_cleanly(admin: httpx.Client) -> None:
    far = admin.post("/keys", json={"name": "x", "expiresAt": "9999-12-31T23:30:00-05:00"})
    assert far.status_code == 422
    assert far.json()["errors"][0]["path"] == "body.expiresAt"
    long_email = admin.post("/users", json={"name": "x", "email": "\u0130" * 200 + "@x.io"})
    assert long_email.status_code == 422


def test_a_key_cannot_outlive_the_key_that_made_it(live: LiveServer, admin: httpx.Client) -> None:
    short = admin.post("/keys", json={"name": "short", "expiresAt": _in_days(10)}).json()
    with live.client(short["key"]) as client:
        longer = client.post("/keys", json={"name": "x", "expiresAt": _in_days(20)})
        assert longer.status_code == 422
        default = client.post("/keys", json={"name": "y"})
        assert default.status_code == 201
        assert default.json()["expiresAt"] == short["expiresAt"]


def test_ids_are_never_reused(admin: httpx.Client, team: int) -> None:
    body = {"teamId": team, "name": "again", "path": str(EXAMPLES / "01-hello")}
    first = admin.post("/workspaces", json=body).json()["id"]
    assert admin.delete(f"/workspaces/{first}").status_code == 204
    second = admin.post("/workspaces", json=body).json()["id"]
    assert second > first


def test_concurrent_writes_never_fail(live: LiveServer, admin: httpx.Client, team: int) -> None:
    """Races that the handlers' own checks cannot see end in success, never in a 500."""
    users = [
        admin.post("/users", json={"name": "a", "email": _name("adm") + "@x.io"}).json()["id"]
        for _ in range(2)
    ]
    for user in users:
        added = admin.post(f"/teams/{team}/members", json={"userId": user, "role": "admin"})
        assert added.status_code == 201

    def put_secret(n: int) -> int:
        with live.client(live.admin_key) as client:
            body = {"value": str(n)}
            return client.put(f"/vault/teams/{team}/secrets/RACE", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put_secret, range(16)))
    assert sorted(set(statuses)) in ([200, 201], [201])
    assert statuses.count(201) == 1

    def remove(user: int) -> int:
        with live.client(live.admin_key) as client:
            return client.delete(f"/teams/{team}/members/{user}").status_code

    with ThreadPoolExecutor(2) as pool:
        removed = sorted(pool.map(remove, users))
    assert removed == [204, 204]  # the creator, also an admin, remains
    members = admin.get(f"/teams/{team}/members").json()
    assert [m["role"] for m in members] == ["admin"]


def test_a_stopped_server_leaves_no_discovery_file(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home")
    marker = server.home / "server.json"
    assert marker.exists()
    server.stop()
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert not marker.exists()
    assert "Traceback" not in server.log_text()


def test_custom_domains(developer: httpx.Client, admin: httpx.Client, team: int) -> None:
    def workspace(name: str) -> int:
        body = {"teamId": team, "name": _name(name), "path": str(EXAMPLES / "01-hello")}
        ws: int = admin.post("/workspaces", json=body).json()["id"]
        return ws

    one, two = workspace("one"), workspace("two")
    domain = _name("shop") + ".example.com"
    assert developer.get(f"/workspaces/{one}/domains").json() == []
    assert developer.put(f"/workspaces/{one}/domains/{domain.upper()}").status_code == 204
    assert developer.put(f"/workspaces/{one}/domains/{domain}").status_code == 204  # again
    assert developer.get(f"/workspaces/{one}/domains").json() == [domain]
    taken = developer.put(f"/workspaces/{two}/domains/{domain}")
    assert taken.status_code == 409
    assert domain in taken.json()["detail"]
    for bad in ("nodot", "under_score.example.com", "12-3000.localhost", "1.2.3.4"):
        refused = developer.put(f"/workspaces/{two}/domains/{bad}")
        assert refused.status_code == 422, bad
        assert bad in refused.json()["detail"]
    assert developer.delete(f"/workspaces/{one}/domains/{domain}").status_code == 204
    assert developer.delete(f"/workspaces/{one}/domains/{domain}").status_code == 204
    assert developer.put(f"/workspaces/{two}/domains/{domain}").status_code == 204
    assert developer.get(f"/workspaces/{one}/domains").json() == []
    assert developer.get(f"/workspaces/{two}/domains").json() == [domain]
