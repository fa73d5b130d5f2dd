"""The behaviour every data plane has (:mod:`terrace.router.plane`), checked on each of them.

Every test runs once per plane (the ``plane`` fixture in ``conftest.py``) against real backends
(:mod:`tests.router.backends`) and real clients, all over loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect as websocket

from terrace.router.table import Backend, Balance, Pool, Route
from tests.router.backends import REQUEST_ID, Echo, big_body, closed_port, until
from tests.router.conftest import Harness, eventually, joined, pool, values

MB = 1_000_000


def echoed(response: httpx.Response) -> Echo:
    """The request as the backend saw it (the response must be the backend's echo)."""
    assert response.status_code == 200, (response.status_code, response.text[:200])
    echo: Echo = response.json()
    return echo


def backend_of(response: httpx.Response) -> str:
    return echoed(response)["backend"]


# --- no table yet ---


def test_serves_404_until_the_first_apply(plane: Harness) -> None:
    async def main() -> list[int]:
        return [
            (await plane.get("/")).status_code,
            (await plane.get("/api/x?y=1", host="a.localhost")).status_code,
        ]

    assert plane.run(main()) == [404, 404]


# --- routing ---


def test_the_longest_prefix_on_a_segment_boundary_wins_and_the_target_is_kept(
    plane: Harness,
) -> None:
    expected = {
        "/": "root",
        "/apis": "root",
        "/apis/v1": "root",
        "/other/api": "root",
        "/api": "api",
        "/api/": "api",
        "/api/users?x=1&y=2": "api",
        "/api/v1x": "api",
        "/api/v1": "v1",
        "/api/v1/": "v1",
        "/api/v1/items?page=2&q=a%20b": "v1",
    }

    async def main() -> dict[str, tuple[str, str, str | None]]:
        root, api, v1 = await plane.backends("root", "api", "v1")
        await plane.apply(
            Route("/", "root"),
            Route("/api", "api"),
            Route("/api/v1", "v1"),
            pool("root", root),
            pool("api", api),
            pool("v1", v1),
        )
        seen = {}
        for target in expected:
            echo = echoed(await plane.get(target))
            prefix = joined(echo["headers"], "x-forwarded-prefix")
            seen[target] = (echo["backend"], echo["target"], prefix)
        return seen

    assert plane.run(main()) == {
        target: (backend, target, None) for target, backend in expected.items()
    }


def test_hosts_choose_their_routes_and_other_hosts_get_the_default_routes(
    plane: Harness,
) -> None:
    async def main() -> dict[tuple[str, str], str | int]:
        a, b, c, default = await plane.backends("a", "b", "c", "default")
        await plane.apply(
            Route("/", "a", host="a.localhost"),
            Route("/", "b", host="b.localhost"),
            Route("/api", "c", host="c.localhost"),
            Route("/", "default"),
            pool("a", a),
            pool("b", b),
            pool("c", c),
            pool("default", default),
        )
        requests = [
            ("a.localhost", "/"),
            ("A.LocalHost:8080", "/x"),
            ("a.localhost.", "/"),
            ("b.localhost:1234", "/api"),
            ("B.LOCALHOST", "/"),
            ("unknown.localhost", "/"),
            ("localhost", "/api"),
            (f"127.0.0.1:{plane.port}", "/"),
            ("127.0.0.1", "/a"),
            ("[::1]:8080", "/"),
            ("c.localhost", "/api/x"),
            ("C.localhost:99", "/api"),
            ("c.localhost", "/"),  # a known host: never another host's routes
            ("c.localhost", "/apix"),
        ]
        seen: dict[tuple[str, str], str | int] = {}
        for host, target in requests:
            response = await plane.get(target, host=host)
            ok = response.status_code == 200
            seen[host, target] = backend_of(response) if ok else response.status_code
        return seen

    assert plane.run(main()) == {
        ("a.localhost", "/"): "a",
        ("A.LocalHost:8080", "/x"): "a",
        ("a.localhost.", "/"): "a",
        ("b.localhost:1234", "/api"): "b",
        ("B.LOCALHOST", "/"): "b",
        ("unknown.localhost", "/"): "default",
        ("localhost", "/api"): "default",
        (f"127.0.0.1:{plane.port}", "/"): "default",
        ("127.0.0.1", "/a"): "default",
        ("[::1]:8080", "/"): "default",
        ("c.localhost", "/api/x"): "c",
        ("C.localhost:99", "/api"): "c",
        ("c.localhost", "/"): 404,
        ("c.localhost", "/apix"): 404,
    }


def test_a_request_no_route_matches_gets_404(plane: Harness) -> None:
    async def main() -> list[tuple[int, bool]]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/api", "web"), pool("web", web))
        answers = [await plane.get(target) for target in ("/", "/apix", "/ap", "/x")]
        return [
            (a.status_code, bool(REQUEST_ID.fullmatch(a.headers.get("x-request-id", ""))))
            for a in answers
        ]

    assert plane.run(main()) == [(404, True)] * 4


def test_the_path_form_reaches_a_workspace_port_without_dns(plane: Harness) -> None:
    async def main() -> dict[str, tuple[str, str, str | None] | int]:
        web, api = await plane.backends("web", "api")
        await plane.apply(
            Route(prefix="/_ws/12-3000/api", pool="api", strip="/_ws/12-3000"),
            Route(prefix="/_ws/12-3000", pool="web", strip="/_ws/12-3000"),
            pool("web", web),
            pool("api", api),
        )
        seen: dict[str, tuple[str, str, str | None] | int] = {}
        for target in [
            "/_ws/12-3000/api/users?x=1",
            "/_ws/12-3000/api",
            "/_ws/12-3000/apix",
            "/_ws/12-3000",
            "/_ws/12-3000/",
            "/_ws/12-30001",
            "/_ws/12-300",
            "/api",
        ]:
            response = await plane.get(target, host="anything.localhost")
            if response.status_code == 200:
                echo = echoed(response)
                prefix = joined(echo["headers"], "x-forwarded-prefix")
                seen[target] = (echo["backend"], echo["target"], prefix)
            else:
                seen[target] = response.status_code
        return seen

    assert plane.run(main()) == {
        "/_ws/12-3000/api/users?x=1": ("api", "/api/users?x=1", "/_ws/12-3000"),
        "/_ws/12-3000/api": ("api", "/api", "/_ws/12-3000"),
        "/_ws/12-3000/apix": ("web", "/apix", "/_ws/12-3000"),
        "/_ws/12-3000": ("web", "/", "/_ws/12-3000"),
        "/_ws/12-3000/": ("web", "/", "/_ws/12-3000"),
        "/_ws/12-30001": 404,
        "/_ws/12-300": 404,
        "/api": 404,
    }


def test_strip_removes_the_prefix_keeps_the_query_and_sends_x_forwarded_prefix(
    plane: Harness,
) -> None:
    async def main() -> dict[str, tuple[str, str, list[str]]]:
        root, api = await plane.backends("root", "api")
        await plane.apply(
            Route("/api", "api", strip="/api"),
            Route("/", "root"),
            pool("api", api),
            pool("root", root),
        )
        seen = {}
        for target in ["/api/users?x=1", "/api", "/api/", "/api?q=1", "/api/a/b/", "/x?y=2"]:
            echo = echoed(await plane.get(target))
            prefix = values(echo["headers"], "x-forwarded-prefix")
            seen[target] = (echo["backend"], echo["target"], prefix)
        return seen

    assert plane.run(main()) == {
        "/api/users?x=1": ("api", "/users?x=1", ["/api"]),
        "/api": ("api", "/", ["/api"]),
        "/api/": ("api", "/", ["/api"]),
        "/api?q=1": ("api", "/?q=1", ["/api"]),
        "/api/a/b/": ("api", "/a/b/", ["/api"]),
        "/x?y=2": ("root", "/x?y=2", []),
    }


def test_a_pool_that_no_route_names_cannot_be_reached(plane: Harness) -> None:
    async def main() -> tuple[dict[tuple[str, str], int], int]:
        public, private = await plane.backends("public", "private")
        await plane.apply(
            Route("/", "public", host="public.localhost"),
            pool("public", public),
            pool("private", private),
        )
        seen = {}
        for host in [
            "private",
            "private.localhost",
            "localhost",
            f"127.0.0.1:{private.port}",
            f"127.0.0.1:{plane.port}",
        ]:
            for target in ["/", "/private", "/private/x"]:
                seen[host, target] = (await plane.get(target, host=host)).status_code
        return seen, private.accepted

    seen, reached_private = plane.run(main())

    assert set(seen.values()) == {404}
    assert reached_private == 0


# --- load balancing ---


def test_round_robin_spreads_requests_evenly(plane: Harness) -> None:
    async def main() -> Counter[str]:
        a, b, c = await plane.backends("a", "b", "c")
        await plane.apply(Route("/", "web"), pool("web", a, b, c))
        return Counter([backend_of(await plane.get(f"/n/{i}")) for i in range(30)])

    assert plane.run(main()) == {"a": 10, "b": 10, "c": 10}


def test_least_conn_avoids_the_backend_holding_a_request(plane: Harness) -> None:
    async def main() -> tuple[str, Counter[str], str]:
        members = await plane.backends("a", "b", "c")
        await plane.apply(Route("/", "web"), pool("web", *members, balance=Balance.LEAST_CONN))
        async with asyncio.TaskGroup() as tasks:
            held = tasks.create_task(plane.get("/slow"))
            await until(lambda: sum(m.in_flight for m in members) == 1, *members)
            (busy,) = [m for m in members if m.in_flight == 1]
            others = Counter([backend_of(await plane.get(f"/n/{i}")) for i in range(12)])
            busy.release.set()
        return busy.id, others, backend_of(held.result())

    busy, others, held_by = plane.run(main())

    assert held_by == busy
    assert others == dict.fromkeys({"a", "b", "c"} - {busy}, 6)


# --- following the table ---


def test_a_backend_added_to_a_pool_gets_requests(plane: Harness) -> None:
    async def main() -> tuple[Counter[str], Counter[str]]:
        a, b = await plane.backends("a", "b")
        await plane.apply(Route("/", "web"), pool("web", a))
        before = Counter([backend_of(await plane.get("/")) for _ in range(4)])
        await plane.apply(Route("/", "web"), pool("web", a, b))
        after = Counter([backend_of(await plane.get("/")) for _ in range(10)])
        return before, after

    before, after = plane.run(main())

    assert before == {"a": 4}
    assert sorted(after) == ["a", "b"]
    assert after.total() == 10


def test_a_removed_backend_gets_no_new_request_and_its_request_in_flight_finishes(
    plane: Harness,
) -> None:
    async def main() -> None:
        old, new = await plane.backends("old", "new")
        await plane.apply(Route("/", "web"), pool("web", old))
        async with asyncio.TaskGroup() as tasks:
            held = tasks.create_task(plane.get("/slow"))
            await old.until(lambda: old.in_flight == 1)
            await plane.apply(Route("/", "web"), pool("web", new))
            after = [backend_of(await plane.get(f"/after/{i}")) for i in range(5)]
            assert after == ["new"] * 5
            assert await plane.plane.drained(["old"], timeout=0.2) is False
            assert not held.done()
            old.release.set()
        assert backend_of(held.result()) == "old"
        assert await plane.plane.drained(["old"], timeout=5.0) is True
        # idle keep-alive connections to a drained backend are closed
        await old.until(lambda: old.connections == 0, timeout=5.0)
        assert (old.handled, new.handled) == (1, 5)

    plane.run(main())


def test_drained_is_true_at_once_for_a_backend_without_requests(plane: Harness) -> None:
    async def main() -> bool:
        a, b = await plane.backends("a", "b")
        await plane.apply(Route("/", "web"), pool("web", a, b))
        for _ in range(4):
            await plane.get("/")
        await plane.apply(Route("/", "web"), pool("web", b))
        return await plane.plane.drained(["a"], timeout=5.0)

    assert plane.run(main()) is True


def test_replacing_every_backend_of_a_pool(plane: Harness) -> None:
    async def main() -> tuple[Counter[str], Counter[str]]:
        a, b, c, d = await plane.backends("a", "b", "c", "d")
        await plane.apply(Route("/", "web"), pool("web", a, b))
        before = Counter([backend_of(await plane.get("/")) for _ in range(4)])
        await plane.apply(Route("/", "web"), pool("web", c, d))
        after = Counter([backend_of(await plane.get("/")) for _ in range(4)])
        return before, after

    assert plane.run(main()) == ({"a": 2, "b": 2}, {"c": 2, "d": 2})


def test_routes_and_pools_follow_each_applied_table(plane: Harness) -> None:
    async def main() -> list[tuple[int, int]]:
        (web,) = await plane.backends("web")
        seen = []
        for items in [
            (Route("/", "web"), pool("web", web)),
            (Route("/other", "web"), pool("web", web)),  # the route for "/" removed
            (Route("/", "web"), Pool("web")),  # no backend, not sleeping
            (Route("/", "web"), pool("web", web)),
            (),
        ]:
            await plane.apply(*items)
            seen.append(
                ((await plane.get("/")).status_code, (await plane.get("/other")).status_code)
            )
        return seen

    assert plane.run(main()) == [(200, 200), (404, 200), (503, 503), (200, 200), (404, 404)]


# --- failing backends ---


def test_a_refused_connection_is_retried_on_another_backend(plane: Harness) -> None:
    async def main() -> list[tuple[int, str]]:
        (good,) = await plane.backends("good")
        down = Backend("down", "127.0.0.1", closed_port())
        await plane.apply(Route("/", "web"), Pool("web", (down, good.backend)))
        return [
            (response.status_code, response.headers.get("x-backend", ""))
            for response in [await plane.get(f"/n/{i}") for i in range(10)]
        ]

    assert plane.run(main()) == [(200, "good")] * 10


@pytest.mark.timeouts(connect=0.2)  # HAProxy waits min(1 s, connect) between retries
def test_a_pool_whose_only_backend_is_down_answers_502_or_503(plane: Harness) -> None:
    async def main() -> list[int]:
        down = Backend("down", "127.0.0.1", closed_port())
        await plane.apply(Route("/", "web"), Pool("web", (down,)))
        return [(await plane.get(f"/n/{i}")).status_code for i in range(3)]

    statuses = plane.run(main())

    assert len(statuses) == 3
    assert set(statuses) <= {502, 503}


def test_a_backend_that_hangs_up_before_answering_gets_502(plane: Harness) -> None:
    async def main() -> tuple[list[tuple[int, str | None, str | None]], int]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        answers = []
        for method in ["GET", "POST"]:  # each the first request of its client connection
            connection = await plane.connect()
            response = await connection.request(
                "/hangup", host="x", method=method, body=b"", headers={"X-Request-Id": method}
            )
            answers.append(
                (response.status, response.header("connection"), response.header("x-request-id"))
            )
        return answers, web.handled

    answers, handled = plane.run(main())

    # the plane closes the connection after a 502, and says so
    assert answers == [(502, "close", "GET"), (502, "close", "POST")]
    assert handled >= 2  # the backend did get them


def test_a_backend_hanging_up_on_a_later_request_of_a_connection_gets_502_or_a_close(
    plane: Harness,
) -> None:
    """HAProxy answers a request that is not the first of its client connection with a close
    (no response: the client may retry, RFC 9112 section 9.3.1) where the builtin plane sends
    502; both are accepted, anything else is not."""

    async def main() -> list[int | str]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        connection = await plane.connect()
        seen: list[int | str] = [(await connection.request("/first", host="x")).status]
        try:
            seen.append((await connection.request("/hangup", host="x")).status)
        except asyncio.IncompleteReadError as closed:
            seen.append("closed" if closed.partial == b"" else f"cut: {closed.partial!r}")
        seen.append((await plane.get("/after")).status_code)
        return seen

    first, hung_up, after = plane.run(main())

    assert (first, after) == (200, 200)
    assert hung_up in {502, "closed"}


@pytest.mark.timeouts(response=0.5)
def test_a_backend_that_does_not_answer_in_time_gets_504(plane: Harness) -> None:
    async def main() -> tuple[int, float, int, str]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await plane.get("/slow")
        made = response.headers.get("x-request-id", "")
        return response.status_code, loop.time() - started, web.in_flight, made

    status, elapsed, in_flight, made = plane.run(main())

    assert status == 504
    assert REQUEST_ID.fullmatch(made)  # an id the plane made (the client sent none)
    assert 0.45 <= elapsed < 5.0
    assert in_flight == 1  # it really was held by the backend


# --- headers ---


def test_a_request_id_is_made_when_absent_kept_when_present_and_responses_are_left_alone(
    plane: Harness,
) -> None:
    """As Heroku's router: the id goes to the app, which may return it (or one of its own); the
    plane adds none to an app's response (its own answers carry it: the 404, 502, 504 tests)."""

    async def main() -> list[tuple[list[str], list[str]]]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        responses = [
            await plane.get("/"),
            await plane.get("/"),
            await plane.get("/", headers={"X-Request-Id": "abc-123"}),
            await plane.get("/?id=app-7", headers={"X-Request-Id": "abc-123"}),
        ]
        return [
            (values(echoed(r)["headers"], "x-request-id"), r.headers.get_list("x-request-id"))
            for r in responses
        ]

    answers = plane.run(main())
    sent = [s for s, _ in answers]
    returned = [r for _, r in answers]

    assert sent[2] == sent[3] == ["abc-123"]
    assert len(sent[0]) == len(sent[1]) == 1
    assert REQUEST_ID.fullmatch(sent[0][0])
    assert REQUEST_ID.fullmatch(sent[1][0])
    assert sent[0] != sent[1]
    assert returned == [[], [], [], ["app-7"]]


def test_forwarded_headers_are_set_and_client_values_replaced_or_appended(
    plane: Harness,
) -> None:
    host = f"Shop.Localhost:{plane.port}"

    async def main() -> tuple[list[list[str]], list[list[str]]]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        spoofing = await plane.get(
            "/",
            host=host,
            headers={
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "spoofed.example",
                "X-Forwarded-Port": "1",
                "X-Forwarded-Prefix": "/spoofed",
            },
        )
        plain = await plane.get("/", host=host)
        return echoed(spoofing)["headers"], echoed(plain)["headers"]

    spoofing, plain = plane.run(main())

    expected = {
        "host": [host],  # as the client sent it: no X-Forwarded-Host (it would say the same)
        "x-forwarded-proto": ["http"],
        "x-forwarded-host": [],
        "x-forwarded-port": [str(plane.port)],
    }
    assert {name: values(spoofing, name) for name in expected} == expected
    assert {name: values(plain, name) for name in expected} == expected
    assert joined(spoofing, "x-forwarded-for") == "203.0.113.7, 127.0.0.1"
    assert joined(plain, "x-forwarded-for") == "127.0.0.1"
    assert values(spoofing, "x-forwarded-prefix") == []  # a route that strips nothing


# --- connections ---


def test_one_client_connection_carries_requests_for_several_pools(plane: Harness) -> None:
    async def main() -> list[tuple[int, str, str, str | None]]:
        a, api, root = await plane.backends("a", "api", "root")
        await plane.apply(
            Route("/", "a", host="a.localhost"),
            Route("/api", "api"),
            Route("/", "root"),
            pool("a", a),
            pool("api", api),
            pool("root", root),
        )
        connection = await plane.connect()
        seen = []
        for host, target in [
            ("a.localhost", "/1"),
            ("x.localhost", "/api/2"),
            ("a.localhost", "/api/3"),
            ("x.localhost", "/4"),
            ("a.localhost", "/5"),
            ("x.localhost", "/api?6"),
        ]:
            response = await connection.request(target, host=host)
            echo: Echo = json.loads(response.body)
            close = response.header("connection")
            seen.append((response.status, echo["backend"], echo["target"], close))
        return seen

    assert plane.run(main()) == [
        (200, "a", "/1", None),
        (200, "api", "/api/2", None),
        (200, "a", "/api/3", None),
        (200, "root", "/4", None),
        (200, "a", "/5", None),
        (200, "api", "/api?6", None),
    ]


def test_connections_to_backends_are_kept_alive(plane: Harness) -> None:
    async def main() -> tuple[list[int], int]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        connection = await plane.connect()
        statuses = [(await connection.request(f"/{i}", host="x")).status for i in range(10)]
        return statuses, web.accepted

    statuses, accepted = plane.run(main())

    assert statuses == [200] * 10
    assert accepted == 1


def test_close_stops_listening_and_closes_client_connections(plane: Harness) -> None:
    async def main() -> None:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        connection = await plane.connect()
        assert (await connection.request("/", host="x")).status == 200
        plane.closed = True
        await plane.plane.close()
        assert await connection.at_eof()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", plane.port)

    plane.run(main())


def test_a_websocket_is_passed_through_both_ways(plane: Harness) -> None:
    messages: list[str | bytes] = ["hello", b"\x00\x01\xffbinary", "x" * 200_000, "bye"]

    async def main() -> list[str | bytes]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/app", "web", strip="/app"), pool("web", web))
        echoed_back: list[str | bytes] = []
        async with websocket(f"ws://127.0.0.1:{plane.port}/app/ws") as ws:
            for message in messages:
                await ws.send(message)
                echoed_back.append(await ws.recv())
        await web.until(lambda: web.handled == 1)  # the backend saw the close
        return echoed_back

    assert plane.run(main()) == messages


# --- bodies ---


def test_a_20_mb_request_body_arrives_whole(plane: Harness) -> None:
    body = random.Random(1).randbytes(20 * MB)

    async def main() -> Echo:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        return echoed(await plane.client.post("/upload", content=body))

    echo = plane.run(main())

    assert (echo["method"], echo["body_length"]) == ("POST", len(body))
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_chunked_request_body_arrives_whole(plane: Harness) -> None:
    pieces = [random.Random(n).randbytes(50_000 + n) for n in range(60)]

    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def main() -> Echo:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        return echoed(await plane.client.put("/upload", content=chunks()))

    echo = plane.run(main())

    assert (echo["method"], echo["body_length"]) == ("PUT", sum(map(len, pieces)))
    assert echo["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_a_request_body_reaches_the_backend_before_the_client_has_sent_all_of_it(
    plane: Harness,
) -> None:
    first, second = b"a" * 100_000, b"b" * 100_000

    async def main() -> Echo:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))

        async def body() -> AsyncIterator[bytes]:
            yield first
            await web.until(lambda: web.body_received >= len(first), timeout=5.0)
            yield second

        return echoed(await plane.client.post("/upload", content=body()))

    echo = plane.run(main())

    assert echo["body_length"] == len(first + second)
    assert echo["body_sha256"] == hashlib.sha256(first + second).hexdigest()


