"""The pure route table and how deployed landscapes become routes."""

from __future__ import annotations

import pytest

from terrace.router.landscapes import LandscapeTraffic, ReplicaAddress, route_table
from terrace.router.table import Backend, Balance, Pool, Route, RouteTable, normalize_host
from terrace.spec.landscape_parser import parse_landscape

SHOP = """
schemaVersion: v0.2
run:
  web:
    steps: [{command: web}]
    network:
      ports: [{port: 3000, isPublic: false}]
      paths: [{port: 3000, path: /}]
  api:
    steps: [{command: api}]
    network:
      ports:
        - {port: 3000, isPublic: false}
        - {port: 9000, isPublic: false}
        - {port: 8443, isPublic: true}
      paths: [{port: 3000, path: /api/, stripPath: true}]
  worker:
    steps: [{command: worker}]
"""


def _table(*routes: Route) -> RouteTable:
    names = {r.pool for r in routes}
    return RouteTable(routes, [Pool(n) for n in names])


def _where(table: RouteTable, host: str | None, path: str) -> tuple[str, str] | None:
    found = table.match(host, path)
    return None if found is None else (found.pool.name, found.route.target(path))


def test_longest_prefix_on_a_segment_boundary() -> None:
    table = _table(Route("/", "root"), Route("/api", "api", strip="/api"), Route("/api/v2", "v2"))
    assert _where(table, None, "/") == ("root", "/")
    assert _where(table, None, "/apis") == ("root", "/apis")
    assert _where(table, None, "/api") == ("api", "/")
    assert _where(table, None, "/api/users") == ("api", "/users")
    assert _where(table, None, "/api/v2/x") == ("v2", "/api/v2/x")
    assert _where(table, None, "/api/v21") == ("api", "/v21")


def test_hosts_are_exact_and_a_known_host_never_falls_back() -> None:
    table = _table(
        Route("/", "a", host="a.localhost"),
        Route("/only", "b", host="b.localhost"),
        Route("/", "default"),
    )
    assert _where(table, "A.LocalHost:8080", "/x") == ("a", "/x")
    assert _where(table, "b.localhost", "/only/1") == ("b", "/only/1")
    assert _where(table, "b.localhost", "/other") is None
    for host in ("127.0.0.1:8080", "c.localhost", None, "", "[::1]:80", "bad_host!"):
        assert _where(table, host, "/x") == ("default", "/x")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("12-3000.localhost:8080", "12-3000.localhost"),
        ("127.0.0.1", None),
        ("[::1]:8080", None),
        ("exa mple.com", None),
        ("", None),
    ],
)
def test_host_normalisation(host: str, expected: str | None) -> None:
    assert normalize_host(host) == expected


@pytest.mark.parametrize(
    "build",
    [
        lambda: Route("api", "p"),
        lambda: Route("/api/", "p"),
        lambda: Route("/a?b", "p"),
        lambda: Route("/a%2f", "p"),
        lambda: Route("/a", "p", host="Upper.case"),
        lambda: Route("/api", "p", strip="/ap"),
        lambda: Route("/api", "p", strip="/"),
        lambda: Pool("no spaces"),
        lambda: Backend("r1", "127.0.0.1", 0),
        lambda: RouteTable([Route("/", "missing")]),
        lambda: RouteTable([Route("/", "p"), Route("/", "p")], [Pool("p")]),
        lambda: RouteTable([], [Pool("p"), Pool("p")]),
        lambda: Pool("p", (Backend("r", "127.0.0.1", 1), Backend("r", "127.0.0.1", 2))),
    ],
)
def test_bad_tables_are_refused_with_what_is_wrong(build: object) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        build()  # type: ignore[operator]


def test_tables_compare_by_content() -> None:
    one = _table(Route("/", "a"), Route("/b", "b"))
    two = _table(Route("/b", "b"), Route("/", "a"))
    assert one == two
    assert hash(one) == hash(two)
    assert one != _table(Route("/", "a"))


