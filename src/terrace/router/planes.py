"""Choosing a data plane: ``haproxy`` when the binary is installed, else ``builtin``."""

from __future__ import annotations

import shutil
from pathlib import Path

from terrace.router.haproxy_config import DEFAULT_THREADS
from terrace.router.plane import DataPlane, Timeouts, Waker

__all__ = ["PLANES", "available", "check_plane", "make_plane"]

PLANES = ("haproxy", "builtin")


def available(name: str) -> bool:
    return name == "builtin" or (name == "haproxy" and shutil.which("haproxy") is not None)


def check_plane(name: str | None, threads: int | None = None) -> str:
    """The plane ``name`` stands for (None: the best one installed); ValueError naming what is
    wrong or missing, or that it runs one thread where ``threads`` asks for more (the range is
    the HAProxy plane's to check)."""
    chosen = name or next(p for p in PLANES if available(p))
    if chosen not in PLANES:
        raise ValueError(f"unknown router plane {chosen!r}: choose one of {', '.join(PLANES)}")
    if not available(chosen):
        raise ValueError(f"router plane {chosen!r} needs the haproxy binary (apt install haproxy)")
    if threads is not None and threads != 1 and chosen != "haproxy":
        raise ValueError(
            f"--router-threads {threads}: the {chosen} plane runs one thread (only haproxy "
            "runs more)"
        )
    return chosen


def make_plane(
    name: str | None,
    *,
    state_dir: Path,
    timeouts: Timeouts | None = None,
    on_wake: Waker | None = None,
    threads: int | None = None,
) -> DataPlane:
    """The plane called ``name`` (None: the best one installed), with ``threads`` threads (None:
    the plane's default; only HAProxy runs more than one). Raises ValueError naming what is
    missing for a plane that cannot run here, or what is wrong with ``threads``."""
    chosen = check_plane(name, threads)
    timeouts = timeouts or Timeouts()
    if chosen == "haproxy":
        from terrace.router.haproxy import HaproxyPlane  # noqa: PLC0415

        return HaproxyPlane(
            state_dir=state_dir,
            timeouts=timeouts,
            on_wake=on_wake,
            threads=DEFAULT_THREADS if threads is None else threads,
        )
    from terrace.router.builtin import BuiltinPlane  # noqa: PLC0415

    return BuiltinPlane(timeouts=timeouts, on_wake=on_wake)
