from __future__ import annotations

import os
from pathlib import Path

import pytest

from terrace.errors import InvalidInput, SourceError
from terrace.sources import check_local_folder, read_workspace_file


def test_local_folders_must_exist_and_be_absolute(tmp_path: Path) -> None:
    assert check_local_folder(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(InvalidInput, match="absolute"):
        check_local_folder("relative/path")
    with pytest.raises(InvalidInput, match="not a folder"):
        check_local_folder(str(tmp_path / "missing"))


def test_files_and_links_inside_the_workspace_are_read(tmp_path: Path) -> None:
    (tmp_path / "real.yml").write_text("a: 1\n")
    (tmp_path / "ci.yml").symlink_to("real.yml")
    assert read_workspace_file(tmp_path, "ci.yml") == b"a: 1\n"


def test_links_out_of_the_workspace_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("SECRET-CONTENT")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "ci.yml").symlink_to(outside)
    with pytest.raises(SourceError, match="links outside the workspace") as caught:
        read_workspace_file(workspace, "ci.yml")
    assert "SECRET" not in str(caught.value)


def test_only_small_regular_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "big.yml").write_bytes(b"x" * 2048)
    with pytest.raises(SourceError, match="larger than 1 KiB"):
        read_workspace_file(tmp_path, "big.yml", limit=1024)
    os.mkfifo(tmp_path / "fifo.yml")
    with pytest.raises(SourceError, match="not a regular file"):
        read_workspace_file(tmp_path, "fifo.yml")
    (tmp_path / "dir.yml").mkdir()
    with pytest.raises(SourceError, match="not a regular file"):
        read_workspace_file(tmp_path, "dir.yml")
