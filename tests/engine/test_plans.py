from __future__ import annotations

import re
from pathlib import Path

import pytest

from terrace.engine.plans import BUILT_IN, load_plans
from terrace.errors import SpecError
from tests.conftest import CONFORMANCE


def test_the_built_in_table_has_every_plan_id_real_files_use() -> None:
    used = {
        int(m)
        for path in CONFORMANCE.rglob("*.y*ml")
        for m in re.findall(r"^\s+plan:\s*(\d+)\s*$", path.read_text(), re.M)
    }
    assert used
    assert used <= set(BUILT_IN.plans)
    assert BUILT_IN.get(None) is BUILT_IN.plans[8]


def test_no_file_means_the_built_in_table(tmp_path: Path) -> None:
    assert load_plans(tmp_path) is BUILT_IN


def test_an_admin_replaces_the_table(tmp_path: Path) -> None:
    (tmp_path / "plans.yml").write_text(
        "default: 1\nplans:\n"
        "  - {id: 1, name: tiny, cpu: 0.25, memoryMiB: 256, diskMiB: 512, pricePerHour: 0}\n"
        "  - {id: 2, name: big, cpu: 4, memoryMiB: 8192, diskMiB: 10240, pricePerHour: 0.2}\n"
    )
    table = load_plans(tmp_path)
    assert sorted(table.plans) == [1, 2]
    assert table.get(None) is not None
    assert table.get(None).name == "tiny"  # type: ignore[union-attr]
    assert table.describe() == "1 (tiny), 2 (big)"


def test_mistakes_in_the_table_name_their_line(tmp_path: Path) -> None:
    (tmp_path / "plans.yml").write_text(
        "default: 9\nplans:\n"
        "  - {id: 1, name: tiny, cpu: 0, memoryMiB: 256, diskMiB: 512, pricePerHour: 0}\n"
        "  - {id: 1, name: again, cpu: 1, memoryMiB: 256, diskMiB: 512, pricePerHour: 0}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_plans(tmp_path)
    problems = [(p.line, p.path, p.message) for p in caught.value.problems]
    assert problems == [
        (3, "plans[0].cpu", "`cpu` must be a number of at least 0.01"),
        (4, "plans[1].id", "plan 1 is listed twice"),
    ]
    assert caught.value.file == str(tmp_path / "plans.yml")