def test_a_20_mb_response_body_arrives_whole(plane: Harness) -> None:
    async def main() -> httpx.Response:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        return await plane.get(f"/big?bytes={20 * MB}")

    response = plane.run(main())

    assert response.status_code == 200
    assert len(response.content) == 20 * MB
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(big_body(20 * MB)).digest()


def test_a_streamed_response_reaches_the_client_before_the_backend_finishes(
    plane: Harness,
) -> None:
    async def main() -> tuple[bytes, int, bytes]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "web"), pool("web", web))
        async with plane.client.stream("GET", "/stream?chunks=3") as response:
            assert response.status_code == 200
            pieces = response.aiter_raw()
            async with asyncio.timeout(5.0):
                first = await anext(pieces)
            sent_by_then = web.chunks_sent
            web.release.set()
            rest = b"".join([piece async for piece in pieces])
        return first, sent_by_then, rest

    first, sent_by_then, rest = plane.run(main())

    assert sent_by_then == 1  # the backend was still holding the other chunks
    assert first + rest == b"chunk 0\nchunk 1\nchunk 2\n"
    assert b"chunk 0\n".startswith(first)


# --- sleeping pools ---


def test_a_sleeping_pool_holds_requests_until_it_has_a_backend(plane: Harness) -> None:
    async def main() -> tuple[list[tuple[int, str]], int, set[str]]:
        (web,) = await plane.backends("web")
        await plane.apply(Route("/", "sleepy"), Pool("sleepy", wake=True))
        async with asyncio.TaskGroup() as tasks:
            held = [tasks.create_task(plane.get(f"/held/{i}")) for i in range(20)]
            await plane.woken.until(20)  # called for every request held
            assert [task for task in held if task.done()] == []
            await plane.apply(Route("/", "sleepy"), pool("sleepy", web, wake=True))
        answers = [(task.result().status_code, echoed(task.result())["target"]) for task in held]
        return answers, web.handled, set(plane.woken.names)

    answers, handled, woken = plane.run(main())

    assert answers == [(200, f"/held/{i}") for i in range(20)]
    assert handled == 20  # each request once
    assert woken == {"sleepy"}


