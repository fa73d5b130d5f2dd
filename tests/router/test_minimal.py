"""The minimal router against real loopback backends and raw-socket clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from terrace.router.minimal import Connector, MinimalRouter, Route

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
GUARD = 20.0  # seconds: fails a hung test; never used to wait for something to happen


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` in a fresh loop; fail on errors the loop reports and on tasks left running."""
    errors: list[dict[str, Any]] = []

    async def checked() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        async with asyncio.timeout(GUARD):
            result = await main
        assert asyncio.all_tasks() - {asyncio.current_task()} == set()
        return result

    result = asyncio.run(checked())
    assert errors == []
    return result


class Loopback:
    """A TCP server on 127.0.0.1; its connection tasks are cancelled and awaited on exit."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def __aenter__(self) -> Loopback:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
                await self._handle(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._tasks.discard(task)


async def read_request(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Read one HTTP/1.x request (Content-Length or chunked body) into a JSON-able dict."""
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    method, target, version = request_line.split(" ")
    headers = [line.split(": ", 1) for line in lines]
    names = {name.lower(): value for name, value in headers}
    if "content-length" in names:
        body = await reader.readexactly(int(names["content-length"]))
    elif names.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readline() == b"\r\n"  # no trailers
    else:
        body = b""
    return {
        "method": method,
        "target": target,
        "version": version,
        "headers": headers,
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


def echo(
    name: str,
    *,
    received: asyncio.Event | None = None,
    hold: asyncio.Event | None = None,
    read_to_eof: bool = False,
) -> Handler:
    """A backend answering with its name and the request it saw, as JSON.

    ``received`` is set once the request is read; the answer waits for ``hold``; with
    ``read_to_eof`` the backend reads until the router half-closes before answering.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if received is not None:
            received.set()
        if read_to_eof:
            request["after_body"] = (await reader.read()).decode()
        if hold is not None:
            await hold.wait()
        body = json.dumps({"backend": name, **request}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    return handle


def connect_to(ports: dict[Hashable, int]) -> Connector:
    async def connect(key: Hashable) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", ports[key])

    return connect


@contextlib.asynccontextmanager
async def proxy(
    routes: Iterable[Route], connect: Connector, **options: float
) -> AsyncIterator[tuple[MinimalRouter, int]]:
    router = MinimalRouter(connect, **options)
    router.set_routes(routes)
    server = await router.start("127.0.0.1", 0)
    try:
        yield router, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header_names(self) -> list[str]:
        return [name.lower() for name, _ in self.json()["headers"]]

    def sent(self) -> dict[str, str]:
        """The headers the backend received, by lower-case name."""
        return {name.lower(): value for name, value in self.json()["headers"]}


def parse_response(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    return Response(int(status_line.split(" ")[1]), headers, body)


def request(
    target: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    fields = {"Host": "router.test", **(headers or {})}
    if body:
        fields["Content-Length"] = str(len(body))
    lines = [f"{method} {target} {version}", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def send(port: int, *pieces: bytes, eof: bool = True) -> Response:
    """Send ``pieces`` (draining after each), half-close unless ``eof=False``, read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        if eof:
            writer.write_eof()
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return parse_response(data)


def assert_error(response: Response, status: int) -> None:
    assert response.status == status
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert int(response.headers["content-length"]) == len(response.body)


ROUTES = [Route("/", "root"), Route("/api", "api"), Route("/api/admin", "admin")]


async def through_three_backends(routes: list[Route], *raw: bytes, eof: bool = True) -> Response:
    """Send ``raw`` through a router over backends named root, api and admin."""
    async with (
        Loopback(echo("root")) as root,
        Loopback(echo("api")) as api,
        Loopback(echo("admin")) as admin,
    ):
        ports: dict[Hashable, int] = {"root": root.port, "api": api.port, "admin": admin.port}
        async with proxy(routes, connect_to(ports)) as (_, port):
            return await send(port, *raw, eof=eof)


@pytest.mark.parametrize(
    ("target", "backend"),
    [
        ("/", "root"),
        ("/apix", "root"),
        ("/apix/admin", "root"),
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/users", "api"),
        ("/api?q=1", "api"),
        ("/api/adminx", "api"),
        ("/api/admin", "admin"),
        ("/api/admin/", "admin"),
        ("/api/admin/users?page=2", "admin"),
    ],
)
def test_longest_prefix_wins_on_segment_boundaries(target: str, backend: str) -> None:
    response = run(through_three_backends(ROUTES, request(target)))

    assert response.status == 200
    assert (response.json()["backend"], response.json()["target"]) == (backend, target)
    assert "x-forwarded-prefix" not in response.sent()


@pytest.mark.parametrize(
    ("target", "backend", "forwarded", "prefix"),
    [
        ("/api/users?x=1&y=2", "api", "/users?x=1&y=2", "/api"),
        ("/api/users/", "api", "/users/", "/api"),
        ("/api", "api", "/", "/api"),
        ("/api/", "api", "/", "/api"),
        ("/api?q=1", "api", "/?q=1", "/api"),
        ("/api/admin/x?y", "admin", "/x?y", "/api/admin"),
        ("/other?z", "root", "/other?z", None),  # stripping "/" changes nothing
    ],
)
def test_strip_removes_the_prefix_and_keeps_the_query(
    target: str, backend: str, forwarded: str, prefix: str | None
) -> None:
    routes = [Route(route.prefix, route.upstream, strip=True) for route in ROUTES]
    response = run(through_three_backends(routes, request(target)))

    assert (response.json()["backend"], response.json()["target"]) == (backend, forwarded)
    assert response.sent().get("x-forwarded-prefix") == prefix


def test_forwarded_headers_are_set_and_hop_by_hop_headers_dropped() -> None:
    client_headers = {
        "Host": "shop.example:8080",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "spoofed.example",
        "X-Forwarded-Prefix": "/spoofed",
        "Connection": "keep-alive",
        "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive",
        "X-Custom": "kept as is",
    }
    response = run(through_three_backends(ROUTES, request("/", headers=client_headers)))

    sent = response.sent()
    request_id = sent.pop("x-request-id")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert sent == {
        "host": "shop.example:8080",
        "x-custom": "kept as is",
        "x-forwarded-for": "203.0.113.7, 127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "shop.example:8080",
        "connection": "close",
    }
    assert len(response.header_names()) == len(set(response.header_names()))


def test_a_request_id_sent_by_the_client_is_kept_and_others_are_generated() -> None:
    async def main() -> list[Response]:
        async with (
            Loopback(echo("root")) as root,
            proxy([Route("/", "root")], connect_to({"root": root.port})) as (_, port),
        ):
            return [
                await send(port, request("/", headers={"X-Request-Id": "abc-123"})),
                await send(port, request("/")),
                await send(port, request("/")),
            ]

    kept, first, second = run(main())

    assert kept.header_names().count("x-request-id") == 1
    assert kept.sent()["x-request-id"] == "abc-123"
    assert first.sent()["x-request-id"] != second.sent()["x-request-id"]


def test_http_1_0_requests_are_forwarded_as_http_1_0() -> None:
    response = run(through_three_backends(ROUTES, b"GET /api/x HTTP/1.0\r\n\r\n"))

    assert (response.json()["version"], response.json()["target"]) == ("HTTP/1.0", "/api/x")
    assert "host" not in response.sent()
    assert "x-forwarded-host" not in response.sent()


@pytest.mark.parametrize(
    "raw",
    [
        b"\r\n\r\nGET /api HTTP/1.1\r\nHost: a\r\n\r\n",  # empty lines before the request line
        b"GET /api HTTP/1.1\nHost: a\n\n",  # bare line feeds
    ],
    ids=["leading-empty-lines", "bare-lf"],
)
def test_lenient_heads_are_accepted(raw: bytes) -> None:
    response = run(through_three_backends(ROUTES, raw))

    assert (response.status, response.json()["backend"]) == (200, "api")


def test_a_1_mib_body_arrives_intact() -> None:
    body = random.Random(1).randbytes(1 << 20)
    response = run(through_three_backends(ROUTES, request("/api", method="POST", body=body)))

    assert response.json()["method"] == "POST"
    assert response.json()["body_length"] == len(body)
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_chunked_body_arrives_intact() -> None:
    pieces = [b"hello ", b"chunked ", random.Random(2).randbytes(100_000), b"world"]
    head = request("/api", method="PUT", headers={"Transfer-Encoding": "chunked"})
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces]
    response = run(through_three_backends(ROUTES, head, *chunks, b"0\r\n\r\n"))

    assert response.json()["method"] == "PUT"
    assert response.json()["body_length"] == sum(map(len, pieces))
    assert response.json()["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_the_client_half_closing_reaches_the_upstream_and_the_response_still_arrives() -> None:
    async def main() -> Response:
        async with (
            Loopback(echo("root", read_to_eof=True)) as root,
            proxy([Route("/", "root")], connect_to({"root": root.port})) as (_, port),
        ):
            return await send(port, request("/", method="POST", body=b"abc"), eof=True)

    response = run(main())

    assert response.status == 200
    assert response.json()["after_body"] == ""
    assert response.json()["body_length"] == 3


def test_a_client_that_keeps_its_connection_open_gets_the_response_and_eof() -> None:
    response = run(through_three_backends(ROUTES, request("/api"), eof=False))

    assert (response.status, response.json()["backend"]) == (200, "api")


def test_a_response_is_streamed_as_the_backend_writes_it() -> None:
    async def main() -> tuple[bytes, bytes]:
        go_on = asyncio.Event()

        async def streaming(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst\n")
            await writer.drain()
            await go_on.wait()
            writer.write(b"second\n")
            await writer.drain()

        async with (
            Loopback(streaming) as backend,
            proxy([Route("/", "b")], connect_to({"b": backend.port})) as (_, port),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request("/"))
            start = await reader.readuntil(b"first\n")  # before the backend has finished
            go_on.set()
            rest = await reader.read()
            writer.close()
            await writer.wait_closed()
        return start, rest

    start, rest = run(main())

    assert start == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst\n"
    assert rest == b"second\n"


def test_no_route_is_a_404_naming_the_path() -> None:
    response = run(through_three_backends([Route("/api", "api")], request("/nothing/here?x=1")))

    assert_error(response, 404)
    assert response.body == b"no route for /nothing/here\n"


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def never_connects(key: Hashable) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "connector",
    [connect_to({"api": unused_port()}), never_connects],
    ids=["refused", "timeout"],
)
def test_an_unreachable_upstream_is_a_502_naming_the_prefix(connector: Connector) -> None:
    async def main() -> Response:
        routes = [Route("/api", "api")]
        async with proxy(routes, connector, connect_timeout=0.05) as (_, port):
            return await send(port, request("/api/x", method="POST", body=b"x" * 1000))

    response = run(main())

    assert_error(response, 502)
    assert b"/api" in response.body
    assert b"127.0.0.1" not in response.body


def test_an_upstream_closing_without_an_answer_is_a_502() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def main() -> Response:
        async with (
            Loopback(hang_up) as backend,
            proxy([Route("/", "b")], connect_to({"b": backend.port})) as (_, port),
        ):
            return await send(port, request("/"))

    response = run(main())

    assert_error(response, 502)


def test_set_routes_swaps_the_table_while_requests_are_in_flight() -> None:
    async def main() -> tuple[Response, Response, tuple[Route, ...]]:
        received, hold = asyncio.Event(), asyncio.Event()
        async with (
            Loopback(echo("old", received=received, hold=hold)) as old,
            Loopback(echo("new")) as new,
        ):
            connect = connect_to({"old": old.port, "new": new.port})
            async with proxy([Route("/", "old")], connect) as (router, port):
                first = asyncio.create_task(send(port, request("/a")))
                await received.wait()
                router.set_routes([Route("/", "new")])
                second = await send(port, request("/b"))
                hold.set()
                return await first, second, router.routes

    first, second, routes = run(main())

    assert (first.json()["backend"], first.json()["target"]) == ("old", "/a")
    assert (second.json()["backend"], second.json()["target"]) == ("new", "/b")
    assert routes == (Route("/", "new"),)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
        (b"GET /\r\nHost: a\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Fill: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-Fill: aaaaaaaaaa\r\n" * 4000 + b"\r\n", 431),
    ],
    ids=[
        "no-target",
        "four-parts",
        "no-version",
        "bad-method",
        "absolute-form",
        "no-colon",
        "space-before-colon",
        "obs-fold",
        "nul-in-value",
        "cr-in-value",
        "no-host",
        "two-hosts",
        "length-and-chunked",
        "two-lengths",
        "negative-length",
        "not-chunked",
        "incomplete",
        "http-2",
        "long-request-line",
        "long-header",
        "many-headers",
    ],
)
def test_a_malformed_head_is_refused_and_the_server_carries_on(raw: bytes, status: int) -> None:
    async def main() -> tuple[Response, Response]:
        async with (
            Loopback(echo("root")) as root,
            proxy([Route("/", "root")], connect_to({"root": root.port})) as (_, port),
        ):
            return await send(port, raw), await send(port, request("/"))

    refused, afterwards = run(main())

    assert_error(refused, status)
    assert afterwards.status == 200


