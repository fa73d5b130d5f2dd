from __future__ import annotations

from terrace.spec.expressions import RefKind
from terrace.spec.landscape import (
    HealthCheck,
    HealthCheckKind,
    LoadBalancing,
    ManagedServiceEntry,
    Network,
    PathRoute,
    Port,
    ProviderRef,
    ServiceKind,
    Step,
    VolumeMount,
)
from terrace.spec.landscape_parser import parse_landscape

from .helpers import landscape, landscape_errors, messages, rows


def test_legacy_file_becomes_one_service_on_port_3000_at_the_root() -> None:
    parsed = landscape(
        """\
        prepare:
          steps:
            - command: npm install flowise
        test:
          steps: []
        run:
          steps:
            - name: start
              command: npx flowise start
        """
    )
    model = parsed.value
    assert model.schema_version == "v0.1"
    assert list(model.services) == ["app"]
    app = model.services["app"]
    assert app.kind is ServiceKind.REACTIVE
    assert app.steps == (Step(name="start", command="npx flowise start"),)
    assert app.network == Network(
        ports=(Port(number=3000, public=True),), paths=(PathRoute(path="/", port=3000),)
    )
    assert model.prepare.steps == (Step(command="npm install flowise"),)
    assert parsed.warnings == ()


def test_v02_services_with_the_current_network_form() -> None:
    model = landscape(
        """\
        schemaVersion: v0.2
        run:
          api:
            steps:
              - command: ./minio server
            plan: 8
            replicas: 2
            isPublic: true
            network:
              ports:
                - port: 3000
                  isPublic: true
                - port: 3001
                  isPublic: false
              paths:
                - port: 3000
                  path: /
                - port: 3001
                  path: /console/
                  stripPath: true
            healthEndpoint: http://localhost:3001/ready
            env:
              APP_VERSION: 2
              RATIO: 2.10
              NAME: plain
        """
    ).value
    api = model.services["api"]
    assert (api.plan, api.replicas) == (8, 2)
    assert api.network == Network(
        ports=(Port(number=3000, public=True), Port(number=3001, public=False)),
        paths=(
            PathRoute(path="/", port=3000),
            PathRoute(path="/console", port=3001, strip_path=True),
        ),
    )
    assert api.health == HealthCheck(kind=HealthCheckKind.HTTP, port=3001, path="/ready")
    assert {k: str(v) for k, v in api.env.items()} == {
        "APP_VERSION": "2",
        "RATIO": "2.10",
        "NAME": "plain",
    }


def test_legacy_network_form_means_port_3000() -> None:
    model = landscape(
        """\
        schemaVersion: v0.2
        run:
          frontend:
            steps: [{command: npm run dev}]
            isPublic: true
            network: {path: /, stripPath: false}
          backend:
            steps: [{command: npm start}]
            isPublic: false
        """
    ).value
    assert model.services["frontend"].network == Network(
        ports=(Port(number=3000, public=True),), paths=(PathRoute(path="/", port=3000),)
    )
    assert model.services["backend"].network == Network(ports=(Port(number=3000),))


def test_paths_without_ports_declare_their_ports_privately() -> None:
    model = landscape(
        """\
        schemaVersion: v0.2
        run:
          web:
            steps: [{command: serve}]
            network:
              paths:
                - {port: 8080, path: /}
        """
    ).value
    assert model.services["web"].network.ports == (Port(number=8080),)


