from __future__ import annotations

import pytest

from terrace.engine.checks import deploy_problems, require_deployable
from terrace.engine.plans import BUILT_IN
from terrace.errors import SpecError
from terrace.spec.landscape_parser import parse_landscape
from tests.conftest import EXAMPLES

SHOP = (EXAMPLES / "02-shop" / "ci.yml").read_text()

LANDSCAPE = """\
schemaVersion: v0.4
run:
  web:
    plan: 99
    steps:
      - command: python3 server.py
    env:
      DB: ${{ vault.DB_PASSWORD }}
      MODE: ${{ workspace.env['MODE'] }}
      TEAM: ${{ team.id }}
  box:
    image: nginx:1.27
  db:
    provider:
      name: postgres
      version: v1
    plan:
      id: 0
"""


def test_a_deployable_landscape_has_no_problems() -> None:
    landscape = parse_landscape(SHOP.split("  db:")[0]).value
    assert (
        deploy_problems(
            landscape, vault_names={"SHOP_DB_PASSWORD"}, env={"CURRENCY": "EUR"}, plans=BUILT_IN
        )
        == []
    )


def test_every_problem_is_reported_where_it_is() -> None:
    landscape = parse_landscape(LANDSCAPE, file="ci.yml").value
    problems = deploy_problems(landscape, vault_names=set(), env={}, plans=BUILT_IN)
    located = [(p.line, p.path) for p in problems]
    assert located == [
        (4, "run.web.plan"),
        (8, "run.web.env.DB"),
        (9, "run.web.env.MODE"),
        (12, "run.box.image"),
        (14, "run.db.provider"),
    ]
    messages = " | ".join(p.message for p in problems)
    assert "plan 99 is not one of this installation's plans (4 (micro), 8 (boost)" in messages
    assert "terrace vault set DB_PASSWORD" in messages
    assert "terrace env set MODE=..." in messages
    assert "managed containers" in messages
    assert "marketplace" in messages


def test_known_names_satisfy_the_references() -> None:
    landscape = parse_landscape(LANDSCAPE.split("  box:", maxsplit=1)[0].replace("99", "8")).value
    assert (
        deploy_problems(
            landscape, vault_names={"DB_PASSWORD"}, env={"MODE": "prod"}, plans=BUILT_IN
        )
        == []
    )


def test_require_deployable_raises_all_of_them() -> None:
    landscape = parse_landscape(LANDSCAPE).value
    with pytest.raises(SpecError) as caught:
        require_deployable(landscape, vault_names=set(), env={}, plans=BUILT_IN)
    assert len(caught.value.problems) == 5


def test_legacy_files_locate_problems_under_run() -> None:
    legacy = "run:\n  steps:\n    - command: ./serve\n  plan: 77\n"
    landscape = parse_landscape(legacy).value
    (problem,) = deploy_problems(landscape, vault_names=set(), env={}, plans=BUILT_IN)
    assert (problem.line, problem.path) == (4, "run.plan")
