"""Real upstream HTTP/1.1 servers for the router tests, on 127.0.0.1 in the test's event loop.

Raw asyncio and httptools (no framework between the wire and the test), so a backend reports
the request exactly as it arrived: the request target, every header line in order, the body's
length and SHA-256 (counted as it streams, never kept). Every path answers by its last segment
(so that it works under any route prefix, stripped or not):

- ``.../slow``: answers like the echo once the test sets :attr:`Upstream.release`;
- ``.../stream?chunks=N``: a chunked response; the first chunk at once, the others once
  :attr:`Upstream.release` is set (:attr:`Upstream.chunks_sent` says how far it got);
- ``.../big?bytes=N``: ``N`` bytes of :func:`big_body`, with a Content-Length;
- ``.../ws`` with ``Upgrade: websocket``: a WebSocket that echoes every message;
- ``.../hangup``: closes the connection without answering;
- anything else: the echo, a JSON object (:class:`Echo` lists its keys); with ``?id=X`` its
  response carries ``X-Request-Id: X`` (an app that returns an id of its own).

Counters (:attr:`~Upstream.in_flight`, :attr:`~Upstream.handled`, :attr:`~Upstream.accepted`,
:attr:`~Upstream.connections`, :attr:`~Upstream.body_received`, ...) change with the traffic;
:func:`until` waits for a condition on them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict
from urllib.parse import parse_qs

import httptools

from terrace.router.table import Backend

__all__ = ["REQUEST_ID", "Echo", "Upstream", "big_body", "closed_port", "until", "upstreams"]

REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
"""A request id both planes make: a version 4 UUID in its canonical text form."""

GUARD = 20.0  # seconds: fails a hung wait; never used to wait for something to happen
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PATTERN = bytes(range(256)) * 256  # 64 KiB


class Echo(TypedDict):
    """What the echo answers: the request as the backend received it."""

    backend: str
    method: str
    target: str
    version: str
    headers: list[list[str]]
    body_length: int
    body_sha256: str


def big_body(size: int) -> bytes:
    """The ``size`` bytes that ``/big?bytes=<size>`` sends."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class _Request:
    target: bytes = b""
    method: str = ""
    version: str = ""
    headers: list[list[str]] = field(default_factory=list)
    keep_alive: bool = True
    body_length: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


