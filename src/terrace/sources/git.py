"""Git through the git CLI (GitPython leaks in daemons): clone a URL at a ref, safely."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from terrace.errors import Forbidden, InvalidInput, SourceError

__all__ = ["Busy", "GitCheckout", "check_git_url", "checkout"]

REMOTE_PROTOCOLS = ("https", "http", "ssh", "git")
"""What any developer may clone from. ``file://`` and local paths only for cluster admins."""
TIMEOUT = 120.0
"""Seconds one git command may take before its whole process group is killed."""
MAX_CLONES = 4
"""Clones one process runs at once; more are refused (busy), so clones cannot take every
request thread."""
_clones = threading.BoundedSemaphore(MAX_CLONES)
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")  # git@github.com:org/repo.git
_REF = re.compile(r"^(?!-)[\w./+-]{1,255}$")
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


class Busy(SourceError):
    """Too many clones are running; the caller may try again shortly."""


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
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https") and (parts.username or parts.password):
        raise InvalidInput(
            "gitUrl must not carry credentials (they would be stored and shown to the team); "
            "use a public URL",
            field="gitUrl",
        )
    if scheme in REMOTE_PROTOCOLS:
        return
    if scheme == "file" or (not scheme and url.startswith("/")):
        if allow_local:
            return
        raise Forbidden(
            "only cluster admins may create a workspace from a repository on the server"
        )
    allowed = ", ".join(f"{p}://" for p in REMOTE_PROTOCOLS)
    raise InvalidInput(f"gitUrl must use {allowed} or user@host:path", field="gitUrl")


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
    if not _clones.acquire(blocking=False):
        raise Busy(f"{MAX_CLONES} clones are already running on this server; try again shortly")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="terrace-git-") as home:
            env = _isolated_env(home, allow_local=allow_local)
            _git(["clone", "--quiet", "--no-checkout", "--", url, str(dest)], env=env)
            commit = _resolve(dest, ref, env=env)
            _git(["-C", str(dest), "checkout", "--quiet", "--detach", commit], env=env)
    except SourceError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        _clones.release()
    return GitCheckout(dest, commit)


def _isolated_env(home: str, *, allow_local: bool) -> dict[str, str]:
    """An environment that gives git none of the server's own identity or configuration.

    No inherited variables (the server's secrets stay out of git, ssh and remote helpers), an
    empty home (no ``~/.gitconfig`` credential helpers or ``insteadOf``, no ``~/.ssh`` keys),
    no system or global config, no agent, no prompts.
    """
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": home,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "SSH_ASKPASS": "true",
        # Enforced by git itself, for redirects and submodules too.
        "GIT_ALLOW_PROTOCOL": ":".join(
            (*REMOTE_PROTOCOLS, "file") if allow_local else REMOTE_PROTOCOLS
        ),
        "GIT_SSH_COMMAND": (
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=none "
            "-o IdentityAgent=none -o StrictHostKeyChecking=accept-new "
            f"-o UserKnownHostsFile={home}/known_hosts"
        ),
    }


def _resolve(repo: Path, ref: str | None, *, env: dict[str, str]) -> str:
    candidates = ["HEAD"] if ref is None else [f"origin/{ref}", f"refs/tags/{ref}", ref]
    for candidate in candidates:
        done = _run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"],
            env=env,
        )
        if done.returncode == 0:
            return done.stdout.strip()
    raise SourceError(f"the repository has no branch, tag or commit {ref!r}")


def _git(args: list[str], *, env: dict[str, str]) -> None:
    done = _run(["git", *args], env=env)
    if done.returncode != 0:
        message = redact(done.stderr.strip()) or f"exit code {done.returncode}"
        raise SourceError(f"git {args[0]} failed: {message}")


def _run(argv: list[str], *, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run git in its own process group; on timeout kill the group (ssh, remote helpers too)."""
    try:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise SourceError("git is not installed on the server") from None
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise SourceError(f"git {argv[1]} took longer than {TIMEOUT:.0f} s") from None
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
