from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT / "tests" / "data" / "conformance"
EXAMPLES = ROOT / "examples"


@pytest.fixture
def conformance() -> Path:
    return CONFORMANCE
