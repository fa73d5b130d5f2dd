"""Git through the git CLI (GitPython leaks in daemons): clone a URL at a ref, safely."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from terrace.errors import InvalidInput, SourceError

__all__ = ["GitCheckout", "check_git_url", "checkout"]

REMOTE_PROTOCOLS = ("https", "http", "ssh", "git")
"""What any developer may clone from. ``file://`` and local paths only for cluster admins."""
TIMEOUT = 300.0
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")  # git@github.com:org/repo.git
_REF = re.compile(r"^(?!-)[\w./+-]{1,255}$")
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


@dataclass(frozen=True, slots=True)
class GitCheckout:
    path: Path
    commit: str


def check_git_url(url: str, *, allow_local: bool) -> None:
    """Refuse URLs a developer may not use: local paths, ``file://``, ``ext::`` and the like."""
    if not url or url != url.strip() or url.startswith("-") or "\n" in url:
        raise InvalidInput(f"{url!r} is not a git URL", field="gitUrl")
    if _SCP_LIKE.match(url):
        return
    scheme = urlsplit(url).scheme.lower()
    if scheme in REMOTE_PROTOCOLS:
        return
    if allow_local and (scheme == "file" or (not scheme and url.startswith("/"))):
        return
    allowed = ", ".join(f"{p}://" for p in REMOTE_PROTOCOLS)
    raise InvalidInput(
        f"gitUrl must use {allowed} or user@host:path; local repositories are for cluster admins",
        field="gitUrl",
    )


def check_ref(ref: str) -> None:
    if not _REF.match(ref) or ".." in ref:
        raise InvalidInput(f"{ref!r} is not a branch, tag or commit", field="gitRef")


def redact(text: str) -> str:
    """Git output with any ``user:password@`` in URLs removed."""
    return _CREDENTIALS.sub(r"\1***@", text)


def checkout(url: str, ref: str | None, dest: Path, *, allow_local: bool) -> GitCheckout:
    """Clone ``url`` into ``dest`` (which must not exist) and check out ``ref`` detached.

    ``ref`` may be a branch, a tag or a commit; ``None`` means the remote's default branch.
    On failure ``dest`` is removed and :class:`SourceError` carries git's own message.
    """
    check_git_url(url, allow_local=allow_local)
    if ref is not None:
        check_ref(ref)
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "GIT_CONFIG_NOSYSTEM": "1",
        # Enforced by git itself, for redirects and submodules too.
        "GIT_ALLOW_PROTOCOL": ":".join(
            (*REMOTE_PROTOCOLS, "file") if allow_local else REMOTE_PROTOCOLS
        ),
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _git(["clone", "--quiet", "--no-checkout", "--", url, str(dest)], env=env)
        commit = _resolve(dest, ref, env=env)
        _git(["-C", str(dest), "checkout", "--quiet", "--detach", commit], env=env)
    except SourceError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return GitCheckout(dest, commit)


def _resolve(repo: Path, ref: str | None, *, env: dict[str, str]) -> str:
    candidates = ["HEAD"] if ref is None else [f"origin/{ref}", f"refs/tags/{ref}", ref]
    for candidate in candidates:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
            check=False,
        )
        if done.returncode == 0:
            return done.stdout.strip()
    raise SourceError(f"the repository has no branch, tag or commit {ref!r}")


def _git(args: list[str], *, env: dict[str, str]) -> None:
    try:
        done = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise SourceError("git is not installed on the server") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"git {args[0]} took longer than {TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        message = redact(done.stderr.strip()) or f"exit code {done.returncode}"
        raise SourceError(f"git {args[0]} failed: {message}")
