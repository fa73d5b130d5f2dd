"""The command groups end to end: teams, members, keys, users, workspaces, env vars, the vault."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.cli.conftest import Cli, Person, new_team, new_user
from tests.conftest import EXAMPLES, GitRepo
from tests.support.live import LiveServer


def _as(live: LiveServer, person: Person | str) -> dict[str, str]:
    key = person if isinstance(person, str) else person.key
    return {"TERRACE_API": live.url, "TERRACE_API_KEY": key}


def test_teams_and_members(live: LiveServer, cli: Cli) -> None:
    admin, other = new_user(live), new_user(live)
    env = _as(live, admin)

    created = cli("teams", "create", "Platform", "--json", **env).json()
    assert (created["name"], created["role"]) == ("Platform", "admin")
    team = str(created["id"])
    shown = cli("teams", "get", team, **env)
    assert shown.returncode == 0, shown.stderr
    assert "NAME       Platform" in shown.stdout

    added = cli("teams", "members", "add", "-t", team, "--email", other.email, **env)
    assert added.returncode == 0, added.stderr
    assert "ROLE   developer" in added.stdout
    role = cli("teams", "members", "set-role", str(other.id), "viewer", "-t", team, "--json", **env)
    assert role.json()["role"] == "viewer"
    members = cli("teams", "members", "list", "-t", team, "--json", **env).json()
    assert {(m["userId"], m["role"]) for m in members} == {
        (admin.id, "admin"),
        (other.id, "viewer"),
    }
    table = cli("teams", "members", "list", "-t", team, **env).stdout
    assert other.email in table
    assert "viewer" in table

    removed = cli("teams", "members", "rm", str(other.id), "-t", team, **env)
    assert removed.returncode == 0, removed.stderr
    assert f"Removed user {other.id} from team {team}." in removed.stdout

    deleted = cli("teams", "delete", team, "--yes", **env)
    assert deleted.returncode == 0, deleted.stderr
    gone = cli("teams", "get", team, **env)
    assert gone.returncode == 1
    assert gone.stderr == f"error: Not found: no team {team}\n"


def test_names_from_the_server_print_literally(live: LiveServer, cli: Cli) -> None:
    """Markup, C1 controls and bidi overrides in a team's name reach the terminal defused;
    --json keeps the name as it is."""
    admin = new_user(live)
    env = _as(live, admin)
    name = "[red]x[/red] \x9b2J \u202egnp.exe"
    created = cli("teams", "create", name, "--json", **env).json()
    assert created["name"] == name
    team = str(created["id"])

    for args in (["teams", "list"], ["teams", "get", team], ["teams", "use", team]):
        shown = cli(*args, **env)
        assert shown.returncode == 0, shown.stderr
        assert "[red]x[/red] \\x9b2J \\u202egnp.exe" in shown.stdout, args
        assert "\x9b" not in shown.stdout
        assert "\u202e" not in shown.stdout


def test_keys_create_refuses_a_lifetime_beyond_ten_years(live: LiveServer, cli: Cli) -> None:
    refused = cli("keys", "create", "k", "--expires-in", "999999w", **_as(live, new_user(live)))
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: --expires-in: '999999w' is too long; it must be between 1s and 3650d (10 years)\n"
    )


def test_keys_create_show_the_key_once_and_a_revoked_key_stops_working(
    live: LiveServer, cli: Cli
) -> None:
    user = new_user(live)
    created = cli("keys", "create", "laptop", "--expires-in", "2h", "--json", **_as(live, user))
    key = created.json()
    expires = datetime.fromisoformat(key["expiresAt"])
    assert timedelta(hours=1) < expires - datetime.now(UTC) <= timedelta(hours=2)

    human = cli("keys", "create", "ci", **_as(live, user))
    assert human.returncode == 0, human.stderr
    assert "shown only this once" in human.stdout
    second = human.stdout.splitlines()[1].strip()
    assert second.startswith("trk_")

    listed = cli("keys", "list", "--json", **_as(live, second)).json()
    assert {k["name"] for k in listed} == {"test", "laptop", "ci"}
    assert all("key" not in k for k in listed)
    assert key["key"] not in cli("keys", "list", **_as(live, second)).stdout

    revoked = cli("keys", "revoke", str(key["id"]), **_as(live, user))
    assert revoked.returncode == 0, revoked.stderr
    refused = cli("teams", "list", **_as(live, key["key"]))
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: Missing or invalid API key: ")
    assert key["key"] not in refused.output


def test_users_create_issues_a_first_key_that_works(live: LiveServer, cli: Cli) -> None:
    made = cli(
        "users", "create", "Dana", "--email", "dana@example.com", **_as(live, live.admin_key)
    )
    assert made.returncode == 0, made.stderr
    assert "EMAIL          dana@example.com" in made.stdout
    lines = made.stdout.splitlines()
    key = lines[lines.index(next(line for line in lines if line.startswith("API key"))) + 1].strip()
    me = cli("users", "me", "--json", **_as(live, key)).json()
    assert (me["name"], me["clusterAdmin"]) == ("Dana", False)


def test_a_workspace_from_a_relative_path_and_its_landscape(live: LiveServer, cli: Cli) -> None:
    team = new_team(live, new_user(live, cluster_admin=True))
    env = _as(live, live.admin_key)
    created = cli(
        "workspaces",
        "create",
        "shop",
        "--path",
        "02-shop",
        "-t",
        str(team),
        "--json",
        cwd=EXAMPLES,
        **env,
    ).json()
    assert (created["source"], created["path"]) == ("local", str(EXAMPLES / "02-shop"))
    workspace = str(created["id"])

    listed = cli("workspaces", "list", "-t", str(team), **env)
    assert "shop" in listed.stdout
    assert str(EXAMPLES / "02-shop") in listed.stdout

    landscape = cli("workspaces", "landscape", "-w", workspace, "--profile", "prod", **env)
    assert landscape.returncode == 0, landscape.stderr
    assert landscape.stdout.startswith("ci.prod.yml: schema v0.2, profile prod\n")
    for service in ("web", "api", "worker"):
        assert service in landscape.stdout
    assert "Managed services: db" in landscape.stdout
    assert "Vault secrets: SHOP_DB_PASSWORD" in landscape.stdout
    parsed = cli("workspaces", "landscape", workspace, "--json", **env).json()
    assert [s["name"] for s in parsed["services"]] == ["web", "api", "worker"]
    assert parsed["managedServices"] == []

    missing = cli("workspaces", "landscape", workspace, "--profile", "staging", **env)
    assert missing.returncode == 1
    assert (
        "ci.staging.yml:1:1: no ci.staging.yml (or .yaml) in the workspace for profile 'staging'"
        in missing.stderr.splitlines()
    )

    deleted = cli("workspaces", "delete", workspace, "--yes", **env)
    assert deleted.returncode == 0, deleted.stderr
    assert (EXAMPLES / "02-shop" / "ci.yml").exists()  # a server folder is not deleted


def test_a_workspace_from_git_becomes_the_default(
    live: LiveServer, cli: Cli, git_repo: GitRepo
) -> None:
    developer = new_user(live)
    team = str(new_team(live, developer))
    env = _as(live, developer)
    created = cli(
        "workspaces", "create", "hello", "--git", git_repo.url, "--ref", "v1", "-t", team, **env
    )
    assert created.returncode == 0, created.stderr
    assert f"COMMIT   {git_repo.commit}" in created.stdout
    workspace = created.stdout.splitlines()[0].split()[-1]

    use = cli("workspaces", "use", workspace, **env)
    assert use.returncode == 0, use.stderr
    assert f"Default workspace: {workspace} (hello) in team {team}" in use.stdout
    shown = cli("workspaces", "get", "--json", **env).json()
    assert (shown["gitUrl"], shown["gitRef"]) == (git_repo.url, "v1")
    assert cli("env", "set", "GREETING=hi", **env).returncode == 0
    assert cli("workspaces", "list", "--json", **env).json()[0]["name"] == "hello"

    deleted = cli("workspaces", "delete", workspace, "--yes", **env)
    assert deleted.returncode == 0, deleted.stderr
    assert "workspace" not in cli.config_file.read_text()
    missing = cli("env", "list", **env)
    assert missing.returncode == 2
    assert "which workspace?" in missing.stderr

    no_repo = cli(
        "workspaces", "create", "x", "--git", git_repo.url + "-missing", "-t", team, **env
    )
    assert no_repo.returncode == 1
    assert no_repo.stderr.startswith("error: The workspace source could not be read: ")


def test_an_invalid_landscape_prints_each_problem_with_its_location(
    live: LiveServer, cli: Cli, tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "ci.yml").write_text(
        textwrap.dedent("""\
            schemaVersion: v0.2
            run:
              web:
                steps: [{command: serve}]
                replicas: 0
            """)
    )
    team = new_team(live, new_user(live))
    env = _as(live, live.admin_key)
    created = cli(
        "workspaces", "create", "broken", "--path", str(folder), "-t", str(team), "--json", **env
    ).json()
    result = cli("workspaces", "landscape", str(created["id"]), **env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: The landscape or provider file is invalid: 1 problem(s)")
    assert lines[1] == "ci.yml:5:15: `replicas` must be at least 1, got 0 (run.web.replicas)"


def test_a_developer_cannot_use_a_server_folder(live: LiveServer, cli: Cli) -> None:
    admin, developer = new_user(live), new_user(live)
    team = new_team(live, admin, (developer, "developer"))
    hello = str(EXAMPLES / "01-hello")
    result = cli(
        "workspaces", "create", "x", "--path", hello, "-t", str(team), **_as(live, developer)
    )
    assert result.returncode == 1
    assert "only cluster admins may create a workspace from a server folder" in result.stderr


def _workspace(live: LiveServer, team: int) -> int:
    with live.client(live.admin_key) as admin:
        made = admin.post(
            "/workspaces",
            json={"teamId": team, "name": "w", "path": str(EXAMPLES / "01-hello")},
        )
        made.raise_for_status()
        workspace: int = made.json()["id"]
    return workspace


def test_env_set_list_rm(live: LiveServer, cli: Cli) -> None:
    developer = new_user(live)
    workspace = str(_workspace(live, new_team(live, developer)))
    env = {**_as(live, developer), "TERRACE_WORKSPACE": workspace}

    assert cli("env", "list", **env).stdout == "No env vars.\n"
    put = cli("env", "set", "A=1", "B=x=y", **env)
    assert put.returncode == 0, put.stderr
    assert put.stdout == f"Set A, B in workspace {workspace}.\n"
    assert cli("env", "list", "--json", **env).json() == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "x=y"},
    ]
    assert cli("env", "rm", "A", "NEVER_SET", **env).returncode == 0
    assert cli("env", "list", "-w", workspace, "--json", **_as(live, developer)).json() == [
        {"name": "B", "value": "x=y"}
    ]
    bad = cli("env", "set", "1X=2", **env)
    assert bad.returncode == 1
    assert "error: The request is invalid" in bad.stderr


def test_vault_values_go_in_and_never_come_out(live: LiveServer, cli: Cli) -> None:
    developer = new_user(live)
    team = new_team(live, developer)
    workspace = str(_workspace(live, team))
    env = {**_as(live, developer), "TERRACE_TEAM": str(team)}
    value, other = "s3cr3t-Value-never-shown", "w0rkspace-value-never-shown"
    outputs = []

    put = cli("vault", "set", "DB_PASSWORD", input=value + "\n", **env)
    outputs.append(put.output)
    assert put.returncode == 0, put.stderr
    assert put.stdout == f"Stored DB_PASSWORD in the vault of team {team}.\n"
    scoped = cli("vault", "set", "TOKEN", "-w", workspace, "--value", other, **env)
    outputs.append(scoped.output)
    assert scoped.stdout == f"Stored TOKEN in the vault of workspace {workspace}.\n"

    team_list = cli("vault", "list", **env)
    workspace_list = cli("vault", "list", "-w", workspace, "--json", **env)
    outputs += [team_list.output, workspace_list.output]
    assert "DB_PASSWORD" in team_list.stdout
    assert "TOKEN" not in team_list.stdout
    assert [s["name"] for s in workspace_list.json()] == ["TOKEN"]

    empty = cli("vault", "set", "EMPTY", input="", **env)
    assert empty.returncode == 2
    assert "stdin was empty" in empty.stderr

    removed = cli("vault", "rm", "DB_PASSWORD", **env)
    outputs.append(removed.output)
    assert removed.returncode == 0, removed.stderr
    assert cli("vault", "list", "--json", **env).json() == []
    for text in outputs:
        assert value not in text
        assert other not in text


def test_vault_data_keys_are_for_cluster_admins(live: LiveServer, cli: Cli) -> None:
    refused = cli("vault", "keys", **_as(live, new_user(live)))
    assert refused.returncode == 1
    assert "only cluster admins may do this" in refused.stderr

    env = _as(live, live.admin_key)
    team = new_team(live, new_user(live))
    assert cli("vault", "set", "SEALED", "-t", str(team), "--value", "v", **env).returncode == 0
    rotated = cli("vault", "rotate-key", "--json", **env).json()
    assert rotated["primary"] is True
    keys = cli("vault", "keys", "--json", **env).json()
    assert [k["id"] for k in keys if k["primary"]] == [rotated["id"]]
    old = next(k for k in keys if not k["primary"] and k["retiredAt"] is None)
    retired = cli("vault", "retire-key", str(old["id"]), "--json", **env).json()
    assert retired["retiredAt"] is not None
    newest = cli("vault", "retire-key", str(rotated["id"]), **env)
    assert newest.returncode == 1
    assert "is the newest key: rotate first" in newest.stderr