def test_a_head_that_does_not_arrive_in_time_is_a_408() -> None:
    async def main() -> Response:
        async with proxy([], connect_to({}), head_timeout=0.05) as (_, port):
            return await send(port, b"GET / HTTP/1.1\r\n", eof=False)

    assert_error(run(main()), 408)


def test_closing_the_server_cancels_and_closes_its_connections() -> None:
    def router_tasks() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "terrace.router.connection"]

    async def main() -> tuple[list[bytes], int, int]:
        received, hold = asyncio.Event(), asyncio.Event()
        async with Loopback(echo("slow", received=received, hold=hold)) as slow:
            router = MinimalRouter(connect_to({"slow": slow.port}))
            router.set_routes([Route("/", "slow")])
            server = await router.start("127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            idle = await asyncio.open_connection("127.0.0.1", port)
            idle[1].write(b"GET / HT")  # the head is never finished
            busy = await asyncio.open_connection("127.0.0.1", port)
            busy[1].write(request("/"))  # the backend never answers
            await received.wait()
            running = len(router_tasks())

            server.close()
            await server.wait_closed()

            left = len(router_tasks())
            seen = []
            for reader, writer in (idle, busy):
                with contextlib.suppress(ConnectionResetError):
                    seen.append(await reader.read())
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            hold.set()
        return seen, running, left

    seen, running, left = run(main())

    assert (running, left) == (2, 0)
    assert all(data == b"" for data in seen)


def test_route_prefixes_are_validated() -> None:
    for prefix in ["api", "/api/", "/api?x", "/a b", ""]:
        with pytest.raises(ValueError, match="route prefix"):
            Route(prefix, "x")
    router = MinimalRouter(connect_to({}))
    with pytest.raises(ValueError, match="more than one route"):
        router.set_routes([Route("/a", 1), Route("/a", 2)])
    assert router.routes == ()
    router.set_routes([Route("/", 1), Route("/a/b", 2), Route("/a", 3)])
    assert router.routes == (Route("/", 1), Route("/a/b", 2), Route("/a", 3))
    assert router.match("/a/b/c") == Route("/a/b", 2)
