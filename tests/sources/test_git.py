from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from terrace.errors import Forbidden, InvalidInput, SourceError
from terrace.sources import git
from terrace.sources.git import Busy, check_git_url, checkout
from tests.conftest import GitRepo


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "http://127.0.0.1:8000/repo.git",
        "ssh://git@host/org/repo.git",
        "git://host/repo.git",
        "git@github.com:org/repo.git",
    ],
)
def test_remote_urls_are_allowed(url: str) -> None:
    check_git_url(url, allow_local=False)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("file:///etc", Forbidden),
        ("/srv/repo", Forbidden),
        ("ext::sh -c id", InvalidInput),
        ("-upload-pack=id", InvalidInput),
        ("https://user:token@github.com/org/repo.git", InvalidInput),
        ("https://token@github.com/org/repo.git", InvalidInput),
        ("fd::3", InvalidInput),
        (" https://github.com/x", InvalidInput),
    ],
)
def test_other_urls_are_refused(url: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_git_url(url, allow_local=False)


def test_cluster_admins_may_clone_local_repositories() -> None:
    check_git_url("file:///srv/repo.git", allow_local=True)
    check_git_url("/srv/repo.git", allow_local=True)


def test_git_sees_none_of_the_servers_identity(
    git_repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.gitconfig that would send the clone elsewhere, and server secrets in the
    environment: the clone ignores the first and git never sees the second."""
    home = tmp_path / "home"
    home.mkdir()
    base = git_repo.url.rsplit("/", 1)[0]
    (home / ".gitconfig").write_text(f'[url "http://127.0.0.1:9/"]\n\tinsteadOf = {base}/\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TERRACE_MASTER_KEY", "do-not-pass-me")
    spy = tmp_path / "spy.sh"
    seen = tmp_path / "env.txt"
    spy.write_text(f'#!/bin/sh\nenv >> "{seen}"\nexec /usr/bin/git "$@"\n')
    spy.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(spy)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    done = checkout(git_repo.url, "main", tmp_path / "ws", allow_local=False)
    assert done.commit == git_repo.commit
    assert (tmp_path / "ws" / "ci.yml").is_file()
    environments = seen.read_text()
    assert "GIT_CONFIG_GLOBAL=/dev/null" in environments
    assert "do-not-pass-me" not in environments
    assert f"HOME={home}" not in environments


def test_a_failed_clone_leaves_nothing(git_repo: GitRepo, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no branch, tag or commit 'nope'"):
        checkout(git_repo.url, "nope", tmp_path / "ws", allow_local=False)
    assert not (tmp_path / "ws").exists()


def test_clones_beyond_the_limit_are_refused(
    git_repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(git, "_clones", git.threading.BoundedSemaphore(1))
    git._clones.acquire()
    try:
        with pytest.raises(Busy, match="clones are already running"):
            checkout(git_repo.url, None, tmp_path / "ws", allow_local=False)
    finally:
        git._clones.release()
    assert checkout(git_repo.url, None, tmp_path / "ws", allow_local=False).commit


def test_a_hanging_remote_is_cut_off_with_its_whole_process_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(git, "TIMEOUT", 1.0)
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(SourceError, match="took longer than 1 s"):
            checkout(f"git://127.0.0.1:{port}/repo.git", None, tmp_path / "ws", allow_local=False)
    left = subprocess.run(
        ["pgrep", "-f", f"127.0.0.1:{port}/repo.git"], capture_output=True, text=True, check=False
    )
    assert left.stdout == ""
    assert not (tmp_path / "ws").exists()
