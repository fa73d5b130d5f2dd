"""Which changes to a service need new processes: its revision."""

from __future__ import annotations

from pathlib import Path

from terrace.engine.desired import service_runs
from terrace.engine.plans import BUILT_IN
from terrace.spec.landscape_parser import parse_landscape

BASE = """\
schemaVersion: v0.2
run:
  api:
    steps: [{command: python3 api.py}]
    network:
      ports: [{port: 3000, isPublic: false}]
      paths: [{port: 3000, path: /}]
"""


def _revision(text: str) -> str:
    landscape = parse_landscape(text, file="ci.yml").value
    (run,) = service_runs(
        landscape,
        workspace_id=1,
        team_id=1,
        workspace=Path("/srv/ws/1"),
        workspace_env={},
        vault_versions={},
        plans=BUILT_IN,
        replicas={},
    )
    return run.revision


def test_what_only_the_router_or_the_engine_reads_restarts_nothing() -> None:
    before = _revision(BASE)
    for extra in (
        "    sleepAfter: 5m\n",
        "    loadBalancing: leastConnections\n",
        "    replicas: 3\n",
    ):
        assert _revision(BASE.replace("  api:\n", "  api:\n" + extra)) == before, extra
    assert _revision(BASE.replace("api.py", "api2.py")) != before
