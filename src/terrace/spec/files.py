"""Which files are landscapes and which are providers, profiles, and finding them on disk.

The kind follows the file name: ``ci.yml``, ``ci.<profile>.yml`` are landscapes; ``provider.yml``
and ``provider.<anything>.yml`` are providers. ``.yaml`` counts as ``.yml``, and ``.example``
copies (``ci.yml.example``) count too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path

from terrace.errors import SpecError

__all__ = [
    "FileKind",
    "discover",
    "find_landscape",
    "find_provider",
    "kind_of",
    "profile_of",
    "qualifier_of",
]

_NAME = re.compile(
    r"^(?P<kind>ci|provider)(?:\.(?P<qualifier>[A-Za-z0-9_.-]+?))?\.ya?ml(?:\.example)?$"
)
_SKIP_DIRS = frozenset({"node_modules", "__pycache__", "venv"})


class FileKind(StrEnum):
    LANDSCAPE = "landscape"
    PROVIDER = "provider"


def kind_of(name: str) -> FileKind | None:
    """``landscape`` for ``ci[.profile].yml``, ``provider`` for ``provider[.x].yml``, else None."""
    match = _NAME.match(name)
    if match is None:
        return None
    return FileKind.LANDSCAPE if match.group("kind") == "ci" else FileKind.PROVIDER


def profile_of(name: str) -> str | None:
    """``prod`` for ``ci.prod.yml``; None for ``ci.yml`` (the default profile)."""
    return qualifier_of(name) if kind_of(name) is FileKind.LANDSCAPE else None


def qualifier_of(name: str) -> str | None:
    """The middle part of a file name: ``prod`` for ``ci.prod.yml``, ``static`` for
    ``provider.static.yml``, None for ``ci.yml`` or ``provider.yaml``."""
    match = _NAME.match(name)
    return None if match is None else match.group("qualifier")


def discover(paths: Iterable[Path]) -> Iterator[Path]:
    """Every landscape and provider file at or below ``paths``, sorted within each folder.

    Hidden folders, ``node_modules`` and virtualenvs are skipped. Files named explicitly are
    yielded whatever their name.
    """
    for path in paths:
        if path.is_dir():
            yield from _walk(path)
        else:
            yield path


def _walk(folder: Path) -> Iterator[Path]:
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    for entry in entries:
        if entry.is_file() and kind_of(entry.name) is not None:
            yield entry
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in _SKIP_DIRS:
            yield from _walk(entry)


def landscape_files(folder: Path, profile: str | None) -> list[Path]:
    """The files in ``folder`` that define ``profile`` (None: the default profile)."""
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file()
        and kind_of(entry.name) is FileKind.LANDSCAPE
        and not entry.name.endswith(".example")
        and profile_of(entry.name) == profile
    )


def find_landscape(folder: Path, profile: str | None = None) -> Path:
    """The landscape file of ``profile`` in ``folder``: ``ci.<profile>.yml``, or ``ci.yml`` for
    no profile. Profile ``default`` falls back to ``ci.yml`` when there is no
    ``ci.default.yml``. Raises SpecError when there is none or more than one (``.yml`` and
    ``.yaml`` twins).
    """
    found = landscape_files(folder, profile)
    if not found and profile == "default":
        found = landscape_files(folder, None)
    wanted = f"ci.{profile}.yml" if profile else "ci.yml"
    if not found:
        raise SpecError.single(
            f"no {wanted} (or .yaml) in {folder}"
            + (f" for profile {profile!r}" if profile else ""),
            file=str(folder / wanted),
        )
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise SpecError.single(
            f"both {names} define the same profile; remove one of them",
            file=str(found[1]),
        )
    return found[0]


def find_provider(folder: Path) -> Path:
    """``provider.yml`` (or ``.yaml``) in ``folder``; SpecError when there is none or both."""
    found = sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and entry.name in ("provider.yml", "provider.yaml")
    )
    if not found:
        raise SpecError.single(f"no provider.yml in {folder}", file=str(folder / "provider.yml"))
    if len(found) > 1:
        raise SpecError.single(
            "both provider.yaml and provider.yml define the provider; remove one of them",
            file=str(found[1]),
        )
    return found[0]
