"""What the user types and what the server says, in process: bad input is a usage error (exit 2),
and text from elsewhere reaches the terminal with its control characters and markup defused."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from terrace.cli.client import ApiClient, RequestFailed, Target, Unreachable, UsageProblem
from terrace.cli.config import Config, default_team, default_workspace
from terrace.cli.keys import parse_duration
from terrace.cli.main import app
from terrace.cli.output import print_error, print_record, print_table, say
from terrace.cli.terminal import printable

ESC = "\x1b"
HOSTILE = f"{ESC}[2J{ESC}]0;pwned\x07\x9b31m\u202egnp.exe\u2066"
DEFUSED = "\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202egnp.exe\\u2066"


def _run(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    sandbox = {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TERRACE_HOME": str(tmp_path / "no-server"),
        "TERRACE_API": "http://127.0.0.1:9",  # never reached: every case fails before a request
        "TERRACE_API_KEY": "k",
        "TERRACE_TEAM": "",
        "TERRACE_WORKSPACE": "",
    }
    result = CliRunner().invoke(app, list(args), env={**sandbox, **env})
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


# --- --expires-in -------------------------------------------------------------------------------


def test_durations_are_capped_at_ten_years() -> None:
    assert parse_duration("3650d") == timedelta(days=3650)
    assert parse_duration("521w") == timedelta(weeks=521)
    for too_long in ("3651d", "522w", "999999w", "999999999999w", "315360001s"):
        with pytest.raises(UsageProblem, match=r"--expires-in: .* between 1s and 3650d"):
            parse_duration(too_long)
    for bad in ("²d", "٣d", "1_0d", "3d\n", "+3d"):
        with pytest.raises(UsageProblem, match="--expires-in"):
            parse_duration(bad)


@pytest.mark.parametrize("given", ["999999w", "999999999999d", "²h"])
def test_keys_create_with_an_absurd_lifetime_is_a_usage_error(tmp_path: Path, given: str) -> None:
    code, stdout, stderr = _run(tmp_path, "keys", "create", "k", "--expires-in", given)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith("error: --expires-in: ")
    assert "3650d" in stderr
    assert "Traceback" not in stderr


# --- TERRACE_TEAM and TERRACE_WORKSPACE ----------------------------------------------------------


@pytest.mark.parametrize("raw", ["²", "٣", "1_0", "0", "-1", "1e3", "x", "99999999999999999999"])
def test_ids_from_the_environment_are_plain_ascii_numbers(raw: str) -> None:
    with pytest.raises(UsageProblem, match="TERRACE_TEAM must be an ID"):
        default_team(None, Config(), {"TERRACE_TEAM": raw})
    with pytest.raises(UsageProblem, match="TERRACE_WORKSPACE must be an ID"):
        default_workspace(None, Config(), {"TERRACE_WORKSPACE": raw})


def test_ids_from_the_environment() -> None:
    assert default_team(None, Config(team=4), {"TERRACE_TEAM": " 12 "}) == 12
    assert default_workspace(7, Config(), {"TERRACE_WORKSPACE": "²"}) == 7  # the flag wins


@pytest.mark.parametrize(
    ("variable", "command"),
    [("TERRACE_TEAM", ["teams", "get"]), ("TERRACE_WORKSPACE", ["workspaces", "get"])],
)
def test_a_superscript_id_in_the_environment_is_a_usage_error(
    tmp_path: Path, variable: str, command: list[str]
) -> None:
    code, _, stderr = _run(tmp_path, *command, **{variable: "²"})
    assert code == 2
    assert stderr == f"error: {variable} must be an ID (a positive integer), not '²'\n"


# --- text from the server ------------------------------------------------------------------------


def test_printable_escapes_controls_and_bidi() -> None:
    assert printable(HOSTILE) == DEFUSED
    assert printable("a\tb\nc\r") == "a\\tb\\nc\\r"
    assert printable("a\tb\r\nc\rd\x00", multiline=True) == "a\tb\nc\nd\\x00"
    assert printable("Zoë 東京 [red]x\\n") == "Zoë 東京 [red]x\\n"  # the rest is left alone
    assert printable(printable(HOSTILE)) == DEFUSED


def test_problem_details_reach_stderr_defused(capsys: pytest.CaptureFixture[str]) -> None:
    body = {
        "title": f"Bad {ESC}[31mthing\u202e",
        "status": 422,
        "detail": f"git clone failed:\nfatal: {ESC}]0;x\x07no\r\n\thint: \x9b2J",
        "errors": [{"path": f"body.name{ESC}", "message": "no\nnewline\u2067"}],
        "problems": [
            {"file": "ci.yml", "line": 1, "column": 2, "path": "", "message": f"{ESC}[8mhidden"}
        ],
    }
    answer = httpx.MockTransport(lambda _: httpx.Response(422, json=body))
    with (
        ApiClient(Target("http://api.test", "k", "test"), transport=answer) as client,
        pytest.raises(RequestFailed) as failed,
    ):
        client.get("/x")
    print_error(failed.value)
    print_error(Unreachable(f"cannot reach {ESC}[2J"))
    assert capsys.readouterr().err == (
        "error: Bad \\x1b[31mthing\\u202e: git clone failed:\n"
        "fatal: \\x1b]0;x\\x07no\n"
        "\thint: \\x9b2J\n"
        "body.name\\x1b: no\\nnewline\\u2067\n"
        "ci.yml:1:2: \\x1b[8mhidden\n"
        "error: cannot reach \\x1b[2J\n"
    )


def test_a_response_that_is_not_json_is_defused_too(capsys: pytest.CaptureFixture[str]) -> None:
    proxy = httpx.MockTransport(lambda _: httpx.Response(502, text=f"<b>{ESC}[2Jdown</b>"))
    with (
        ApiClient(Target("http://api.test", "k", "test"), transport=proxy) as client,
        pytest.raises(RequestFailed) as failed,
    ):
        client.get("/x")
    print_error(failed.value)
    assert capsys.readouterr().err == "error: HTTP 502 Bad Gateway: <b>\\x1b[2Jdown</b>\n"


def test_tables_records_and_lines_show_names_literally(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    rows = [
        {"id": 1, "name": "[red]x[/red] [bold]", "tags": ["[link=http://e.vil]y", HOSTILE]},
        {"id": 2, "name": HOSTILE, "tags": []},
    ]
    columns = [("ID", "id"), ("NAME", "name"), ("TAGS", "tags")]
    print_table(rows, columns, empty="-")
    table = capsys.readouterr().out
    assert "[red]x[/red] [bold]" in table
    assert "[link=http://e.vil]y" in table
    assert DEFUSED in table
    assert ESC not in table
    assert "\u202e" not in table

    print_record(rows[1], columns)
    say(f"Default team: 2 ({HOSTILE}).")
    assert capsys.readouterr().out == (
        f"ID    2\nNAME  {DEFUSED}\nTAGS  -\nDefault team: 2 ({DEFUSED}).\n"
    )


def test_validate_prints_file_names_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "[bold red]x\u202e"
    folder.mkdir()
    (folder / "ci.yml").write_text("schemaVersion: 1\nservices: {}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", folder.name])
    assert "Traceback" not in result.output
    assert "[bold red]x\\u202e/ci.yml" in result.stdout
    assert "\u202e" not in result.stdout
