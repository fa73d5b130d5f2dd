"""Small Linux pieces the process runtime is built from: commands, cgroups (v1) and sockets
opened inside another network namespace."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from terrace.runtimes.base import Limits, RuntimeFailure

__all__ = [
    "Cgroup",
    "cgroups_available",
    "command",
    "favor_dynamic_cgroups",
    "missing_tools",
    "socket_in",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("pids", "memory", "cpu")
CFS_PERIOD_US = 100_000
TOOLS = ("bwrap", "ip", "nft", "nsenter")


def missing_tools() -> list[str]:
    """The sandbox's tools this machine lacks."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


async def command(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run a short command; its stdout, or :class:`RuntimeFailure` naming it with its stderr
    (without ``check``, a failure is ignored: for removing what may already be gone)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0 and check:
        detail = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise RuntimeFailure(f"`{' '.join(argv[:4])} ...` failed: {detail}")
    return out.decode(errors="replace")


def cgroups_available() -> bool:
    """cgroup v1 with the pids, memory and cpu controllers, and the right to make groups."""
    return all(
        (CGROUP_ROOT / c / "cgroup.procs").exists() and os.access(CGROUP_ROOT / c, os.W_OK)
        for c in CONTROLLERS
    )


@dataclass(frozen=True, slots=True)
class Cgroup:
    """One group per replica in each controller: limits, and the list of all its processes
    (however they daemonise), which is what makes "no process left behind" hold."""

    name: str
    """Relative to each controller's root: ``terrace-<installation>/<replica>``."""

    def dirs(self) -> list[Path]:
        return [CGROUP_ROOT / c / self.name for c in CONTROLLERS]

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs()]

    def create(self, limits: Limits | None) -> None:
        for d in self.dirs():
            d.mkdir(parents=True, exist_ok=True)
        if limits is None:
            return
        pids, memory, cpu = self.dirs()
        (pids / "pids.max").write_text(str(limits.pids))
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory_mib * 1024 * 1024))
        (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(max(1000, int(limits.cpu * CFS_PERIOD_US))))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files():
            try:
                found.update(int(line) for line in path.read_text().split())
            except FileNotFoundError:
                continue
        return found

    def alive(self) -> bool:
        """Whether any process is in the group (one controller tells: all are joined)."""
        try:
            return bool(self.procs_files()[0].read_text().strip())
        except FileNotFoundError:
            return False

    def signal(self, signum: signal.Signals, pids: Iterable[int] | None = None) -> None:
        for pid in self.pids() if pids is None else pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                continue

    async def remove(self) -> None:
        """Remove the emptied groups (the kernel may take a moment after the last process
        exits), and their parent once it is empty too."""
        for d in self.dirs():
            for _ in range(100):
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    await asyncio.sleep(0.02)
                else:
                    break
            else:
                raise RuntimeFailure(f"cgroup {d} still has processes: {sorted(self.pids())}")
            with contextlib.suppress(OSError):
                d.parent.rmdir()  # the installation's group, once its last replica is gone


_libc = ctypes.CDLL(None, use_errno=True)
FAVOR_DYNMODS_MOUNT = Path("/run/terrace/cgroup-favordynmods")
FAVOR_DYNMODS_OPTIONS = "none,name=terrace,favordynmods"


def favor_dynamic_cgroups(mount_point: Path = FAVOR_DYNMODS_MOUNT) -> bool:
    """Make moving a process into a cgroup cheap, machine-wide: whether it is (or was made so).

    By default the kernel makes every write to ``cgroup.procs`` wait for an RCU grace period
    (about 11 ms here), which a replica's first process pays before its sandbox is made. A cgroup
    hierarchy mounted with ``favordynmods`` (Linux 6.0+) switches the kernel's one lock for
    migrations to a mode where they no longer wait, at the cost of slightly dearer forks and
    exits (not measurable here: bench notes in docs/benchmarks.md). A named hierarchy with no
    controllers is enough; it is mounted once per boot, at ``mount_point``, and left there, for
    every installation of the machine (the mode is the kernel's, not one installation's).
    """
    if _mounted_with(mount_point, "favordynmods"):
        return True
    try:
        mount_point.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    done = _libc.mount(
        b"cgroup", os.fsencode(mount_point), b"cgroup", 0, FAVOR_DYNMODS_OPTIONS.encode()
    )
    # Failing (an old kernel, or another process mounting it at the same moment): look again.
    return done == 0 or _mounted_with(mount_point, "favordynmods")


def _mounted_with(mount_point: Path, option: str) -> bool:
    """Whether a file system is mounted at ``mount_point`` with ``option`` among its options."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1] == str(mount_point) and option in fields[3].split(","):
            return True
    return False


# --- sockets inside a network namespace -------------------------------------------------------

_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in(netns: Path) -> socket.socket:
    """A non-blocking TCP socket that lives in the network namespace at ``netns``.

    setns(2) moves the calling thread only: it enters the namespace, makes the socket (which
    keeps the namespace it was made in) and comes back, with nothing else run in between. Done
    here, on the caller's thread, it costs about 40 us; a hop to a thread of its own cost 180,
    which a replica's start-up probes, every few ms, took from the replica's own start."""
    with open("/proc/thread-self/ns/net", "rb") as home, open(netns, "rb") as target:
        _setns(target.fileno())
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            return sock
        finally:
            try:
                _setns(home.fileno())
            except OSError:  # pragma: no cover - the thread would stay in the wrong namespace
                os.abort()
