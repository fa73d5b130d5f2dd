"""The bubblewrap sandbox a replica runs in, and whether this machine can make one.

``bwrap``: its own PID, IPC and UTS namespaces, no capabilities, a new session, the host's
filesystem read-only with ``/tmp`` private, ``/run``, ``/root``, ``/home``, ``/var/lib`` and
``$TERRACE_HOME`` hidden, ``/etc/shadow`` masked, the workspace read-write at
``/home/user/app`` and the landscape's ``/etc/hosts``. It is entered through a shell that
first joins the replica's cgroups, then ``nsenter`` into its network namespace.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

from terrace.runtimes.linux import cgroups_available, missing_tools
from terrace.spec.landscape import WORKSPACE_MOUNT

__all__ = [
    "PATH",
    "bwrap_command",
    "hostname",
    "installation_prefix",
    "resolv_conf",
    "sandbox_problems",
]

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HIDDEN = ("/run", "/root", "/home", "/var/lib", "/mnt", "/media", "/srv", "/opt/terrace")
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/ssh")


def installation_prefix(home: Path) -> str:
    """The prefix of an installation's namespaces and cgroups (one per ``$TERRACE_HOME``)."""
    return "tr" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:6]


def sandbox_problems() -> list[str]:
    """Why replicas cannot be sandboxed on this machine (empty when they can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("Terrace is not running as root")
    if missing := missing_tools():
        problems.append(
            f"missing tools: {', '.join(missing)} (Debian: bubblewrap iproute2 nftables util-linux)"
        )
    if os.geteuid() == 0 and not cgroups_available():
        problems.append("cgroup v1 controllers pids, memory and cpu are not writable")
    return problems


def hostname(workspace_id: int, name: str, slot: int) -> str:
    """A replica's hostname, which its landscape's ``/etc/hosts`` also resolves."""
    return f"ws-server-{workspace_id}-{name}-{slot}"[:63]


def resolv_conf(run_dir: Path) -> Path:
    """Replicas have no route to any DNS server: a resolver on their own loopback fails at once
    instead of waiting for a timeout on every unknown name."""
    path = run_dir / "resolv.conf"
    if not path.exists():
        path.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    return path


def bwrap_command(
    *,
    script: str,
    host: str,
    workspace: Path,
    sub_path: str | None,
    home: Path,
    hosts: Path,
    resolv: Path,
    netns: Path,
    cgroup_procs: Iterable[Path],
    block_fd: int | None = None,
) -> list[str]:
    """The argv that runs ``script`` in a new sandbox (see the module's docstring). With
    ``block_fd``, the sandbox is made, then waits until that descriptor can be read (a byte, or
    its other end closed) before ``script`` runs."""
    sub = (sub_path or "").strip("/")
    bwrap = [
        "bwrap",
        *(("--block-fd", str(block_fd)) if block_fd is not None else ()),
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        host,
        "--cap-drop",
        "ALL",
        "--new-session",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
    ]
    for hidden in (*HIDDEN, str(home)):
        if Path(hidden).is_dir():
            bwrap += ["--tmpfs", hidden]
    for hidden in HIDDEN_FILES:
        if Path(hidden).is_dir():
            bwrap += ["--tmpfs", hidden]
        elif Path(hidden).exists():
            bwrap += ["--ro-bind", "/dev/null", hidden]
    bwrap += [
        "--bind",
        str(workspace),
        WORKSPACE_MOUNT,
        "--ro-bind",
        str(hosts),
        "/etc/hosts",
        "--ro-bind",
        str(resolv),
        "/etc/resolv.conf",
        "--chdir",
        f"{WORKSPACE_MOUNT}/{sub}" if sub else WORKSPACE_MOUNT,
        "--",
        "sh",
        "-c",
        script,
    ]
    # The shell joins the replica's cgroups before anything of the replica runs, then becomes
    # nsenter (network namespace), which becomes bwrap.
    join = " && ".join(f"echo $$ > {shlex.quote(str(f))}" for f in cgroup_procs)
    return ["sh", "-c", f'{join} && exec "$@"', "sh", "nsenter", f"--net={netns}", "--", *bwrap]