@pytest.mark.timeouts(wake=0.5)
def test_a_sleeping_pool_that_does_not_wake_answers_503_after_the_wake_timeout(
    plane: Harness,
) -> None:
    async def main() -> tuple[list[int], float]:
        await plane.apply(Route("/", "sleepy"), Pool("sleepy", wake=True))
        loop = asyncio.get_running_loop()
        started = loop.time()
        responses = await asyncio.gather(*(plane.get(f"/held/{i}") for i in range(5)))
        return [r.status_code for r in responses], loop.time() - started

    statuses, elapsed = plane.run(main())

    assert statuses == [503] * 5
    assert 0.45 <= elapsed < 5.0
    assert set(plane.woken.names) == {"sleepy"}


# --- idle ---


def test_idle_counts_from_a_pool_last_request_or_its_appearance(plane: Harness) -> None:
    async def main() -> dict[str, float]:
        a, b, c = await plane.backends("a", "b", "c")
        items = [
            Route("/", "a", host="a.localhost"),
            Route("/", "b", host="b.localhost"),
            pool("a", a),
            pool("b", b),
        ]
        await plane.apply(*items)

        async def both_idle() -> bool:
            return min((await plane.plane.idle()).values()) >= 1.0

        await eventually(both_idle)
        assert (await plane.get("/", host="a.localhost")).status_code == 200
        await plane.apply(*items, pool("c", c))  # a new pool, which no route names yet
        return dict(await plane.plane.idle())

    idle = plane.run(main())

    assert set(idle) == {"a", "b", "c"}
    assert idle["a"] < 1.0 <= idle["b"]
    assert idle["c"] < 1.0