def test_v04_image_service_and_managed_service() -> None:
    model = landscape(
        """\
        schemaVersion: v0.4
        run:
          container:
            image: ghcr.io/acme/git:16
            runAsUser: 1501
            runAsGroup: 1010
            volumeMounts:
              - {name: _workspace, mountPath: /data, workspacePath: data}
              - {name: _workspace, mountPath: /home/user/app, workspacePath: ""}
            command: [/bin/bash, -c, "echo hi"]
          db:
            provider: {name: postgres, schemaVersion: v1}
            plan: {id: 0, parameters: {storage: 1024}}
            config: {version: "17.9", userName: forgejo, maxConnections: 100}
            secrets:
              userPassword: ${{ vault['PG_APP_PASSWORD'] }}
        """
    ).value
    container = model.services["container"]
    assert container.kind is ServiceKind.CONTAINER
    assert container.image == "ghcr.io/acme/git:16"
    assert (container.run_as_user, container.run_as_group) == (1501, 1010)
    assert container.volume_mounts == (
        VolumeMount(mount_path="/data", workspace_path="data"),
        VolumeMount(mount_path="/home/user/app", workspace_path=""),
    )
    assert container.command == ("/bin/bash", "-c", "echo hi")
    db = model.managed_services["db"]
    assert isinstance(db, ManagedServiceEntry)
    assert db.provider == ProviderRef(name="postgres", version="v1")
    assert (db.plan_id, dict(db.plan_parameters)) == (0, {"storage": 1024})
    assert str(db.config["version"]) == "17.9"
    assert db.config["maxConnections"] == 100
    assert model.vault_names == frozenset({"PG_APP_PASSWORD"})


def test_route_only_service_forwards_to_a_url() -> None:
    model = landscape(
        """\
        schemaVersion: v0.4
        run:
          headless:
            network:
              paths:
                - path: /
                  target: http://harbor.rg-${{ team.id }}.svc:80
        """
    ).value
    headless = model.services["headless"]
    assert headless.kind is ServiceKind.ROUTE
    assert headless.network.ports == ()
    target = headless.network.paths[0].target
    assert target is not None
    assert [r.kind for r in target.references] == [RefKind.TEAM_ID]


def test_references_are_collected_across_the_landscape() -> None:
    model = landscape(
        """\
        schemaVersion: v0.2
        run:
          web:
            steps: [{command: run}]
            env:
              A: ${{ vault.ONE }}
              B: x-${{ workspace.env.USER }}-${{ vault['two-2'] }}
          db:
            provider: {name: postgres, version: v1}
            plan: {id: 0}
            secrets: {password: "${{ vault.ONE }}"}
        """
    ).value
    assert model.vault_names == frozenset({"ONE", "two-2"})
    assert [(r.kind, r.name) for r in model.references] == [
        (RefKind.VAULT, "ONE"),
        (RefKind.WORKSPACE_ENV, "USER"),
        (RefKind.VAULT, "two-2"),
    ]


def test_every_problem_is_reported_sorted_by_line() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          web:
            steps: [{command: serve}]
            replicas: 0
            network:
              ports: [{port: 3000}]
              paths:
                - {port: 3001, path: /api}
          Bad_Name:
            steps: [{command: x}]
          api:
            steps: [{command: y}]
            network: {path: /api/}
            healthEndpoint: localhost:3000
        """
    )
    assert rows(error.problems) == [
        (5, "run.web.replicas"),
        (9, "run.web.network.paths[0].port"),
        (10, "run.Bad_Name"),
        (15, "run.api.healthEndpoint"),
    ]
    text = messages(error.problems)
    assert "`replicas` must be at least 1, got 0" in text
    assert "routes to port 3001, which `network.ports` does not declare (declared: 3000)" in text
    assert "'Bad_Name' is not a valid DNS label" in text
    assert error.line == 5
    assert error.path == "run.web.replicas"


def test_colliding_routes_name_the_first_owner() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          a:
            steps: [{command: x}]
            network: {path: /api}
          b:
            steps: [{command: y}]
            network:
              paths: [{port: 3000, path: /api/}]
        """
    )
    assert rows(error.problems) == [(9, "run.b.network.paths[0].path")]
    assert error.message == "path '/api' is already routed to service `a` (line 5)"


def test_nested_paths_do_not_collide() -> None:
    model = landscape(
        """\
        schemaVersion: v0.2
        run:
          foo: {steps: [{command: x}], network: {path: /foo}}
          bar: {steps: [{command: y}], network: {path: /foo/bar}}
        """
    ).value
    assert [s.network.paths[0].path for s in model.services.values()] == ["/foo", "/foo/bar"]


