from __future__ import annotations

from pathlib import Path

import pytest

from terrace.errors import SpecError
from terrace.spec.files import (
    FileKind,
    discover,
    find_landscape,
    find_provider,
    kind_of,
    profile_of,
)


@pytest.mark.parametrize(
    ("name", "kind", "profile"),
    [
        ("ci.yml", FileKind.LANDSCAPE, None),
        ("ci.yaml", FileKind.LANDSCAPE, None),
        ("ci.prod.yml", FileKind.LANDSCAPE, "prod"),
        ("ci.binary-dev.yml", FileKind.LANDSCAPE, "binary-dev"),
        ("ci.yml.example", FileKind.LANDSCAPE, None),
        ("provider.yml", FileKind.PROVIDER, None),
        ("provider.static.yml", FileKind.PROVIDER, None),
        ("provider.rest.yml.example", FileKind.PROVIDER, None),
        ("docker-compose.yml", None, None),
        ("ci.json", None, None),
        ("circle.yml", None, None),
    ],
)
def test_the_kind_follows_the_file_name(
    name: str, kind: FileKind | None, profile: str | None
) -> None:
    assert kind_of(name) is kind
    assert profile_of(name) == profile


def touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("run: {}\n")


def test_discover_walks_folders_and_skips_hidden_ones(tmp_path: Path) -> None:
    touch(
        tmp_path, "ci.yml", "a/provider.yml", "a/README.md", ".git/ci.yml", "node_modules/x/ci.yml"
    )
    assert [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path])] == [
        "ci.yml",
        "a/provider.yml",
    ]


def test_find_landscape_by_profile(tmp_path: Path) -> None:
    touch(tmp_path, "ci.yml", "ci.prod.yml", "ci.yml.example")
    assert find_landscape(tmp_path).name == "ci.yml"
    assert find_landscape(tmp_path, "prod").name == "ci.prod.yml"
    assert find_landscape(tmp_path, "default").name == "ci.yml"
    with pytest.raises(SpecError, match=r"no ci\.qa\.yml"):
        find_landscape(tmp_path, "qa")


def test_twins_for_one_profile_are_refused(tmp_path: Path) -> None:
    touch(tmp_path, "ci.prod.yml", "ci.prod.yaml", "provider.yml", "provider.yaml")
    with pytest.raises(SpecError, match=r"both ci\.prod\.yaml and ci\.prod\.yml define the same"):
        find_landscape(tmp_path, "prod")
    with pytest.raises(SpecError, match=r"both provider\.yaml and provider\.yml"):
        find_provider(tmp_path)
