"""Fixtures for the data-plane contract tests: each plane running, backends, clients.

The ``plane`` fixture runs one event loop (an :class:`asyncio.Runner`) for the whole test: the
plane starts on it before the test, the test's coroutines run on it (:meth:`Harness.run`), and
the plane, the backends and the client are closed on it after. The loop's error handler is
watched: an error a plane logs there (a task's exception never retrieved, ...) fails the test,
and so does a task still running once everything is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from terrace.router.plane import DataPlane, Timeouts
from terrace.router.planes import make_plane
from terrace.router.table import Balance, Pool, Route, RouteTable
from tests.router.backends import GUARD, Upstream, upstreams

T = TypeVar("T")

TEST_TIMEOUTS = Timeouts(connect=2.0, head=5.0, response=5.0, tunnel=10.0, wake=5.0)
"""Short enough that nothing in a test waits long; ``@pytest.mark.timeouts(...)`` changes some."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "timeouts(**fields): Timeouts fields for the test's plane (see TEST_TIMEOUTS)"
    )


def pool(
    name: str, *members: Upstream, balance: Balance = Balance.ROUND_ROBIN, wake: bool = False
) -> Pool:
    """A pool over running test backends."""
    return Pool(name, tuple(m.backend for m in members), balance, wake)


def table(*items: Route | Pool) -> RouteTable:
    """``table(Route("/", "web"), pool("web", a, b))``: routes and pools in any order."""
    return RouteTable(
        [item for item in items if isinstance(item, Route)],
        [item for item in items if isinstance(item, Pool)],
    )


def values(headers: list[list[str]], name: str) -> list[str]:
    """The values of every header line called ``name`` (lowercase), in order."""
    return [value for field, value in headers if field.lower() == name]


def joined(headers: list[list[str]], name: str) -> str | None:
    """The values of header ``name`` joined with ", " (one field, as RFC 9110 reads several
    lines of it); None when there is none."""
    found = values(headers, name)
    return ", ".join(found) if found else None


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = GUARD) -> None:
    """Poll the async predicate ``check`` until it holds (for state only the plane knows)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


class Woken:
    """The ``on_wake`` given to the plane: records every pool name it is called with."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, name: str) -> None:
        self.names.append(name)
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, count: int, *, timeout: float = GUARD) -> None:
        async with asyncio.timeout(timeout):
            while len(self.names) < count:
                await self._changed.wait()


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: list[list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return joined(self.headers, name)


class RawConnection:
    """One client connection, requests written and responses read by hand (HTTP/1.1)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(
        self,
        target: str,
        *,
        host: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> RawResponse:
        fields = {"Host": host, **(headers or {})}
        if body or method in {"POST", "PUT"}:
            fields["Content-Length"] = str(len(body))
        lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        return await self.response(head_only=method == "HEAD")

    async def response(self, *, head_only: bool = False) -> RawResponse:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = [line.split(":", 1) for line in lines]
        headers = [[name, value.strip()] for name, value in headers]
        response = RawResponse(int(status_line.split(" ")[1]), headers, b"")
        length = response.header("content-length")
        if head_only or response.status in {204, 304} or 100 <= response.status < 200:
            return response
        if length is not None:
            response.body = await self.reader.readexactly(int(length))
        elif (response.header("transfer-encoding") or "").lower() == "chunked":
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                response.body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            while await self.reader.readline() != b"\r\n":  # trailers
                pass
        else:
            response.body = await self.reader.read()
        return response

    async def at_eof(self) -> bool:
        """Whether the other side closed the connection (waits for it or for data)."""
        try:
            return await self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class Harness:
    """A plane listening on 127.0.0.1:``port``, its event loop, and the test's helpers."""

    def __init__(
        self, runner: asyncio.Runner, plane: DataPlane, timeouts: Timeouts, woken: Woken
    ) -> None:
        self.runner = runner
        self.plane = plane
        self.timeouts = timeouts
        self.woken = woken
        """Every call of the plane's ``on_wake``."""
        self.port = 0
        self.closed = False
        """Set by a test that closes the plane itself."""
        self._stack = contextlib.AsyncExitStack()
        self._client: httpx.AsyncClient | None = None

    @property
    def name(self) -> str:
        return self.plane.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` on the plane's loop (failing it after GUARD seconds)."""

        async def guarded() -> T:
            async with asyncio.timeout(GUARD):
                return await main

        return self.runner.run(guarded())

    async def backends(self, *ids: str) -> list[Upstream]:
        """Start backends named ``ids``; they stop after the test."""
        return await self._stack.enter_async_context(upstreams(*ids))

    async def apply(self, *items: Route | Pool) -> None:
        await self.plane.apply(table(*items))

    @property
    def client(self) -> httpx.AsyncClient:
        """A keep-alive httpx client for the plane (no retries, no redirects)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url,
                timeout=GUARD,
                transport=httpx.AsyncHTTPTransport(retries=0),
            )
        return self._client

    async def get(
        self, target: str, *, host: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        fields = dict(headers or {})
        if host is not None:
            fields["Host"] = host
        return await self.client.get(target, headers=fields)

    async def connect(self) -> RawConnection:
        """A raw connection to the plane; closed after the test."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        connection = RawConnection(reader, writer)
        self._stack.push_async_callback(connection.close)
        return connection

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if not self.closed:
            await self.plane.close()
        await self._stack.aclose()


@pytest.fixture(params=["builtin", "haproxy"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each data plane, started on 127.0.0.1:0 (with no table yet) and closed after the test.

    A plane that cannot run here (haproxy not installed) fails the test: CI installs it.
    """
    marker = request.node.get_closest_marker("timeouts")
    timeouts = dataclasses.replace(TEST_TIMEOUTS, **marker.kwargs) if marker else TEST_TIMEOUTS
    state_dir = tmp_path / f"{request.param}-state"
    state_dir.mkdir()
    with asyncio.Runner() as runner:
        errors: list[dict[str, Any]] = []
        runner.get_loop().set_exception_handler(lambda _, context: errors.append(context))
        woken = Woken()
        made = make_plane(request.param, state_dir=state_dir, timeouts=timeouts, on_wake=woken)
        harness = Harness(runner, made, timeouts, woken)
        harness.port = harness.run(made.start("127.0.0.1", 0))
        try:
            yield harness
        finally:
            harness.run(harness.aclose())

            async def leftover() -> set[asyncio.Task[Any]]:
                return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

            left = runner.run(leftover())
            assert left == set(), "tasks still running once the plane was closed"
            assert errors == [], "errors reported to the event loop"