def test_unknown_keys_warn_with_the_nearest_known_key() -> None:
    parsed = landscape(
        """\
        schemaVersion: v0.2
        run:
          web:
            steps: [{command: serve}]
            replica: 2
            network:
              paths:
                - {port: 3000, path: /, stripPaht: true}
        """
    )
    assert [(w.line, w.message) for w in parsed.warnings] == [
        (5, "unknown key `replica` in service `web`, ignored; did you mean `replicas`?"),
        (8, "unknown key `stripPaht` in a path, ignored; did you mean `stripPath`?"),
    ]


def test_duplicate_keys_are_errors() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          web:
            steps: [{command: a}]
          web:
            steps: [{command: b}]
        """
    )
    assert error.message == "duplicate key 'web' (first defined at line 3)"
    assert error.line == 5


def test_names_that_collide_as_hostnames() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          Web: {steps: [{command: a}]}
          web: {steps: [{command: b}]}
        """
    )
    assert "differ only in case" in error.message


def test_real_world_slips_are_accepted_with_a_warning() -> None:
    parsed = landscape(
        """\
        schemaVersion: v0.2
        run:
          valkey:
            steps: [{name: "", command: ./start.sh}]
            baseImage: valkey/valkey:9.1-alpine
            env:
              URI: postgres://h-{{ workspace.id }}/x
              DEBUG: true
          rabbit:
            steps: [{command: rabbitmq-server}]
            isPublic: false
            network: {path: /service-1, stripPath: true}
          db:
            provider: {name: postgres, version: v1}
            plan: {id: 0}
            secrets: {userPassword: admin}
        """
    )
    valkey = parsed.value.services["valkey"]
    assert valkey.image == "valkey/valkey:9.1-alpine"
    assert valkey.steps[0].name is None
    assert str(valkey.env["DEBUG"]) == "true"
    assert [w.line for w in parsed.warnings] == [5, 7, 8, 12, 16]
    text = messages(parsed.warnings)
    assert "`baseImage` is read as `image`" in text
    assert "did you mean `${{ workspace.id }}`" in text
    assert "isPublic: false does not hide network.path '/service-1'" in text
    assert "secret `userPassword` is written in the file in plain text" in text


def test_service_shapes_that_cannot_run() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          empty:
          nothing:
            plan: 8
          reactive:
            steps: [{command: serve}]
            command: [serve]
          legacy-looking:
            - command: x
        """
    )
    assert rows(error.problems) == [
        (3, "run.empty"),
        (4, "run.nothing"),
        (8, "run.reactive.command"),
        (10, "run.legacy-looking"),
    ]


def test_a_v02_file_with_legacy_run_steps_is_explained() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          steps:
            - command: npm start
        """
    )
    assert "looks like a legacy file" in error.message


def test_unsupported_schema_version() -> None:
    error = landscape_errors("schemaVersion: v9.9\nrun: {}\n")
    assert error.message == (
        "unsupported schemaVersion 'v9.9'; Terrace reads v0.1, v0.2, v0.3, v0.4"
    )


def test_managed_service_mistakes() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          a:
            provider: {name: Postgres, version: v1}
            plan: {id: 0}
          b:
            provider: {name: postgres}
            plan: 3
          c:
            provider: {name: postgres, version: "1"}
            plan: {id: 0}
        """
    )
    assert rows(error.problems) == [
        (4, "run.a.provider.name"),
        (7, "run.b.provider"),
        (8, "run.b.plan"),
        (10, "run.c.provider.version"),
    ]


def test_paths_must_be_clean_prefixes() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          a:
            steps: [{command: x}]
            network:
              paths:
                - {port: 3000, path: api}
                - {port: 3000, path: /a/../b}
                - {port: 3000, path: "/x?y"}
                - {path: /z}
                - {port: 3000, path: /t, target: "http://x"}
        """
    )
    assert [d.line for d in error.problems] == [7, 8, 9, 10, 11]


