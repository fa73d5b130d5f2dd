"""How the CLI finds its API and key, what it saves, and how it fails: a real server, a real CLI."""

from __future__ import annotations

import json
import socket
import stat

from tests.cli.conftest import Cli, new_team, new_user
from tests.support.live import LiveServer


def _dead_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_login_saves_the_key_privately_then_no_flags_are_needed(live: LiveServer, cli: Cli) -> None:
    user = new_user(live)
    team = new_team(live, user)

    result = cli("login", "-a", live.api + "/", "--key", user.key)
    assert result.returncode == 0, result.stderr
    assert f"Logged in to {live.url} as user" in result.stdout
    assert user.key not in result.output

    assert stat.S_IMODE(cli.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config_file.parent.stat().st_mode) == 0o700
    assert json.loads(cli.config_file.read_text()) == {"api": live.url, "key": user.key}

    teams = cli("teams", "list")
    assert teams.returncode == 0, teams.stderr
    assert "YOUR ROLE" in teams.stdout
    assert [t["id"] for t in cli("teams", "list", "--json").json()] == [team]
    assert cli("users", "me", "--json").json()["email"] == user.email

    out = cli("logout")
    assert out.returncode == 0, out.stderr
    assert "key" not in json.loads(cli.config_file.read_text())
    after = cli("teams", "list")
    assert after.returncode == 2
    assert f"error: no API key for {live.url}: run `terrace login" in after.stderr


def test_login_reads_the_key_from_stdin_and_refuses_a_bad_one(live: LiveServer, cli: Cli) -> None:
    bad = cli("login", "-a", live.url, "--key", "trk_not-a-key")
    assert bad.returncode == 1
    assert "error: Missing or invalid API key" in bad.stderr
    assert not cli.config_file.exists()

    user = new_user(live)
    piped = cli("login", "-a", live.url, "--json", input=user.key + "\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.json()["email"] == user.email
    assert json.loads(cli.config_file.read_text())["key"] == user.key


def test_the_environment_overrides_the_config_file(live: LiveServer, cli: Cli) -> None:
    developer = new_user(live)
    assert cli("login", "-a", live.url, "--key", developer.key).returncode == 0

    as_developer = cli("users", "list")
    assert as_developer.returncode == 1
    assert "error: Your role does not allow this: only cluster admins may do this" in (
        as_developer.stderr
    )
    as_admin = cli("users", "list", "--json", TERRACE_API_KEY=live.admin_key)
    assert developer.email in [u["email"] for u in as_admin.json()]

    # TERRACE_API beats the config file's URL; the flag beats TERRACE_API.
    config = json.loads(cli.config_file.read_text())
    cli.config_file.write_text(json.dumps({**config, "api": _dead_url()}))
    via_env = cli("users", "me", "--json", TERRACE_API=live.url, TERRACE_API_KEY=developer.key)
    assert via_env.json()["id"] == developer.id
    dead = _dead_url()
    unreachable = cli("users", "me", "-a", dead, TERRACE_API=live.url, TERRACE_API_KEY="k")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(f"error: cannot reach the Terrace API at {dead}: ")
    assert "`terrace server`" in unreachable.stderr


def test_team_and_workspace_defaults_come_from_flags_then_env_then_config(
    live: LiveServer, cli: Cli
) -> None:
    admin = new_user(live)
    first, second = new_team(live, admin), new_team(live, admin)
    env = {"TERRACE_API": live.url, "TERRACE_API_KEY": admin.key}

    missing = cli("workspaces", "list", **env)
    assert missing.returncode == 2
    assert "which team? pass -t/--team ID" in missing.stderr

    use = cli("teams", "use", str(first), **env)
    assert use.returncode == 0, use.stderr
    assert json.loads(cli.config_file.read_text())["team"] == first
    assert cli("teams", "get", "--json", **env).json()["id"] == first
    assert cli("teams", "get", "--json", **env, TERRACE_TEAM=str(second)).json()["id"] == second
    flagged = cli("teams", "get", "-t", str(first), "--json", **env, TERRACE_TEAM=str(second))
    assert flagged.json()["id"] == first

    bad = cli("teams", "get", **env, TERRACE_TEAM="alpha")
    assert bad.returncode == 2
    assert "TERRACE_TEAM must be an ID" in bad.stderr


def test_the_local_server_and_its_admin_key_are_found_without_configuration(
    live: LiveServer, cli: Cli
) -> None:
    me = cli("users", "me", "--json", TERRACE_HOME=str(live.home))
    assert me.json()["clusterAdmin"] is True
    assert live.admin_key not in me.output

    # The local admin key is only ever sent to the local server.
    elsewhere = cli("users", "me", "-a", _dead_url(), TERRACE_HOME=str(live.home))
    assert elsewhere.returncode == 2
    assert "error: no API key for http://127.0.0.1:" in elsewhere.stderr


def test_with_nothing_configured_it_says_how_to_start(cli: Cli) -> None:
    result = cli("teams", "list")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "terrace login" in result.stderr
    assert "terrace server" in result.stderr


def test_a_forbidden_action_prints_title_and_detail_and_exits_1(live: LiveServer, cli: Cli) -> None:
    admin, developer = new_user(live), new_user(live)
    team = new_team(live, admin, (developer, "developer"))
    result = cli(
        "teams", "delete", str(team), "--yes", TERRACE_API=live.url, TERRACE_API_KEY=developer.key
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: Your role does not allow this: "
        f"this needs the admin role in team {team}; yours is developer\n"
    )
    still = cli("teams", "get", str(team), TERRACE_API=live.url, TERRACE_API_KEY=admin.key)
    assert still.returncode == 0, still.stderr


def test_an_invalid_request_lists_each_field_error(live: LiveServer, cli: Cli) -> None:
    result = cli("teams", "create", " ", TERRACE_API=live.url, TERRACE_API_KEY=live.admin_key)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: The request is invalid: ")
    assert lines[1].startswith("body.name: ")


def test_usage_errors_exit_2(live: LiveServer, cli: Cli) -> None:
    env = {"TERRACE_API": live.url, "TERRACE_API_KEY": live.admin_key}
    for args, message in [
        (("teams", "get", "abc"), "Invalid value"),
        (("teams", "members", "add", "-t", "1"), "exactly one of --user-id and --email"),
        (("env", "set", "-w", "1", "NOEQUALS"), "'NOEQUALS' is not NAME=VALUE"),
        (("workspaces", "create", "x", "-t", "1"), "give exactly one of --git and --path"),
        (("keys", "create", "x", "--expires-in", "5y"), "'5y' is not a duration"),
        (("teams", "delete", "1"), "pass --yes"),
        (("teams", "--no-such-option"), "No such option"),
    ]:
        result = cli(*args, **env)
        assert result.returncode == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)


def test_a_broken_config_file_is_a_usage_error(cli: Cli) -> None:
    cli.config_file.parent.mkdir(parents=True)
    cli.config_file.write_text("{not json")
    result = cli("teams", "list")
    assert result.returncode == 2
    assert f"error: cannot read {cli.config_file}" in result.stderr