def _shop(**kwargs: object) -> LandscapeTraffic:
    landscape = parse_landscape(SHOP, file="ci.yml").value
    return LandscapeTraffic(workspace_id=7, landscape=landscape, **kwargs)  # type: ignore[arg-type]


def test_a_landscape_is_served_on_its_hosts_its_domains_and_the_path_form() -> None:
    replicas = {
        "api": (
            ReplicaAddress("7-api-0-aa", "10.88.0.2", {3000: 3000, 9000: 9000, 8443: 8443}),
            ReplicaAddress("7-api-1-bb", "10.88.0.3", {3000: 3000, 9000: 9000, 8443: 8443}),
        ),
        "web": (ReplicaAddress("7-web-0-cc", "127.0.0.1", {3000: 41234}),),
    }
    table = route_table(
        [_shop(replicas=replicas, domains=("shop.example.com",))], domain="localhost"
    )
    for host in ("7-3000.localhost", "shop.example.com"):
        assert _where(table, host, "/") == ("w7-web-3000", "/")
        assert _where(table, host, "/api/products") == ("w7-api-3000", "/products")
        assert _where(table, host, "/apis") == ("w7-web-3000", "/apis")
    # A public port, whole, on its own host; a private one nowhere.
    assert _where(table, "7-8443.localhost", "/x") == ("w7-api-8443", "/x")
    assert _where(table, "7-9000.localhost", "/") is None
    assert "w7-api-9000" not in table.pools
    # The path form, on any other host.
    assert _where(table, "127.0.0.1", "/_ws/7-3000") == ("w7-web-3000", "/")
    assert _where(table, None, "/_ws/7-3000/cart?x") == ("w7-web-3000", "/cart?x")
    assert _where(table, None, "/_ws/7-3000/api/products") == ("w7-api-3000", "/products")
    assert _where(table, None, "/_ws/7-8443/y") == ("w7-api-8443", "/y")
    assert _where(table, None, "/_ws/7-9000/") is None
    # Not the default workspace: nothing at / on other hosts.
    assert _where(table, "127.0.0.1", "/") is None
    # Backends: each replica's reachable port for the pool's declared port.
    assert [(b.host, b.port) for b in table.pools["w7-web-3000"].backends] == [("127.0.0.1", 41234)]
    assert [b.id for b in table.pools["w7-api-3000"].backends] == ["7-api-0-aa", "7-api-1-bb"]
    assert not table.pools["w7-api-3000"].wake
    assert {p.balance for p in table.pools.values()} == {Balance.ROUND_ROBIN}


def test_a_service_asking_for_least_connections_gets_it_on_all_its_ports() -> None:
    text = SHOP.replace("  api:\n", "  api:\n    loadBalancing: leastConnections\n")
    landscape = parse_landscape(text, file="ci.yml").value
    table = route_table([LandscapeTraffic(workspace_id=7, landscape=landscape)], domain="test")
    balance = {name: pool.balance for name, pool in table.pools.items()}
    assert balance == {
        "w7-api-3000": Balance.LEAST_CONN,
        "w7-api-8443": Balance.LEAST_CONN,
        "w7-web-3000": Balance.ROUND_ROBIN,
    }


def test_the_default_workspace_is_served_on_any_other_host_and_sleepers_wake() -> None:
    table = route_table([_shop(wakeable=frozenset({"web"}))], domain="apps.test", default=7)
    assert _where(table, "127.0.0.1:8080", "/") == ("w7-web-3000", "/")
    assert _where(table, "localhost", "/api") == ("w7-api-3000", "/")
    assert _where(table, "7-3000.apps.test", "/api/x") == ("w7-api-3000", "/x")
    assert table.pools["w7-web-3000"].wake
    assert table.pools["w7-web-3000"].backends == ()
    assert not table.pools["w7-api-3000"].wake
