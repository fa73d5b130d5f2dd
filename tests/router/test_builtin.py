"""What only the builtin plane does, or does its own way, over real loopback connections.

The behaviour every plane shares is in ``test_contract.py``. Here: how malformed and slow heads
are refused, pipelining and HTTP/1.0 clients, framing (no length, 1xx, HEAD, hop-by-hop
headers), upstream connection reuse and the retry rule, balancing, drain, holding requests for
a sleeping pool, ``pool_header`` mode and memory use with big bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from terrace.router.builtin import BuiltinPlane
from terrace.router.plane import Timeouts
from terrace.router.table import Backend, Balance, Pool, Route
from tests.router.backends import GUARD, REQUEST_ID, until, upstreams
from tests.router.conftest import RawConnection, RawResponse, Woken, pool, table

T = TypeVar("T")
TIMEOUTS = Timeouts(connect=2.0, head=5.0, response=5.0, tunnel=10.0, wake=5.0)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


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


@contextlib.asynccontextmanager
async def serving(
    *items: Route | Pool, timeouts: Timeouts = TIMEOUTS, **options: Any
) -> AsyncIterator[tuple[BuiltinPlane, int]]:
    """A builtin plane on 127.0.0.1 following ``items`` (none: no table yet); closed after."""
    plane = BuiltinPlane(timeouts=timeouts, **options)
    port = await plane.start("127.0.0.1", 0)
    try:
        if items:
            await plane.apply(table(*items))
        yield plane, port
    finally:
        await plane.close()


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[RawConnection]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connection = RawConnection(reader, writer)
    try:
        yield connection
    finally:
        await connection.close()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on a new connection (no EOF) and read until the plane closes it."""
    async with client(port) as connection:
        connection.writer.write(raw)
        return await connection.reader.read()


