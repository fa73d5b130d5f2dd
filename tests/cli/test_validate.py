"""``terrace validate`` as a user runs it: a real process, its output and its exit status."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import CONFORMANCE, EXAMPLES, ROOT


def terrace(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "terrace", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_examples_are_valid_and_exit_zero() -> None:
    result = terrace("validate", str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "examples/02-shop/ci.yml: landscape, 3 services\n" in result.stdout
    assert "examples/02-shop/ci.prod.yml: landscape, 3 services, 1 managed service" in result.stdout
    assert result.stdout.rstrip().endswith("5 files checked: 5 valid, 0 invalid, 0 warnings")


def test_the_whole_conformance_corpus_validates() -> None:
    result = terrace("validate", "--json", str(CONFORMANCE))
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert len(reports) == 52
    assert all(r["valid"] for r in reports)


def test_an_invalid_file_prints_file_line_column_and_exits_one(tmp_path: Path) -> None:
    write(
        tmp_path,
        "ci.yml",
        """\
        schemaVersion: v0.2
        run:
          web:
            steps: [{command: serve}]
            replicas: 0
            network:
              paths: [{port: 3000, path: /, stripPaht: true}]
        """,
    )
    result = terrace("validate", "ci.yml", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "invalid ci.yml: landscape, 1 error"
    assert lines[1] == (
        "ci.yml:5:15: error: `replicas` must be at least 1, got 0 (run.web.replicas)"
    )
    assert lines[2].startswith("ci.yml:7:37: warning: unknown key `stripPaht` in a path")
    assert "did you mean `stripPath`?" in lines[2]


def test_json_output_lists_every_file_with_errors_and_warnings(tmp_path: Path) -> None:
    write(tmp_path, "good/ci.yml", "run: {steps: [{command: serve}]}\n")
    write(tmp_path, "bad/provider.yml", "name: Bad Name\nversion: v1\nbackend: {landscape: {}}\n")
    write(tmp_path, "syntax/ci.prod.yml", "run: [1, 2\n")
    result = terrace("validate", "--json", ".", cwd=tmp_path)
    assert result.returncode == 1
    reports = json.loads(result.stdout)
    assert [(r["file"], r["kind"], r["valid"]) for r in reports] == [
        ("bad/provider.yml", "provider", False),
        ("good/ci.yml", "landscape", True),
        ("syntax/ci.prod.yml", "landscape", False),
    ]
    bad = reports[0]["errors"][0]
    assert bad == {
        "line": 1,
        "column": 7,
        "path": "name",
        "message": "provider name 'Bad Name' must match ^[-a-z0-9_]+$",
    }
    syntax = reports[2]["errors"][0]
    assert (syntax["line"], syntax["column"]) == (2, 1)
    assert syntax["message"].startswith("invalid YAML:")


def test_undecodable_bytes_are_reported_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "ci.yml").write_bytes(b"run:\n  steps:\n    - command: caf\xe9\n")
    result = terrace("validate", "ci.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert "ci.yml:3:19: error: the file is not UTF-8 text (byte 0xe9)" in result.stdout


def test_usage_errors_exit_two(tmp_path: Path) -> None:
    missing = terrace("validate", "no-such-dir", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no-such-dir: no such file or folder" in missing.stderr

    (tmp_path / "empty").mkdir()
    nothing = terrace("validate", "empty", cwd=tmp_path)
    assert nothing.returncode == 2
    assert "no ci.yml or provider.yml files under empty" in nothing.stderr

    write(tmp_path, "compose.yml", "run: {steps: [{command: x}]}\n")
    unknown = terrace("validate", "compose.yml", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "pass --kind" in unknown.stderr
    forced = terrace("validate", "--kind", "landscape", "compose.yml", cwd=tmp_path)
    assert forced.returncode == 0, forced.stdout

    bad_option = terrace("validate", "--no-such-option", cwd=tmp_path)
    assert bad_option.returncode == 2


def test_version() -> None:
    result = terrace("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("terrace ")
