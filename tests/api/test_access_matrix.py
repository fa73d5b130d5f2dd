"""Every endpoint, called by every kind of caller: the expected status for each.

The operations come from the live server's OpenAPI document, so a new endpoint without a rule
here fails the test instead of going unchecked.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx
import pytest

from tests.conftest import GitRepo
from tests.support.live import LiveServer

CALLERS = ("cluster_admin", "team_admin", "developer", "viewer", "other_team", "revoked", "no_key")
ROLES = {"team_admin": 3, "developer": 2, "viewer": 1}
_counter = itertools.count(1)


class Access(Enum):
    PUBLIC = "anyone"
    ANY_USER = "any valid key"
    CLUSTER_ADMIN = "cluster admins"
    TEAM_VIEWER = "team viewer or above"
    TEAM_DEVELOPER = "team developer or above"
    TEAM_ADMIN = "team admin"
    KEY_OWNER = "the key's owner"
    LEAVE_OR_ADMIN = "team admin, or the member themself"


@dataclass
class World:
    """One team with a member of each role, a workspace, secrets and a spare key."""

    team: int
    workspace: int
    target_user: int  # the developer: the member that member routes act on
    spare_key: int  # a key of the developer's
    old_vault_key: int
    git_url: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    access: Access
    success: int
    body: Callable[[World], Any] | None = None


def _unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/api/health"): Rule(Access.PUBLIC, 200),
    ("GET", "/api/users/me"): Rule(Access.ANY_USER, 200),
    ("GET", "/api/users"): Rule(Access.CLUSTER_ADMIN, 200),
    ("POST", "/api/users"): Rule(
        Access.CLUSTER_ADMIN, 201, lambda w: {"name": "n", "email": _unique("u") + "@x.io"}
    ),
    ("POST", "/api/keys"): Rule(Access.ANY_USER, 201, lambda w: {"name": "k"}),
    ("GET", "/api/keys"): Rule(Access.ANY_USER, 200),
    ("DELETE", "/api/keys/{keyId}"): Rule(Access.KEY_OWNER, 204),
    ("POST", "/api/teams"): Rule(Access.ANY_USER, 201, lambda w: {"name": _unique("t")}),
    ("GET", "/api/teams"): Rule(Access.ANY_USER, 200),
    ("GET", "/api/teams/{teamId}"): Rule(Access.TEAM_VIEWER, 200),
    ("DELETE", "/api/teams/{teamId}"): Rule(Access.TEAM_ADMIN, 204),
    ("GET", "/api/teams/{teamId}/members"): Rule(Access.TEAM_VIEWER, 200),
    ("POST", "/api/teams/{teamId}/members"): Rule(
        Access.TEAM_ADMIN, 201, lambda w: {"userId": w.extra["newcomer"], "role": "viewer"}
    ),
    ("PATCH", "/api/teams/{teamId}/members/{userId}"): Rule(
        Access.TEAM_ADMIN, 200, lambda w: {"role": "viewer"}
    ),
    ("DELETE", "/api/teams/{teamId}/members/{userId}"): Rule(Access.LEAVE_OR_ADMIN, 204),
    ("POST", "/api/workspaces"): Rule(
        Access.TEAM_DEVELOPER,
        201,
        lambda w: {"teamId": w.team, "name": _unique("ws"), "gitUrl": w.git_url, "gitRef": "main"},
    ),
    ("GET", "/api/workspaces/team/{teamId}"): Rule(Access.TEAM_VIEWER, 200),
    ("GET", "/api/workspaces/{workspaceId}"): Rule(Access.TEAM_VIEWER, 200),
    ("PATCH", "/api/workspaces/{workspaceId}"): Rule(
        Access.TEAM_DEVELOPER, 200, lambda w: {"name": _unique("renamed")}
    ),
    ("DELETE", "/api/workspaces/{workspaceId}"): Rule(Access.TEAM_DEVELOPER, 204),
    ("GET", "/api/workspaces/{workspaceId}/env-vars"): Rule(Access.TEAM_VIEWER, 200),
    ("PUT", "/api/workspaces/{workspaceId}/env-vars"): Rule(
        Access.TEAM_DEVELOPER, 204, lambda w: [{"name": "A", "value": "1"}]
    ),
    ("DELETE", "/api/workspaces/{workspaceId}/env-vars"): Rule(
        Access.TEAM_DEVELOPER, 204, lambda w: ["A"]
    ),
    ("GET", "/api/workspaces/{workspaceId}/landscape"): Rule(Access.TEAM_VIEWER, 200),
    # The world's workspace is examples/01-hello: deployable, an empty prepare stage, no
    # ci.nope.yml. Where success cannot be had from a fresh world, the status a permitted
    # caller gets proves the role check passed: 422 (no such profile), 409 (not deployed,
    # not running).
    ("POST", "/api/workspaces/{workspaceId}/landscape/deploy"): Rule(Access.TEAM_DEVELOPER, 200),
    ("POST", "/api/workspaces/{workspaceId}/landscape/deploy/{profile}"): Rule(
        Access.TEAM_DEVELOPER, 422
    ),
    ("PATCH", "/api/workspaces/{workspaceId}/landscape/scale"): Rule(
        Access.TEAM_DEVELOPER, 409, lambda w: {"web": 2}
    ),
    ("DELETE", "/api/workspaces/{workspaceId}/landscape/teardown"): Rule(
        Access.TEAM_DEVELOPER, 204
    ),
    ("POST", "/api/workspaces/{workspaceId}/pipeline/{stage}/start"): Rule(
        Access.TEAM_DEVELOPER, 200
    ),
    ("POST", "/api/workspaces/{workspaceId}/pipeline/{stage}/start/{profile}"): Rule(
        Access.TEAM_DEVELOPER, 422
    ),
    ("POST", "/api/workspaces/{workspaceId}/pipeline/{stage}/stop"): Rule(
        Access.TEAM_DEVELOPER, 409
    ),
    ("GET", "/api/workspaces/{workspaceId}/pipeline/{stage}"): Rule(Access.TEAM_VIEWER, 200),
    ("GET", "/api/workspaces/{workspaceId}/logs/{stage}/{step}"): Rule(Access.TEAM_VIEWER, 200),
    ("GET", "/api/workspaces/{workspaceId}/logs/run/{service}/replica/{replica}"): Rule(
        Access.TEAM_VIEWER, 200
    ),
    ("GET", "/api/workspaces/{workspaceId}/domains"): Rule(Access.TEAM_VIEWER, 200),
    ("PUT", "/api/workspaces/{workspaceId}/domains/{domain}"): Rule(Access.TEAM_DEVELOPER, 204),
    ("DELETE", "/api/workspaces/{workspaceId}/domains/{domain}"): Rule(Access.TEAM_DEVELOPER, 204),
    ("GET", "/api/vault/teams/{teamId}/secrets"): Rule(Access.TEAM_VIEWER, 200),
    ("PUT", "/api/vault/teams/{teamId}/secrets/{name}"): Rule(
        Access.TEAM_DEVELOPER, 200, lambda w: {"value": "s3cret"}
    ),
    ("DELETE", "/api/vault/teams/{teamId}/secrets/{name}"): Rule(Access.TEAM_DEVELOPER, 204),
    ("GET", "/api/vault/teams/{teamId}/workspaces/{workspaceId}/secrets"): Rule(
        Access.TEAM_VIEWER, 200
    ),
    ("PUT", "/api/vault/teams/{teamId}/workspaces/{workspaceId}/secrets/{name}"): Rule(
        Access.TEAM_DEVELOPER, 200, lambda w: {"value": "s3cret"}
    ),
    ("DELETE", "/api/vault/teams/{teamId}/workspaces/{workspaceId}/secrets/{name}"): Rule(
        Access.TEAM_DEVELOPER, 204
    ),
    ("GET", "/api/vault/keys"): Rule(Access.CLUSTER_ADMIN, 200),
    ("POST", "/api/vault/keys/rotate"): Rule(Access.CLUSTER_ADMIN, 200),
    ("POST", "/api/vault/keys/{keyId}/retire"): Rule(Access.CLUSTER_ADMIN, 200),
}


def expected_status(rule: Rule, caller: str, path: str) -> int:
    if rule.access is Access.PUBLIC:
        return rule.success
    if caller in {"revoked", "no_key"}:
        return 401
    if caller == "cluster_admin":
        return rule.success
    match rule.access:
        case Access.ANY_USER:
            return rule.success
        case Access.CLUSTER_ADMIN:
            return 403
        case Access.KEY_OWNER:  # the spare key is the developer's
            return rule.success if caller == "developer" else 404
    # Team-scoped from here on.
    if caller == "other_team":
        return 404
    needed = {
        Access.TEAM_VIEWER: 1,
        Access.TEAM_DEVELOPER: 2,
        Access.TEAM_ADMIN: 3,
        Access.LEAVE_OR_ADMIN: 3,
    }[rule.access]
    if rule.access is Access.LEAVE_OR_ADMIN and caller == "developer":
        return rule.success  # the developer is the member being removed: leaving is allowed
    return rule.success if ROLES[caller] >= needed else 403


class Matrix:
    def __init__(self, live: LiveServer, git: GitRepo) -> None:
        self.live = live
        self.git = git
        self.admin = live.client(live.admin_key)
        self.keys: dict[str, str | None] = {"cluster_admin": live.admin_key, "no_key": None}
        self.users: dict[str, int] = {}
        for name in ("team_admin", "developer", "viewer", "other_team"):
            user = self._ok(
                self.admin.post("/users", json={"name": name, "email": _unique(name) + "@x.io"})
            )
            key = self._ok(self.admin.post("/keys", json={"name": "k", "userId": user["id"]}))
            self.users[name], self.keys[name] = user["id"], key["key"]
        revoked = self._ok(
            self.admin.post("/keys", json={"name": "r", "userId": self.users["team_admin"]})
        )
        self._ok(self.admin.delete(f"/keys/{revoked['id']}"))
        self.keys["revoked"] = revoked["key"]
        with live.client(self.keys["other_team"]) as other:
            self._ok(other.post("/teams", json={"name": _unique("other")}))

    @staticmethod
    def _ok(response: httpx.Response) -> Any:
        assert response.is_success, (response.request.url, response.status_code, response.text)
        return response.json() if response.content else None

    def close(self) -> None:
        self.admin.close()

    def world(self) -> World:
        team = self._ok(self.admin.post("/teams", json={"name": _unique("team")}))["id"]
        for name, role in (
            ("team_admin", "admin"),
            ("developer", "developer"),
            ("viewer", "viewer"),
        ):
            self._ok(
                self.admin.post(
                    f"/teams/{team}/members", json={"userId": self.users[name], "role": role}
                )
            )
        ws = self._ok(
            self.admin.post(
                "/workspaces", json={"teamId": team, "name": "w", "gitUrl": self.git.url}
            )
        )["id"]
        self._ok(self.admin.put(f"/vault/teams/{team}/secrets/S", json={"value": "v"}))
        self._ok(
            self.admin.put(f"/vault/teams/{team}/workspaces/{ws}/secrets/S", json={"value": "v"})
        )
        spare = self._ok(
            self.admin.post("/keys", json={"name": "spare", "userId": self.users["developer"]})
        )["id"]
        keys = self._ok(self.admin.get("/vault/keys"))
        if len([k for k in keys if k["retiredAt"] is None]) < 2:
            self._ok(self.admin.post("/vault/keys/rotate"))
            keys = self._ok(self.admin.get("/vault/keys"))
        newcomer = self._ok(
            self.admin.post("/users", json={"name": "new", "email": _unique("new") + "@x.io"})
        )["id"]
        return World(
            team=team,
            workspace=ws,
            target_user=self.users["developer"],
            spare_key=spare,
            old_vault_key=min(k["id"] for k in keys),
            git_url=self.git.url,
            extra={"newcomer": newcomer},
        )

    def fill(self, path: str, world: World) -> str:
        values = {
            "teamId": world.team,
            "workspaceId": world.workspace,
            "userId": world.target_user,
            "keyId": world.old_vault_key if path.startswith("/api/vault/keys") else world.spare_key,
            "name": "S",
            "profile": "nope",
            "stage": "prepare",
            "step": 0,
            "service": "web",
            "replica": 0,
            "domain": _unique("shop") + ".example.com",  # domains are unique installation-wide
        }
        return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), path)


def _operations(live: LiveServer) -> set[tuple[str, str]]:
    spec = httpx.get(live.api + "/openapi.json").json()
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def test_every_operation_has_a_rule(live: LiveServer) -> None:
    assert _operations(live) == set(RULES)


@pytest.fixture
def matrix(live: LiveServer, git_repo: GitRepo) -> Iterator[Matrix]:
    built = Matrix(live, git_repo)
    yield built
    built.close()


def test_access_matrix(live: LiveServer, matrix: Matrix) -> None:
    failures: list[str] = []
    world = matrix.world()
    for (method, template), rule in sorted(RULES.items()):
        for caller in CALLERS:
            path = matrix.fill(template, world)
            key = matrix.keys[caller]
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            body = rule.body(world) if rule.body else None
            response = httpx.request(
                method, live.url + path, json=body, headers=headers, timeout=30
            )
            want = expected_status(rule, caller, template)
            if response.status_code != want:
                failures.append(
                    f"{method} {template} as {caller}: {response.status_code} != {want} "
                    f"({response.text[:200]})"
                )
            if response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json"
                problem = response.json()
                assert problem["status"] == response.status_code
                assert problem["type"].startswith("urn:terrace:problem:")
            if method != "GET" and response.is_success:
                world = matrix.world()  # the call may have changed who may do what
    assert not failures, "\n".join(failures)


def test_another_teams_object_looks_like_a_missing_one(live: LiveServer, matrix: Matrix) -> None:
    world = matrix.world()
    with live.client(matrix.keys["other_team"]) as other:
        hidden = other.get(f"/workspaces/{world.workspace}")
        missing = other.get("/workspaces/2000000000")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"].replace(str(world.workspace), "N") == missing.json()[
        "detail"
    ].replace("2000000000", "N")
