"""A server-local folder as a workspace (cluster admins, and ``terrace up DIR``)."""

from __future__ import annotations

from pathlib import Path

from terrace.errors import InvalidInput

__all__ = ["check_local_folder"]


def check_local_folder(path: str) -> Path:
    """The folder, resolved; :class:`InvalidInput` if it is not an existing absolute folder."""
    folder = Path(path)
    if not folder.is_absolute():
        raise InvalidInput(f"path must be absolute, not {path!r}", field="path")
    if not folder.is_dir():
        raise InvalidInput(f"{path} is not a folder on the server", field="path")
    return folder.resolve()
