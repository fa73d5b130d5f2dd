from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.support.up import Installation


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[Callable[[Path], Installation]]:
    """``make(folder)``: an installation in tmp_path that will serve a copy of ``folder``
    (prepare steps write into the workspace: the repository's examples stay untouched)."""
    made: list[Installation] = []

    def make(folder: Path) -> Installation:
        copy = tmp_path / f"ws-{len(made)}-{folder.name}"
        shutil.copytree(folder, copy)
        found = Installation(home=tmp_path / f"home-{len(made)}", folder=copy)
        made.append(found)
        return found

    yield make
    for found in made:
        found.clean_up()


@pytest.fixture
def shop(installation: Callable[[Path], Installation]) -> Installation:
    return installation(EXAMPLES / "02-shop")