def parse(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [[name, value.strip()] for name, value in (line.split(":", 1) for line in lines)]
    return RawResponse(int(status_line.split(" ")[1]), headers, body)


def sent(response: RawResponse) -> dict[str, str]:
    """The headers the echo backend received, by lower-case name."""
    return {name.lower(): value for name, value in json.loads(response.body)["headers"]}


class Scripted:
    """A backend whose ``n``-th connection (from 0) runs ``handle(reader, writer, n)``."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        self._tasks: set[asyncio.Task[Any]] = set()
        self.accepted = 0
        self.port = 0

    def backend(self, id: str) -> Backend:
        return Backend(id, "127.0.0.1", self.port)

    async def __aenter__(self) -> Scripted:
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
        index, self.accepted = self.accepted, self.accepted + 1
        try:
            with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
                await self._handle(reader, writer, index)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            self._tasks.discard(task)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One request (Content-Length body only): its request line, headers and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    fields = (line.split(":", 1) for line in lines)
    headers = {name.lower(): value.strip() for name, value in fields}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return request_line, headers, body


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- heads ---


MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
    (b"GET /\r\nHost: a\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Fill: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Fill: aaaaaaaaaa\r\n" * 4000 + b"\r\n", 431),
]
MALFORMED_IDS = [
    "no-target",
    "four-parts",
    "no-version",
    "bad-method",
    "absolute-form",
    "asterisk-form",
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
    "chunked-http-1.0",
    "http-2",
    "http-1.2",
    "long-request-line",
    "long-header",
    "many-headers",
]


@pytest.mark.parametrize(("raw", "status"), MALFORMED, ids=MALFORMED_IDS)
def test_a_malformed_head_is_refused_and_the_plane_carries_on(raw: bytes, status: int) -> None:
    async def main() -> tuple[RawResponse, int, int]:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
        ):
            refused = parse(await exchange(port, raw))
            async with client(port) as connection:
                after = await connection.request("/", host="x")
            return refused, after.status, web.handled

    refused, after, handled = run(main())

    assert refused.status == status
    assert refused.header("connection") == "close"
    assert refused.header("content-type") == "text/plain; charset=utf-8"
    assert int(refused.header("content-length") or -1) == len(refused.body)
    assert REQUEST_ID.fullmatch(refused.header("x-request-id") or "")
    assert (after, handled) == (200, 1)  # the malformed request never reached the backend


def test_a_head_cut_short_by_eof_is_a_400() -> None:
    async def main() -> RawResponse:
        async with serving() as (_, port), client(port) as connection:
            connection.writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
            connection.writer.write_eof()
            return parse(await connection.reader.read())

    assert run(main()).status == 400


def test_empty_lines_before_a_request_are_ignored() -> None:
    async def main() -> int:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
            client(port) as connection,
        ):
            connection.writer.write(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            return (await connection.response()).status

    assert run(main()) == 200


def test_a_slow_head_gets_408_and_an_idle_connection_is_closed_quietly() -> None:
    async def main() -> tuple[bytes, bytes, RawResponse]:
        timeouts = Timeouts(head=0.2)
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web), timeouts=timeouts) as (_, port),
        ):
            idle = await exchange(port, b"")
            async with client(port) as connection:
                assert (await connection.request("/", host="x")).status == 200
                after_a_request = await connection.reader.read()  # idles, then is closed
            slow = parse(await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n"))
            return idle, after_a_request, slow

    idle, after_a_request, slow = run(main())

    assert (idle, after_a_request) == (b"", b"")
    assert slow.status == 408
    assert slow.header("connection") == "close"


def test_pipelined_requests_are_answered_in_order() -> None:
    async def main() -> list[str]:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
            client(port) as connection,
        ):
            body = b"x" * 1000
            connection.writer.write(
                b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"
                + body
                + b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            responses = [await connection.response() for _ in range(3)]
            return [json.loads(response.body)["target"] for response in responses]

    assert run(main()) == ["/1", "/2", "/3"]


def test_own_answers_keep_the_client_connection_open() -> None:
    async def main() -> list[tuple[int, str | None]]:
        routes = [
            Route("/", "web"),
            Route("/empty", "empty"),
            Route("/a", "web", host="known.test"),
        ]
        async with (
            upstreams("web") as (web,),
            serving(*routes, pool("web", web), Pool("empty")) as (_, port),
            client(port) as connection,
        ):
            answers = []
            for target, host in [("/empty", "x"), ("/", "x"), ("/b", "known.test"), ("/", "x")]:
                response = await connection.request(target, host=host)
                answers.append((response.status, response.header("connection")))
            return answers

    assert run(main()) == [(503, None), (200, None), (404, None), (200, None)]


# --- HTTP/1.0 clients and framing ---


def test_an_http_1_0_client_is_answered_with_keep_alive_only_when_it_asks() -> None:
    async def main() -> tuple[RawResponse, list[RawResponse], str]:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
        ):
            closing = parse(await exchange(port, b"GET /a HTTP/1.0\r\n\r\n"))
            async with client(port) as connection:
                kept = []
                for target in [b"/b", b"/c"]:
                    connection.writer.write(
                        b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % target
                    )
                    kept.append(await connection.response())
            return closing, kept, json.loads(closing.body)["version"]

    closing, kept, version = run(main())

    assert (closing.status, closing.header("connection"), version) == (200, "close", "1.0")
    assert [(r.status, r.header("connection")) for r in kept] == [(200, "keep-alive")] * 2


def test_a_chunked_response_reaches_an_http_1_0_client_unframed() -> None:
    async def main() -> RawResponse:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
        ):
            web.release.set()
            return parse(await exchange(port, b"GET /stream HTTP/1.0\r\n\r\n"))

    response = run(main())

    assert response.body == b"chunk 0\nchunk 1\nchunk 2\n"
    assert response.header("transfer-encoding") is None
    assert response.header("connection") == "close"


def test_a_response_without_length_ends_with_the_backend_eof_and_closes_the_client() -> None:
    async def old_server(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the end")

    async def main() -> RawResponse:
        async with (
            Scripted(old_server) as old,
            serving(Route("/", "old"), Pool("old", (old.backend("old"),))) as (_, port),
            client(port) as connection,
        ):
            return await connection.request("/", host="x")  # reads to EOF: no length

    response = run(main())

    assert (response.status, response.body) == (200, b"until the end")
    assert response.header("connection") == "close"


def test_hop_by_hop_response_headers_are_removed_and_the_body_rechunked() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 201 Made\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
            b"X-Secret: 1\r\nX-Kept: yes\r\nX-Request-Id: theirs\r\n"
            b"Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async def main() -> RawResponse:
        async with (
            Scripted(chatty) as backend,
            serving(Route("/", "b"), Pool("b", (backend.backend("b"),))) as (_, port),
            client(port) as connection,
        ):
            return await connection.request("/", host="x", headers={"X-Request-Id": "mine"})

    response = run(main())

    names = sorted(name.lower() for name, _ in response.headers)
    assert (response.status, response.body) == (201, b"abcde")
    assert names == ["transfer-encoding", "x-kept", "x-request-id"]
    # the backend's own X-Request-Id passes as it sent it (the plane adds none to a response)
    assert (response.header("transfer-encoding"), response.header("x-request-id")) == (
        "chunked",
        "theirs",
    )


def test_hop_by_hop_request_headers_are_removed() -> None:
    async def main() -> dict[str, str]:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
            client(port) as connection,
        ):
            headers = {
                "Connection": "keep-alive, X-Private",
                "X-Private": "1",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Connection": "keep-alive",
                "X-Kept": "yes",
            }
            return sent(await connection.request("/", host="x", headers=headers))

    received = run(main())

    assert set(received) == {
        "host",
        "x-kept",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-request-id",
    }


def test_head_answers_have_no_body_and_the_backend_connection_is_reused() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            request_line = (await read_request(reader))[0]
            body = b"" if request_line.startswith("HEAD ") else b"hello"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
            await writer.drain()

    async def main() -> tuple[list[RawResponse], int]:
        async with (
            Scripted(handle) as backend,
            serving(Route("/", "b"), Pool("b", (backend.backend("b"),))) as (_, port),
            client(port) as connection,
        ):
            responses = [
                await connection.request("/a", host="x", method="HEAD"),
                await connection.request("/b", host="x"),
                await connection.request("/c", host="x", method="HEAD"),
                await connection.request("/d", host="x"),
            ]
            return responses, backend.accepted

    responses, accepted = run(main())

    assert [(r.status, r.header("content-length"), r.body) for r in responses] == [
        (200, "5", b""),
        (200, "5", b"hello"),
        (200, "5", b""),
        (200, "5", b"hello"),
    ]
    assert accepted == 1


def test_a_100_continue_is_passed_on_before_the_body_is_sent() -> None:
    async def continuing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Expect: 100-continue" in head
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
        await writer.drain()
        await reader.read()

    async def main() -> tuple[bytes, RawResponse]:
        async with (
            Scripted(continuing) as backend,
            serving(Route("/", "b"), Pool("b", (backend.backend("b"),))) as (_, port),
            client(port) as connection,
        ):
            connection.writer.write(
                b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
            )
            interim = await connection.reader.readuntil(b"\r\n\r\n")  # before any body byte
            connection.writer.write(b"hello")
            return interim, await connection.response()

    interim, response = run(main())

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (response.status, response.body) == (200, b"hello")


def test_a_client_that_leaves_during_a_response_frees_the_backend_connection() -> None:
    async def main() -> int:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
        ):
            async with client(port) as connection:
                connection.writer.write(b"GET /big?bytes=50000000 HTTP/1.1\r\nHost: a\r\n\r\n")
                await connection.reader.readexactly(100_000)
            await web.until(lambda: web.connections == 0)  # closed by the plane
            return web.handled

    assert run(main()) == 0  # the backend did not get to send it all


def test_a_request_body_that_stops_coming_gets_408() -> None:
    async def main() -> tuple[RawResponse, int]:
        timeouts = Timeouts(response=0.3)
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web), timeouts=timeouts) as (_, port),
            client(port) as connection,
        ):
            connection.writer.write(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n1234")
            response = await connection.response()
            await web.until(lambda: web.connections == 0)  # the backend's connection is closed
            return response, web.body_received

    response, received = run(main())

    assert (response.status, response.header("connection")) == (408, "close")
    assert received == 4


def test_a_malformed_chunked_body_gets_400() -> None:
    async def main() -> RawResponse:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
            client(port) as connection,
        ):
            connection.writer.write(
                b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
            )
            await web.until(lambda: web.body_received == 3)  # streamed as it came
            connection.writer.write(b"zz\r\n")
            return await connection.response()

    assert run(main()).status == 400


def test_a_refused_upgrade_is_answered_and_the_client_connection_closed() -> None:
    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()
        await reader.read()

    async def main() -> tuple[RawResponse, bool]:
        async with (
            Scripted(refuses) as backend,
            serving(Route("/", "b"), Pool("b", (backend.backend("b"),))) as (_, port),
            client(port) as connection,
        ):
            headers = {"Connection": "Upgrade", "Upgrade": "websocket"}
            response = await connection.request("/ws", host="x", headers=headers)
            return response, await connection.at_eof()

    response, closed = run(main())

    assert (response.status, response.body, response.header("connection")) == (426, b"no", "close")
    assert closed


def test_a_backend_slow_to_answer_on_a_reused_connection_gets_504() -> None:
    async def main() -> tuple[int, RawResponse, bool, int]:
        timeouts = Timeouts(response=0.3)
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web), timeouts=timeouts) as (_, port),
            client(port) as connection,
        ):
            first = (await connection.request("/", host="x")).status
            timed_out = await connection.request("/slow", host="x")
            closed = await connection.at_eof()
            web.release.set()  # its answer finds the connection closed
            await web.until(lambda: web.connections == 0)
            return first, timed_out, closed, web.accepted

    first, timed_out, closed, accepted = run(main())

    assert (first, timed_out.status, timed_out.header("connection")) == (200, 504, "close")
    assert (closed, accepted) == (True, 1)


# --- upstream connections ---


def test_client_connections_one_after_another_share_one_backend_connection() -> None:
    async def main() -> tuple[list[int], int]:
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "web"), pool("web", web)) as (_, port),
        ):
            statuses = []
            for i in range(5):
                async with client(port) as connection:
                    for j in range(3):
                        statuses.append((await connection.request(f"/{i}/{j}", host="x")).status)
            return statuses, web.accepted

    assert run(main()) == ([200] * 15, 1)


def closes_its_first_connection_on_the_second_request(
    seen: list[tuple[int, str, bytes]],
) -> Handler:
    """A backend that answers the first request of its first connection, then closes that
    connection on reading the second (as a keep-alive timeout racing a new request does)."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        while True:
            request_line, _, body = await read_request(reader)
            seen.append((index, request_line, body))
            if index == 0 and len(seen) > 1:
                return  # closes without answering
            writer.write(OK)
            await writer.drain()

    return handle


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_an_idempotent_request_is_sent_again_when_a_reused_connection_was_stale(
    method: str,
) -> None:
    seen: list[tuple[int, str, bytes]] = []

    async def main() -> tuple[int, int]:
        async with (
            Scripted(closes_its_first_connection_on_the_second_request(seen)) as backend,
            serving(Route("/", "b"), Pool("b", (backend.backend("b"),))) as (_, port),
            client(port) as connection,
        ):
            assert (await connection.request("/first", host="x")).status == 200
            body = b"data" if method == "PUT" else b""
            retried = await connection.request("/again", host="x", method=method, body=body)
            return retried.status, backend.accepted

    status, accepted = run(main())

    body = b"data" if method == "PUT" else b""
    assert (status, accepted) == (200, 2)
    assert seen == [
        (0, "GET /first HTTP/1.1", b""),
        (0, f"{method} /again HTTP/1.1", body),
        (1, f"{method} /again HTTP/1.1", body),  # once more, on a new connection
    ]


def test_a_non_idempotent_request_is_not_sent_again() -> None:
    seen: list[tuple[int, str, bytes]] = []

    async def main() -> RawResponse:
        async with (
            Scripted(closes_its_first_connection_on_the_second_request(seen)) as backend,
            serving(Route("/", "b"), Pool("b", (backend.backend("b"),))) as (_, port),
            client(port) as connection,
        ):
            assert (await connection.request("/first", host="x")).status == 200
            return await connection.request("/pay", host="x", method="POST", body=b"1 EUR")

    response = run(main())

    assert response.status == 502
    assert seen == [(0, "GET /first HTTP/1.1", b""), (0, "POST /pay HTTP/1.1", b"1 EUR")]


def test_a_request_whose_body_was_streamed_is_not_sent_again() -> None:
    seen: list[tuple[int, str, bytes]] = []

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        request_line, _, _ = await read_request(reader)
        seen.append((index, request_line, b""))
        writer.write(OK)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")  # the second request: closes on its head
        seen.append((index, head.split(b"\r\n")[0].decode(), b""))

    async def main() -> RawResponse:
        async with (
            Scripted(handle) as backend,
            serving(Route("/", "b"), Pool("b", (backend.backend("b"),))) as (_, port),
            client(port) as connection,
        ):
            assert (await connection.request("/first", host="x")).status == 200
            connection.writer.write(
                b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1234"
            )
            return await connection.response()  # the rest of the body never comes

    response = run(main())

    assert response.status == 502
    assert seen == [(0, "GET /first HTTP/1.1", b""), (0, "PUT /big HTTP/1.1", b"")]


def test_idle_connections_to_a_backend_that_leaves_the_table_are_closed() -> None:
    async def main() -> int:
        async with (
            upstreams("a", "b") as (a, b),
            serving(Route("/", "web"), pool("web", a)) as (plane, port),
            client(port) as connection,
        ):
            assert (await connection.request("/", host="x")).status == 200
            assert a.connections == 1  # kept for the next request
            await plane.apply(table(Route("/", "web"), pool("web", b)))
            await a.until(lambda: a.connections == 0)
            return len(sent(await connection.request("/", host="x")))

    assert run(main()) > 0


# --- balancing, drain, sleeping pools ---


def test_least_conn_sends_to_the_backend_with_fewest_requests_in_flight() -> None:
    async def main() -> tuple[list[str], list[str]]:
        async with (
            upstreams("a", "b", "c") as members,
            serving(Route("/", "web"), pool("web", *members, balance=Balance.LEAST_CONN)) as (
                _,
                port,
            ),
            client(port) as quick,
        ):
            a, b, c = members
            held = []
            for count in range(1, 5):  # a, b, c, then a again (all tied, a's turn)
                connection = await asyncio.open_connection("127.0.0.1", port)
                connection[1].write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                held.append(connection)

                def holding_all(count: int = count) -> bool:
                    return sum(m.in_flight for m in members) == count

                await until(holding_all, *members)
            holding = [m.id for m in members for _ in range(m.in_flight)]
            b.release.set()  # now a holds 2, c 1, b none
            await b.until(lambda: b.in_flight == 0)
            chosen = []
            for i in range(3):
                response = await quick.request(f"/{i}", host="x")
                chosen.append(json.loads(response.body)["backend"])
            a.release.set()
            c.release.set()
            for reader, writer in held:
                await RawConnection(reader, writer).response()
                writer.close()
            return holding, chosen

    holding, chosen = run(main())

    assert holding == ["a", "a", "b", "c"]
    assert chosen == ["b", "b", "b"]


def test_drained_waits_for_the_requests_in_flight() -> None:
    async def main() -> tuple[bool, bool, int, str]:
        async with (
            upstreams("a", "b") as (a, b),
            serving(Route("/", "web"), pool("web", a)) as (plane, port),
            client(port) as connection,
        ):
            connection.writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await a.until(lambda: a.in_flight == 1)
            await plane.apply(table(Route("/", "web"), pool("web", b)))
            too_soon = await plane.drained(["a"], timeout=0.05)
            waiting = asyncio.create_task(plane.drained(["a"], timeout=GUARD))
            a.release.set()
            finished = (await connection.response()).status
            drained = await waiting
            await a.until(lambda: a.connections == 0)  # not kept: a left the table
            after = json.loads((await connection.request("/", host="x")).body)["backend"]
            return too_soon, drained, finished, after

    assert run(main()) == (False, True, 200, "b")


def test_idle_connections_to_drained_backends_are_closed() -> None:
    async def main() -> int:
        async with (
            upstreams("a") as (a,),
            serving(Route("/", "web"), pool("web", a)) as (plane, port),
            client(port) as connection,
        ):
            assert (await connection.request("/", host="x")).status == 200
            assert a.connections == 1  # kept for the next request
            assert await plane.drained(["a"], timeout=GUARD)
            await a.until(lambda: a.connections == 0)
            return (await connection.request("/", host="x")).status

    assert run(main()) == 200  # a new connection, as a is still in the table


def test_drained_is_true_for_backends_never_seen() -> None:
    async def main() -> bool:
        async with serving() as (plane, _):
            return await plane.drained(["nobody"], timeout=0.01)

    assert run(main()) is True


def test_many_requests_held_for_a_sleeping_pool_are_each_forwarded_once() -> None:
    count = 60

    async def main() -> tuple[list[tuple[int, str]], int, list[str]]:
        woken = Woken()
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "sleepy"), Pool("sleepy", wake=True), on_wake=woken) as (
                plane,
                port,
            ),
        ):

            async def get(i: int) -> tuple[int, str]:
                async with client(port) as connection:
                    response = await connection.request(f"/held/{i}", host="x")
                    return response.status, json.loads(response.body)["target"]

            async with asyncio.TaskGroup() as tasks:
                held = [tasks.create_task(get(i)) for i in range(count)]
                await woken.until(count)
                assert web.accepted == 0
                await plane.apply(table(Route("/", "sleepy"), pool("sleepy", web, wake=True)))
            return [task.result() for task in held], web.handled, woken.names

    answers, handled, names = run(main())

    assert answers == [(200, f"/held/{i}") for i in range(count)]
    assert handled == count
    assert names == ["sleepy"] * count