class _Parsing:
    """httptools callbacks: completed requests queue up in :attr:`done`."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.current = _Request()
        self.done: deque[_Request] = deque()

    def on_message_begin(self) -> None:
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append([name.decode("latin-1"), value.decode("latin-1")])

    def on_headers_complete(self) -> None:
        self.current.method = self.parser.get_method().decode("ascii")
        self.current.version = self.parser.get_http_version()
        self.current.keep_alive = self.parser.should_keep_alive()
        self.upstream._change(in_flight=+1)

    def on_body(self, body: bytes) -> None:
        self.current.body_length += len(body)
        self.current.sha256.update(body)
        self.upstream._change(body_received=len(body))

    def on_message_complete(self) -> None:
        self.done.append(self.current)


class Upstream:
    """One backend. Use :func:`upstreams` to run some; :attr:`backend` is its table entry."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.port = 0
        self.release = asyncio.Event()
        """Set by the test: held ``/slow`` requests answer, ``/stream`` sends its other chunks."""
        self.in_flight = 0
        """Requests whose head arrived and whose response is not fully written yet."""
        self.handled = 0
        """Requests answered (responses fully written; a WebSocket counts once closed)."""
        self.accepted = 0
        """Connections accepted so far."""
        self.connections = 0
        """Connections open now."""
        self.chunks_sent = 0
        """Chunks of ``/stream`` responses written so far."""
        self.body_received = 0
        """Bytes of request bodies received so far (all requests together)."""
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    @property
    def backend(self) -> Backend:
        return Backend(self.id, "127.0.0.1", self.port)

    async def until(self, predicate: Callable[[], bool], *, timeout: float = GUARD) -> None:
        """Wait until ``predicate()`` holds (checked after every change of a counter)."""
        await until(predicate, self, timeout=timeout)

    def _change(self, **deltas: int) -> None:
        for name, delta in deltas.items():
            setattr(self, name, getattr(self, name) + delta)
        self._changed.set()
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening; cancel every connection (held requests included) and wait for them."""
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    def __repr__(self) -> str:
        return f"<Upstream {self.id} :{self.port} in_flight={self.in_flight}>"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._change(accepted=+1, connections=+1)
        try:
            with contextlib.suppress(
                asyncio.CancelledError,
                OSError,
                asyncio.IncompleteReadError,
                httptools.HttpParserError,
            ):
                await self._requests(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            self._change(connections=-1)
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parsing = _Parsing(self)
        while data := await reader.read(1 << 16):
            try:
                parsing.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                request = parsing.done.popleft() if parsing.done else parsing.current
                rest = data[upgrade.args[0] :]
                await self._websocket(request, _Prepended(rest, reader), writer)
                return
            while parsing.done:
                request = parsing.done.popleft()
                answered = await self._respond(request, writer)
                self._change(in_flight=-1, handled=+1)
                if not (answered and request.keep_alive):
                    return

    async def _respond(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer ``request``; False when the connection is to be closed without an answer."""
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        params = {name: values[-1] for name, values in parse_qs(query).items()}
        endpoint = path.rsplit("/", 1)[-1]
        if endpoint == "hangup":
            return False
        connection = b"" if request.keep_alive else b"Connection: close\r\n"
        if endpoint == "stream":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: %s\r\n%s"
                b"Transfer-Encoding: chunked\r\n\r\n" % (self.id.encode(), connection)
            )
            for index in range(int(params.get("chunks", "3"))):
                if index == 1:
                    await self.release.wait()
                piece = b"chunk %d\n" % index
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                self._change(chunks_sent=+1)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if endpoint == "big":
            size = int(params["bytes"])
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Backend: %s\r\n"
                b"%sContent-Length: %d\r\n\r\n" % (self.id.encode(), connection, size)
            )
            body = big_body(size)
            for start in range(0, size, 1 << 16):
                writer.write(body[start : start + (1 << 16)])
                await writer.drain()
            return True
        if endpoint == "slow":
            await self.release.wait()
        echo: Echo = {
            "backend": self.id,
            "method": request.method,
            "target": target,
            "version": request.version,
            "headers": request.headers,
            "body_length": request.body_length,
            "body_sha256": request.sha256.hexdigest(),
        }
        body = json.dumps(echo).encode()
        if "id" in params:
            connection += b"X-Request-Id: %s\r\n" % params["id"].encode("latin-1")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Backend: %s\r\n"
            b"%sContent-Length: %d\r\n\r\n%s" % (self.id.encode(), connection, len(body), body)
        )
        await writer.drain()
        return True

    async def _websocket(
        self, request: _Request, reader: _Prepended, writer: asyncio.StreamWriter
    ) -> None:
        key = request.header("sec-websocket-key") or ""
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\nX-Backend: %s\r\n\r\n" % (accept, self.id.encode())
        )
        await writer.drain()
        try:
            while True:
                first, second = await reader.readexactly(2)
                opcode, length = first & 0x0F, second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                mask = await reader.readexactly(4) if second & 0x80 else b""
                payload = _unmask(await reader.readexactly(length), mask)
                if opcode == 0x9:  # ping
                    writer.write(_frame(0x80 | 0xA, payload))
                elif opcode != 0xA:  # data frames (and close) go back as they came
                    writer.write(_frame(first, payload))
                await writer.drain()
                if opcode == 0x8:
                    return
        finally:
            self._change(in_flight=-1, handled=+1)


class _Prepended:
    """A stream reader that first gives back bytes already read past an HTTP head."""

    def __init__(self, data: bytes, reader: asyncio.StreamReader) -> None:
        self._data = data
        self._reader = reader

    async def readexactly(self, size: int) -> bytes:
        head, self._data = self._data[:size], self._data[size:]
        return head + await self._reader.readexactly(size - len(head)) if len(head) < size else head


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not mask:
        return payload
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
        len(payload), "big"
    )


def _frame(first: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", first, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


async def until(predicate: Callable[[], bool], *watched: Upstream, timeout: float = GUARD) -> None:
    """Wait until ``predicate()`` holds, checked after every change of a counter of ``watched``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            changes = [asyncio.ensure_future(u._changed.wait()) for u in watched]
            try:
                await asyncio.wait(changes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for change in changes:
                    change.cancel()
                await asyncio.gather(*changes, return_exceptions=True)


@contextlib.asynccontextmanager
async def upstreams(*ids: str) -> AsyncIterator[list[Upstream]]:
    """Run one backend per id on 127.0.0.1 (free ports); close them all on exit."""
    started: list[Upstream] = []
    try:
        for id in ids:
            upstream = Upstream(id)
            await upstream.start()
            started.append(upstream)
        yield started
    finally:
        for upstream in started:
            await upstream.close()