def test_commands_do_not_evaluate_expressions() -> None:
    parsed = landscape(
        """\
        schemaVersion: v0.2
        run:
          a:
            steps: [{command: "echo ${{ vault.X }}"}]
        """
    )
    assert "not evaluated in commands" in parsed.warnings[0].message


def test_profile_is_recorded() -> None:
    model = parse_landscape("run: {steps: [{command: x}]}\n", profile="prod").value
    assert model.profile == "prod"


def test_a_service_with_nothing_to_run_still_has_its_other_fields_checked() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          web:
            replicas: 0
            env: {A: [1]}
            healthEndpoint: nope
            mountSubPath: /abs
        """
    )
    assert rows(error.problems) == [
        (3, "run.web"),
        (4, "run.web.replicas"),
        (5, "run.web.env.A"),
        (6, "run.web.healthEndpoint"),
        (7, "run.web.mountSubPath"),
    ]


def test_expressions_inside_nested_config_values_are_parsed() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          db:
            provider: {name: postgres, version: v1}
            plan: {id: 0}
            config:
              list: ["${{ vault.SECRET }}", "${{ bogus }}"]
        """
    )
    assert rows(error.problems) == [(7, "run.db.config.list[1]")]
    model = landscape(
        """\
        schemaVersion: v0.2
        run:
          db:
            provider: {name: postgres, version: v1}
            plan: {id: 0}
            config: {obj: {pw: "${{ vault.OTHER }}"}, list: ["${{ vault.SECRET }}", 3]}
        """
    ).value
    assert model.vault_names == frozenset({"OTHER", "SECRET"})


def test_a_legacy_service_that_is_not_public_gets_no_route() -> None:
    model = landscape("run: {isPublic: false, steps: [{command: serve}]}\n").value
    assert model.services["app"].network == Network(ports=(Port(number=3000, public=False),))


def test_one_mistake_gives_one_error() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          a:
            steps: [{command: x}]
            network:
              ports: {port: 3000}
              paths: [{port: 3000, path: /}]
          b:
            image: "ng inx"
            command: [nginx]
          c:
            image: nginx
            command: []
        """
    )
    assert rows(error.problems) == [
        (6, "run.a.network.ports"),
        (9, "run.b.image"),
        (13, "run.c.command"),
    ]
    assert "non-empty list of strings" in error.problems[2].message


def test_legacy_run_steps_that_are_not_a_list() -> None:
    error = landscape_errors("run:\n  steps: echo hi\n")
    assert rows(error.problems) == [(2, "run.steps")]
    assert error.message == "`steps` must be a list, got text 'echo hi'"


def test_mount_paths_are_compared_normalised() -> None:
    error = landscape_errors(
        """\
        schemaVersion: v0.4
        run:
          c:
            image: nginx
            volumeMounts:
              - {mountPath: /data, workspacePath: a}
              - {mountPath: /data/, workspacePath: b}
        """
    )
    assert error.message == "'/data' is mounted twice"


def test_load_balancing_is_round_robin_unless_a_service_asks_for_least_connections() -> None:
    model = landscape(
        """\
        schemaVersion: v0.2
        run:
          api:
            steps: [{command: api}]
            loadBalancing: leastConnections
          web:
            steps: [{command: web}]
        """
    ).value
    assert model.services["api"].load_balancing is LoadBalancing.LEAST_CONNECTIONS
    assert model.services["web"].load_balancing is LoadBalancing.ROUND_ROBIN
    error = landscape_errors(
        """\
        schemaVersion: v0.2
        run:
          api:
            steps: [{command: api}]
            loadBalancing: least-conn
        """
    )
    assert rows(error.problems) == [(5, "run.api.loadBalancing")]
    assert error.message == "loadBalancing 'least-conn' must be roundRobin or leastConnections"