def test_a_held_request_follows_the_table_that_woke_its_pool() -> None:
    async def main() -> tuple[int, str]:
        woken = Woken()
        async with (
            upstreams("web") as (web,),
            serving(Route("/", "sleepy"), Pool("sleepy", wake=True), on_wake=woken) as (
                plane,
                port,
            ),
            client(port) as connection,
        ):
            connection.writer.write(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
            await woken.until(1)
            await plane.apply(
                table(Route("/app", "sleepy", strip="/app"), pool("sleepy", web, wake=True))
            )
            response = await connection.response()
            return response.status, json.loads(response.body)["target"]

    assert run(main()) == (200, "/x")


# --- pool_header mode (the activator behind HAProxy) ---


def test_pool_header_mode_routes_by_the_header_only() -> None:
    async def main() -> tuple[list[int], RawResponse]:
        async with (
            upstreams("web") as (web,),
            serving(
                Route("/api", "web", strip="/api"), pool("web", web), pool_header="X-Terrace-Pool"
            ) as (_, port),
            client(port) as connection,
        ):
            misses = [
                (await connection.request("/api/x", host="x")).status,
                (
                    await connection.request("/api/x", host="x", headers={"X-Terrace-Pool": "no"})
                ).status,
            ]
            headers = {
                "x-terrace-pool": "web",
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "shop.example",
            }
            return misses, await connection.request("/api/x?y=1", host="x", headers=headers)

    misses, response = run(main())

    echo = json.loads(response.body)
    received = sent(response)
    assert misses == [404, 404]
    assert (response.status, echo["target"]) == (200, "/api/x?y=1")  # not stripped
    assert "x-terrace-pool" not in received
    assert {name: received[name] for name in received if name.startswith("x-forwarded")} == {
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "shop.example",
    }
    assert REQUEST_ID.fullmatch(received["x-request-id"])
    assert response.header("x-request-id") is None  # the app's response, as it sent it


def test_pool_header_mode_holds_requests_for_a_sleeping_pool() -> None:
    async def main() -> tuple[int, list[str]]:
        woken = Woken()
        async with (
            upstreams("web") as (web,),
            serving(Pool("sleepy", wake=True), pool_header="X-Pool", on_wake=woken) as (
                plane,
                port,
            ),
            client(port) as connection,
        ):
            connection.writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Pool: sleepy\r\n\r\n")
            await woken.until(1)
            await plane.apply(table(pool("sleepy", web, wake=True)))
            return (await connection.response()).status, woken.names

    assert run(main()) == (200, ["sleepy"])


# --- memory ---


def test_50_mb_bodies_stream_both_ways_in_bounded_memory() -> None:
    size = 50 * 1024 * 1024
    piece = bytes(range(256)) * 256  # 64 KiB

    async def sink_and_source(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        while length:
            length -= len(await reader.read(min(length, 1 << 16)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
        await reader.read()

    async def main() -> tuple[int, int]:
        async with (
            Scripted(sink_and_source) as backend,
            serving(Route("/", "b"), Pool("b", (backend.backend("b"),))) as (_, port),
            client(port) as connection,
        ):
            writer, reader = connection.writer, connection.reader
            writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // len(piece)):
                writer.write(piece)
                await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            received = 0
            while received < size:
                received += len(await reader.read(1 << 16))
            return received, tracemalloc.get_traced_memory()[1]

    tracemalloc.start()
    try:
        received, peak = run(main())
    finally:
        tracemalloc.stop()

    assert received == size
    assert peak < 8 * 1024 * 1024  # a few buffers, never a body
