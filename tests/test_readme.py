"""The README's example landscape and the output it shows stay true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README, re.S)


def validate(folder: Path, text: str) -> str:
    (folder / "ci.yml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "terrace", "validate", "ci.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "$ .venv/bin/terrace validate ci.yml\n" + result.stdout


def test_the_minimal_landscape_validates_as_shown(tmp_path: Path) -> None:
    (landscape,) = blocks("yaml")
    good, bad = blocks("console")
    assert validate(tmp_path, landscape) == good
    broken = landscape.replace("replicas: 2", "replicas: 0").replace(
        "          path: /\n", "          path: /\n          stripPaht: true\n"
    )
    assert validate(tmp_path, broken) == bad


def test_the_quickstart_has_exactly_two_commands_and_ci_runs_the_second() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("##", 1)[0]
    (commands,) = re.findall(r"```sh\n(.*?)```", quickstart, re.S)
    lines = [line.split("#")[0].strip() for line in commands.strip().splitlines()]
    assert lines == ["./scripts/demo", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec ./scripts/test" in ci
