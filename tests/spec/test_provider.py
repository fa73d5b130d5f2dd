from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from terrace.spec.expressions import RefKind
from terrace.spec.provider import (
    ApiBackend,
    LandscapeBackend,
    PlanParameter,
    PricedAs,
    RestBackend,
)
from terrace.spec.schema_checks import ALLOWED_FORMATS

from .helpers import messages, provider, provider_errors, provider_errors_after_header, rows

SEED = """\
name: mattermost
version: v1
author: Your Team
displayName: Mattermost
iconUrl: https://example.com/mattermost-icon.png
category: collaboration
description: |
  Open-source team messaging and collaboration platform.
backend:
  landscape:
    gitUrl: https://github.com/your-org/mattermost-landscape
    ciProfile: production
configSchema:
  type: object
  properties:
    SITE_NAME:
      type: string
    MAX_USERS:
      type: integer
      x-update-constraint: increase-only
secretsSchema:
  type: object
  properties:
    ADMIN_PASSWORD:
      type: string
      format: password
detailsSchema:
  type: object
  properties:
    hostname:
      type: string
    port:
      type: integer
    status:
      type: object
      properties:
        state: {type: string}
      x-endpoint: "https://{{hostname}}:{{port}}/status"
"""


def test_the_seed_documents_provider_parses_into_the_model() -> None:
    parsed = provider(SEED)
    model = parsed.value
    assert (model.name, model.version, model.display_name) == ("mattermost", "v1", "Mattermost")
    assert model.author == "Your Team"
    assert model.category == "collaboration"
    assert model.backend == LandscapeBackend(
        git_url="https://github.com/your-org/mattermost-landscape", ci_profile="production"
    )
    assert model.config_schema["properties"]["MAX_USERS"]["x-update-constraint"] == (
        "increase-only"
    )
    assert model.plans == ()
    assert parsed.warnings == ()


def test_plans_with_text_ids_and_either_name_are_normalised() -> None:
    model = provider(
        """\
        name: stalwart-mailbox
        version: v1
        displayName: Stalwart
        backend: {rest: {url: "http://localhost:9090", authTokenEnv: BACKEND_AUTH_TOKEN}}
        configSchema: {type: object, properties: {}}
        secretsSchema: {type: object, properties: {}}
        detailsSchema: {type: object, properties: {}}
        plans:
          - id: starter
            displayName: Starter
            parameters: {QUOTA_MB: 500}
          - id: 1
            name: standard
        """
    ).value
    assert model.backend == RestBackend(
        url="http://localhost:9090", auth_token_env="BACKEND_AUTH_TOKEN"
    )
    starter, standard = model.plans
    assert (starter.id, starter.name, starter.display_name) == ("starter", "Starter", "Starter")
    assert starter.parameters["QUOTA_MB"] == PlanParameter(name="QUOTA_MB", value=500)
    assert (standard.id, standard.name, standard.display_name) == (1, "standard", "standard")
    assert model.plan("1") is standard
    assert model.plan(1) is standard


def test_newer_fields_schema_version_versions_capabilities_priced_parameters() -> None:
    model = provider(
        """\
        name: harbor
        schemaVersion: v1
        displayName: Harbor
        backend:
          api:
            endpoint: https://adapter.example.com/api/v1/harbor
            secret: ${{ vault.HARBOR_PROVIDER_API_KEY }}
        capabilities: {pause: false, backups: true, pointInTimeRecovery: false}
        configSchema: {}
        secretsSchema: {}
        detailsSchema: {type: object, properties: {}}
        plans:
          - id: 0
            name: Default
            parameters:
              storage:
                pricedAs: storage-mib
                schema: {type: integer, default: 10240, minimum: 1}
        versions:
          0.1.0: {ciProfile: default, gitRef: v0.1.0, appVersion: Forgejo 16}
        backups:
          configSchema: {type: object, properties: {retentionDays: {type: integer}}}
        """
    ).value
    assert model.version == "v1"
    assert isinstance(model.backend, ApiBackend)
    assert model.backend.secret is not None
    assert [(r.kind, r.name) for r in model.backend.secret.references] == [
        (RefKind.VAULT, "HARBOR_PROVIDER_API_KEY")
    ]
    assert model.capabilities.backups is True
    storage = model.plans[0].parameters["storage"]
    assert storage.priced_as is PricedAs.STORAGE_MIB
    assert storage.schema == {"type": "integer", "default": 10240, "minimum": 1}
    assert model.versions["0.1.0"].git_ref == "v0.1.0"
    assert model.backups_config_schema is not None


def test_harmless_schema_slips_are_normalised_with_warnings() -> None:
    parsed = provider(
        """\
        name: valkey
        version: "v1"
        displayName: Valkey
        backend: {landscape: {ciProfile: prod}}
        configSchema:
          type: object
          properties: []
        detailsSchema:
        secretsSchema: {}
        """
    )
    model = parsed.value
    assert model.config_schema == {"type": "object", "properties": {}}
    assert model.details_schema == {"type": "object", "properties": {}}
    assert model.secrets_schema == {}
    assert rows(parsed.warnings) == [(7, "configSchema.properties"), (8, "detailsSchema")]


