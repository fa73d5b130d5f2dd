"""schemathesis against the live server: no 5xx, and every response matches the OpenAPI document.

Runs as the cluster admin, so requests get past authentication into every handler. Valid and
invalid inputs are both generated; the operations are the ones the access matrix checks covers.
"""

from __future__ import annotations

import os

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.api.test_access_matrix import RULES
from tests.support.live import LiveServer

EXAMPLES = int(os.environ.get("TERRACE_API_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api_schema(live: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(live.api + "/openapi.json")


@pytest.mark.parametrize(("method", "path"), sorted(RULES), ids=str)
def test_operation_conforms(
    api_schema: schemathesis.BaseSchema, live: LiveServer, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    headers = {"Authorization": f"Bearer {live.admin_key}"}

    @hypothesis.given(case=cases)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=live.url, headers=headers)

    check()
