"""The client's pure parts, in process: URLs, durations, responses that are not problems."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from terrace.cli.client import ApiClient, RequestFailed, Target, UsageProblem, normalize_url
from terrace.cli.config import Config, load_config, resolve_target, save_config
from terrace.cli.keys import parse_duration


@pytest.mark.parametrize(
    "given",
    [
        "127.0.0.1:8400",
        "http://127.0.0.1:8400/",
        "http://127.0.0.1:8400/api",
        " http://127.0.0.1:8400/api/ ",
    ],
)
def test_urls_are_normalized(given: str) -> None:
    assert normalize_url(given) == "http://127.0.0.1:8400"


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("2w") == timedelta(weeks=2)
    for bad in ("0d", "d", "1y", "-1h", "1.5h"):
        with pytest.raises(UsageProblem):
            parse_duration(bad)


def _client(handler: httpx.MockTransport) -> ApiClient:
    return ApiClient(Target("http://api.test", "k", "test"), transport=handler)


def test_a_response_that_is_not_a_problem_still_fails_clearly() -> None:
    proxy = httpx.MockTransport(lambda _: httpx.Response(502, text="<html>Bad gateway</html>"))
    with _client(proxy) as client, pytest.raises(RequestFailed) as failed:
        client.get("/teams")
    assert (failed.value.status, failed.value.title) == (502, "HTTP 502 Bad Gateway")
    assert failed.value.detail == "<html>Bad gateway</html>"


def test_problem_documents_keep_their_errors_and_problems() -> None:
    body = {
        "type": "urn:terrace:problem:invalid-spec",
        "title": "The landscape or provider file is invalid",
        "status": 422,
        "detail": "1 problem(s)",
        "problems": [{"file": "ci.yml", "line": 2, "column": 3, "path": "", "message": "bad"}],
        "errors": [{"path": "body.name", "message": "too long"}],
    }
    answer = httpx.MockTransport(lambda _: httpx.Response(422, json=body))
    with _client(answer) as client, pytest.raises(RequestFailed) as failed:
        client.get("/x")
    assert failed.value.lines() == [
        "The landscape or provider file is invalid: 1 problem(s)",
        "body.name: too long",
        "ci.yml:2:3: bad",
    ]


def test_the_key_goes_in_the_authorization_header_and_204_is_none() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    with _client(httpx.MockTransport(handler)) as client:
        assert client.delete("/workspaces/1/env-vars", ["A"]) is None
    assert seen[0].headers["Authorization"] == "Bearer k"
    assert str(seen[0].url) == "http://api.test/api/workspaces/1/env-vars"
    assert json.loads(seen[0].content) == ["A"]


def test_a_saved_key_belongs_to_its_api(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "TERRACE_HOME": str(tmp_path / "none")}
    save_config(Config(api="http://a.test", key="saved", team=3), env)
    config = load_config(env)
    assert config == Config(api="http://a.test", key="saved", team=3, workspace=None)
    assert resolve_target(None, config, env).key == "saved"
    assert resolve_target("http://a.test/api", config, env).key == "saved"
    assert resolve_target("http://b.test", config, env).key is None
    assert resolve_target("http://b.test", config, {**env, "TERRACE_API_KEY": "e"}).key == "e"