def test_formats_outside_the_list_are_errors_that_name_the_list() -> None:
    error = provider_errors_after_header(
        """\
        configSchema:
          type: object
          properties:
            mail: {type: string, format: email}
        """
    )
    assert error.path == "configSchema.properties.mail.format"
    assert error.line == 7
    assert error.message == (
        f"format 'email' is not supported; use one of: {', '.join(ALLOWED_FORMATS)}"
    )


def test_update_constraint_mistakes() -> None:
    error = provider_errors_after_header(
        """\
        configSchema:
          type: object
          properties:
            name: {type: string, x-update-constraint: increase-only}
            size: {type: integer, x-update-constraint: grow-only}
            count: {type: [integer, "null"], x-update-constraint: increase-only}
        """
    )
    assert rows(error.problems) == [
        (7, "configSchema.properties.name.x-update-constraint"),
        (8, "configSchema.properties.size.x-update-constraint"),
    ]
    assert "increase-only applies only to numeric properties" in error.problems[0].message
    assert "'grow-only' is not one of: increase-only, immutable" in error.problems[1].message


def test_x_endpoint_templates_are_checked() -> None:
    error = provider_errors_after_header(
        """\
        detailsSchema:
          type: object
          properties:
            hostname: {type: string}
            a: {type: object, x-endpoint: "https://{{hostnme}}/status"}
            b: {type: object, x-endpoint: "https://{{b}}/status"}
            c: {type: object, x-endpoint: {url: "https://{{hostname}}", method: POST}}
            d: {type: object, x-endpoint: "ftp://{{hostname}}/"}
        """
    )
    assert [d.line for d in error.problems] == [8, 9, 10, 11]
    text = messages(error.problems)
    assert (
        "uses {{hostnme}}, which is not a detailsSchema property (known: b, c, d, hostname); "
        "did you mean {{hostname}}?"
    ) in text
    assert "`b` cannot be computed from itself" in text
    assert "fetched with GET; method 'POST' is not supported" in text
    assert "must be an http:// or https:// URL" in text


def test_details_relative_references_from_real_files() -> None:
    model = provider(
        """\
        name: url-shortener
        schemaVersion: v0
        displayName: URL Shortener
        backend: {landscape: {gitUrl: "https://github.com/codesphere-cloud/nodejs-template"}}
        configSchema: {}
        secretsSchema: {}
        detailsSchema:
          type: object
          properties:
            hostname: {type: string, readOnly: true}
            statusUrl: {type: string, default: '${{ .hostname }}/health'}
            status: {type: object, x-endpoint: '${{ .statusUrl }}'}
        """
    ).value
    assert "x-endpoint" in model.details_schema["properties"]["status"]


def test_x_endpoint_outside_details_is_ignored_with_a_warning() -> None:
    parsed = provider(
        """\
        name: x
        version: v1
        displayName: X
        backend: {landscape: {}}
        configSchema: {type: object, properties: {a: {type: string, x-endpoint: "https://h/"}}}
        secretsSchema: {}
        detailsSchema: {}
        """
    )
    assert "only applies in detailsSchema" in parsed.warnings[0].message


def test_invalid_json_schema_is_reported_where_it_is() -> None:
    error = provider_errors_after_header(
        """\
        configSchema:
          type: object
          properties:
            a: {type: strin}
            b: {type: integer, minimum: "1"}
            c: {type: integer, default: "ten"}
            d: {type: string, pattern: "["}
          required: a
        """
    )
    assert rows(error.problems) == [
        (7, "configSchema.properties.a.type"),
        (8, "configSchema.properties.b.minimum"),
        (9, "configSchema.properties.c.default"),
        (10, "configSchema.properties.d.pattern"),
        (11, "configSchema.required"),
    ]
    assert "did you mean 'string'?" in error.problems[0].message
    assert "does not pass its own schema" in error.problems[2].message


def test_identity_and_backend_mistakes() -> None:
    error = provider_errors(
        """\
        name: My Provider
        version: 1.0.0
        backend:
          landscape: {ciProfile: "no good"}
          api: {endpoint: "http://x"}
        configSchema: {type: array}
        plans:
          - id: 0
          - id: 0
          - name: missing id
          - id: 1
            parameters: {cpu: {pricedAs: cpu-cycles, schema: {type: integer}}}
        """
    )
    assert rows(error.problems) == [
        (1, "name"),
        (2, "version"),
        (3, "backend"),
        (6, "configSchema.type"),
        (9, "plans[1].id"),
        (10, "plans[2]"),
        (12, "plans[3].parameters.cpu.pricedAs"),
    ]
    text = messages(error.problems)
    assert "release numbers like 1.2.3 go under `versions`" in text
    assert "`backend` has landscape and api; choose one" in text
    assert "plan id 0 is used twice (first at line 8)" in text


