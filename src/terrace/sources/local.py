"""A server-local folder as a workspace (cluster admins, and ``terrace up DIR``), and reading
files out of any workspace without following links out of it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from terrace.errors import InvalidInput, SourceError, SpecError
from terrace.spec.diagnostics import Parsed
from terrace.spec.files import find_landscape, profile_of
from terrace.spec.landscape import Landscape
from terrace.spec.landscape_parser import parse_landscape
from terrace.spec.validate import decode_text

__all__ = [
    "MAX_SPEC_BYTES",
    "LandscapeFile",
    "check_local_folder",
    "read_landscape",
    "read_workspace_file",
]

MAX_SPEC_BYTES = 1 << 20
"""The largest landscape or provider file Terrace reads (1 MiB; real ones are under 20 KiB)."""


def check_local_folder(path: str) -> Path:
    """The folder, resolved; :class:`InvalidInput` if it is not an existing absolute folder."""
    folder = Path(path)
    if not folder.is_absolute():
        raise InvalidInput(f"path must be absolute, not {path!r}", field="path")
    if not folder.is_dir():
        raise InvalidInput(f"{path} is not a folder on the server", field="path")
    return folder.resolve()


def read_workspace_file(folder: Path, name: str, *, limit: int = MAX_SPEC_BYTES) -> bytes:
    """The bytes of ``folder/name``, which must be a regular file inside ``folder``.

    A repository may hold ``ci.yml -> /etc/passwd`` or a link to Terrace's own files: a link
    is followed only while it stays inside the workspace, and nothing but a regular file of at
    most ``limit`` bytes is read.
    """
    root = folder.resolve()
    target = (folder / name).resolve()
    if not target.is_relative_to(root):
        raise SourceError(f"{name} links outside the workspace; Terrace does not follow it")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(f"cannot read {name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(f"{name} is not a regular file")
        if info.st_size > limit:
            raise SourceError(f"{name} is larger than {limit // 1024} KiB")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise SourceError(f"{name} is larger than {limit // 1024} KiB")
    finally:
        os.close(fd)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class LandscapeFile:
    """A workspace's ``ci.yml`` (or ``ci.<profile>.yml``): its name, text and model."""

    name: str
    text: str
    parsed: Parsed[Landscape]


def read_landscape(folder: Path, profile: str | None) -> LandscapeFile:
    """The workspace's landscape, read without following links out of the workspace.

    Problems name files relative to the workspace: the server's own paths stay out of them.
    """
    try:
        path = find_landscape(folder, profile)
    except SpecError as exc:
        raise SpecError(
            [
                replace(
                    p,
                    file=Path(p.file).name,
                    message=p.message.replace(str(folder), "the workspace"),
                )
                for p in exc.problems
            ]
        ) from None
    except OSError as exc:
        raise SourceError(f"the workspace's files cannot be read: {exc.strerror}") from None
    name = path.name
    text = decode_text(read_workspace_file(folder, name), file=name)
    return LandscapeFile(name, text, parse_landscape(text, file=name, profile=profile_of(name)))