def test_version_and_schema_version_must_agree() -> None:
    error = provider_errors("name: x\nversion: v1\nschemaVersion: v2\nbackend: {landscape: {}}\n")
    assert error.message == "`version` 'v1' and `schemaVersion` 'v2' differ; set one of them"


@pytest.mark.parametrize("missing", ["name", "version", "backend"])
def test_required_fields(missing: str) -> None:
    fields = {"name": "name: x", "version": "version: v1", "backend": "backend: {landscape: {}}"}
    text = "\n".join(v for k, v in fields.items() if k != missing) + "\n"
    error = provider_errors(text)
    assert missing in error.message


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b'{"const": "TOP-SECRET"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_refs_outside_the_schema_are_refused_and_never_fetched(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"const": "TOP-SECRET"}')
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/schema.json"
        error = provider_errors(
            f"""\
            name: x
            version: v1
            backend: {{landscape: {{}}}}
            configSchema:
              type: object
              $defs: {{n: {{type: integer}}}}
              properties:
                a: {{$ref: "{url}", default: 5}}
                b: {{$ref: "file://{secret}", default: x}}
                c: {{$ref: "#/$defs/n", default: 1}}
                d: {{$ref: "#", default: 1}}
            """
        )
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert rows(error.problems) == [
        (8, "configSchema.properties.a.$ref"),
        (9, "configSchema.properties.b.$ref"),
    ]
    assert "nothing is fetched" in error.problems[0].message
    assert "TOP-SECRET" not in str(error)
    assert _Recorder.hits == []


def test_defaults_and_patterns_that_break_validators_are_errors_not_crashes() -> None:
    error = provider_errors_after_header(
        """\
        configSchema:
          type: object
          properties:
            a: {type: string, pattern: 'a{99999999999999999999}'}
            b: {type: string, pattern: '^(a|a)+$', default: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!'}
            c: {type: number, multipleOf: 0.5, default: .inf}
            d: {type: number, multipleOf: 0.5, default: .nan}
            e: {type: integer, default: 7}
        """
    )
    assert rows(error.problems)[:2] == [
        (7, "configSchema.properties.a.pattern"),
        (8, "configSchema.properties.b.default"),
    ]
    assert "took too long" in error.problems[1].message


def test_update_constraints_only_on_properties() -> None:
    error = provider_errors_after_header(
        """\
        configSchema:
          type: object
          x-update-constraint: immutable
          properties:
            tags:
              type: array
              items: {type: integer, x-update-constraint: increase-only}
            size:
              allOf: [{type: integer, x-update-constraint: increase-only}]
            nested:
              type: object
              properties:
                gb: {type: integer, x-update-constraint: increase-only}
        """
    )
    assert rows(error.problems) == [
        (6, "configSchema.x-update-constraint"),
        (10, "configSchema.properties.tags.items.x-update-constraint"),
        (12, "configSchema.properties.size.allOf[0].x-update-constraint"),
    ]


def test_schema_messages_name_the_real_mistake() -> None:
    error = provider_errors_after_header(
        """\
        configSchema:
          type: object
          properties:
            type: 5
            required: {type: [strng]}
        """
    )
    assert [d.message for d in error.problems] == [
        "the schema of `type` must be a mapping, got a number (5)",
        "unknown JSON Schema type 'strng' (use one of array, boolean, integer, null, number, "
        "object, string); did you mean 'string'?",
    ]


def test_details_fields_computed_in_a_cycle() -> None:
    error = provider_errors_after_header(
        """\
        detailsSchema:
          type: object
          properties:
            a: {type: object, x-endpoint: "http://x/{{b}}"}
            b: {type: object, x-endpoint: "http://x/{{a}}"}
            c: {type: string, default: "${{ .c }}/x"}
        """
    )
    assert [d.message for d in error.problems] == [
        "details fields are computed from each other in a cycle: a -> b -> a",
        "`c` cannot be computed from itself",
    ]


def test_plan_parameter_schema_problems_are_all_reported() -> None:
    error = provider_errors_after_header(
        """\
        plans:
          - id: 0
            parameters:
              storage:
                pricedAs: storage-mib
                schema:
              cpu: {pricedAs: cycles, schema: {type: strin}}
        """
    )
    assert rows(error.problems) == [
        (9, "plans[0].parameters.storage.schema"),
        (10, "plans[0].parameters.cpu.pricedAs"),
        (10, "plans[0].parameters.cpu.schema.type"),
    ]


def test_a_missing_schema_is_one_warning() -> None:
    parsed = provider("name: x\nversion: v1\ndisplayName: X\nbackend: {landscape: {}}\n")
    assert [w.message for w in parsed.warnings] == [
        "no `configSchema`; read as an object schema with no properties",
        "no `detailsSchema`; read as an object schema with no properties",
        "no `secretsSchema`; read as an object schema with no properties",
    ]
