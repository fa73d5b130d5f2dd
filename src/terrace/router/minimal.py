"""A minimal HTTP/1.1 reverse proxy: a landscape's public paths on one port.

One request per client connection. The router reads the request head itself, picks the route with
the longest matching path prefix, opens a connection to that route's upstream through a connector,
forwards a rewritten head with ``Connection: close`` and then copies bytes both ways until the
upstream closes. Responses are never parsed: the upstream's response ends at its EOF.

::

    client --head--> MinimalRouter --rewritten head + body bytes--> upstream
    client <----------- response bytes until the upstream's EOF --- upstream

Errors the router answers itself (``text/plain``, ``Content-Length``, ``Connection: close``):
400 malformed head, 404 no route, 408 head too slow, 414 request line too long, 431 head too
large, 502 upstream unreachable or closed without answering, 505 not HTTP/1.0 or 1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeAlias

__all__ = ["Connector", "MinimalRouter", "Route"]

logger = logging.getLogger(__name__)

Connector: TypeAlias = Callable[
    [Hashable], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
]
"""Opens a byte stream to a route's upstream key; raises OSError when it cannot."""
_Handler: TypeAlias = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

MAX_HEAD = 64 * 1024
MAX_REQUEST_LINE = 8 * 1024
LINGER_SECONDS = 2.0  # how long to discard a client's unread input before closing on it
_CHUNK = 64 * 1024

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters except HTAB
_NOT_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")
_NOT_IN_PREFIX = re.compile(r"[?#\s\x00-\x1f\x7f]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(r"[0-9]+")
# Client headers the router replaces with its own (or drops: hop-by-hop).
_REPLACED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
    }
)


@dataclass(frozen=True, slots=True)
class Route:
    """Requests whose path starts with ``prefix`` (on a segment boundary) go to ``upstream``.

    ``upstream`` is an opaque key handed to the connector. With ``strip``, the prefix is removed
    before forwarding (``/api/users`` -> ``/users``, ``/api`` -> ``/``) and sent along as
    ``X-Forwarded-Prefix``.
    """

    prefix: str
    upstream: Hashable
    strip: bool = False

    def __post_init__(self) -> None:
        prefix = self.prefix
        if (
            not prefix.startswith("/")
            or (prefix != "/" and prefix.endswith("/"))
            or _NOT_IN_PREFIX.search(prefix)
        ):
            raise ValueError(
                f"route prefix {prefix!r} must be a path such as '/' or '/api' "
                "(no trailing slash, query or whitespace)"
            )

    def matches(self, path: str) -> bool:
        """Whether ``path`` (without its query) falls under this route's prefix."""
        prefix = self.prefix
        return prefix in ("/", path) or path.startswith(prefix + "/")

    def target(self, path: str, query: str | None) -> str:
        """The request target sent upstream for ``path`` and ``query`` (``None``: no ``?``)."""
        if self.strip and self.prefix != "/":
            path = path[len(self.prefix) :] or "/"
        return path if query is None else f"{path}?{query}"


class MinimalRouter:
    """An asyncio reverse proxy from path prefixes to upstreams, one request per connection."""

    def __init__(
        self, connect: Connector, *, connect_timeout: float = 5.0, head_timeout: float = 30.0
    ) -> None:
        self._connect = connect
        self._connect_timeout = connect_timeout
        self._head_timeout = head_timeout
        # (routes as given, routes longest prefix first): replaced as one value.
        self._table: tuple[tuple[Route, ...], tuple[Route, ...]] = ((), ())

    def set_routes(self, routes: Iterable[Route]) -> None:
        """Replace the whole route table; requests already forwarded are not affected."""
        given = tuple(routes)
        prefixes = [route.prefix for route in given]
        duplicates = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if duplicates:
            raise ValueError(f"more than one route for the prefixes {duplicates}")
        by_length = tuple(sorted(given, key=lambda route: len(route.prefix), reverse=True))
        self._table = (given, by_length)

    @property
    def routes(self) -> tuple[Route, ...]:
        """The current route table, in the order it was set."""
        return self._table[0]

    def match(self, path: str) -> Route | None:
        """The route for ``path``: the longest prefix that matches on a segment boundary."""
        return next((route for route in self._table[1] if route.matches(path)), None)

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen on ``host``:``port`` (0 picks a free port; see ``server.sockets``).

        Closing the returned server also cancels the connections it is serving, and its
        ``wait_closed()`` returns once they are all closed.
        """
        connections = _Connections(self._handle)
        server = await asyncio.start_server(connections.serve, host, port, start_serving=False)
        connections.follow(server)
        await server.start_serving()
        return server

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        tidy = False
        try:
            try:
                request = await self._read_request(reader)
                if request is None:  # closed before sending anything
                    tidy = True
                    return
                route = self.match(request.path)
                if route is None:
                    raise _Reply(HTTPStatus.NOT_FOUND, f"no route for {request.path}")
                up_reader, upstream = await self._open(route)
                head = request.forwarded_head(route, _client_ip(writer))
                if not await _relay(reader, writer, up_reader, upstream, head + request.body_start):
                    raise _Reply(
                        HTTPStatus.BAD_GATEWAY,
                        f"bad gateway: the service behind {route.prefix} closed without answering",
                    )
            except _Reply as reply:
                reply.write_to(writer)
            await _linger(reader, writer)
            tidy = True
        except OSError as exc:
            logger.debug("router connection ended: %r", exc)
        except Exception:
            logger.exception("router connection failed")
        finally:
            for stream in (upstream, writer):
                if stream is not None:
                    await _close(stream, tidy=tidy)

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        try:
            async with asyncio.timeout(self._head_timeout):
                head = await _read_head(reader)
        except TimeoutError:
            raise _Reply(HTTPStatus.REQUEST_TIMEOUT, "request head not received in time") from None
        return None if head is None else _Request.parse(*head)

    async def _open(self, route: Route) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        unavailable = _Reply(
            HTTPStatus.BAD_GATEWAY, f"bad gateway: the service behind {route.prefix} is unreachable"
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                streams = await self._connect(route.upstream)
        except OSError:  # includes TimeoutError
            raise unavailable from None
        except Exception:
            logger.exception("router connector failed for %r", route.upstream)
            raise unavailable from None
        return streams


class _Reply(Exception):
    """A response the router gives itself instead of forwarding."""

    def __init__(self, status: HTTPStatus, text: str) -> None:
        super().__init__(status, text)
        self.status = status
        self.text = text

    def write_to(self, writer: asyncio.StreamWriter) -> None:
        body = f"{self.text}\n".encode()
        head = (
            f"HTTP/1.1 {self.status.value} {self.status.phrase}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii") + body)


def _bad(text: str) -> _Reply:
    return _Reply(HTTPStatus.BAD_REQUEST, f"bad request: {text}")


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: str | None
    version: str
    headers: tuple[tuple[str, str], ...]
    body_start: bytes  # bytes after the head that were read with it

    @classmethod
    def parse(cls, head: bytes, body_start: bytes) -> _Request:
        """Parse a request head (without its final blank line); raise ``_Reply`` when invalid."""
        text = head.decode("latin-1")
        request_line, *lines = (line.removesuffix("\r") for line in text.split("\n"))
        parts = request_line.split(" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
            raise _bad("malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise _Reply(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version} is not supported")
        if not target.startswith("/") or _NOT_IN_TARGET.search(target):
            raise _bad("the request target must be a path such as /index.html")
        headers: list[tuple[str, str]] = []
        for line in lines:
            name, colon, value = line.partition(":")
            value = value.strip(" \t")
            if not colon or not _TOKEN.fullmatch(name) or _CONTROL.search(value):
                raise _bad("malformed header line")
            headers.append((name, value))
        _check_framing(version, headers)
        path, question, query = target.partition("?")
        return cls(method, path, query if question else None, version, tuple(headers), body_start)

    def forwarded_head(self, route: Route, client_ip: str | None) -> bytes:
        """The head sent upstream: target rewritten, X-Forwarded-*, X-Request-Id, no keep-alive."""
        kept: list[tuple[str, str]] = []
        forwarded_for: list[str] = []
        host: str | None = None
        request_id = False
        for name, value in self.headers:
            key = name.lower()
            if key in _REPLACED or (key == "x-request-id" and not value):
                continue
            if key == "x-forwarded-for":
                forwarded_for.append(value)
                continue
            if key == "host":
                host = value
            request_id = request_id or key == "x-request-id"
            kept.append((name, value))
        if client_ip is not None:
            forwarded_for.append(client_ip)
        if forwarded_for:
            kept.append(("X-Forwarded-For", ", ".join(forwarded_for)))
        kept.append(("X-Forwarded-Proto", "http"))
        if host is not None:
            kept.append(("X-Forwarded-Host", host))
        if route.strip and route.prefix != "/":
            kept.append(("X-Forwarded-Prefix", route.prefix))
        if not request_id:
            kept.append(("X-Request-Id", uuid.uuid4().hex))
        kept.append(("Connection", "close"))
        lines = [f"{self.method} {route.target(self.path, self.query)} {self.version}"]
        lines += [f"{name}: {value}" for name, value in kept]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _check_framing(version: str, headers: list[tuple[str, str]]) -> None:
    """Refuse heads whose body framing or Host is ambiguous (request smuggling, RFC 9112)."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(value)
    hosts = values.get("host", [])
    if len(hosts) > 1 or (version == "HTTP/1.1" and not hosts):
        raise _bad("an HTTP/1.1 request needs exactly one Host header")
    lengths = {
        part.strip() for value in values.get("content-length", []) for part in value.split(",")
    }
    if len(lengths) > 1 or not all(_DIGITS.fullmatch(length) for length in lengths):
        raise _bad("invalid Content-Length")
    codings = ",".join(values.get("transfer-encoding", []))
    if codings and (
        lengths or version == "HTTP/1.0" or codings.rsplit(",", 1)[-1].strip().lower() != "chunked"
    ):
        raise _bad("invalid Transfer-Encoding")


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """Read up to the blank line ending a request head: (head, bytes after it), or None at EOF."""
    buffer = bytearray()
    while True:
        chunk = await reader.read(_CHUNK)
        if not chunk:
            if buffer:
                raise _bad("the request head ended early")
            return None
        buffer += chunk
        if buffer.startswith((b"\r", b"\n")):  # empty lines before a request line are ignored
            del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
        line_end = buffer.find(b"\n")
        if (line_end if line_end >= 0 else len(buffer)) > MAX_REQUEST_LINE + 1:
            raise _Reply(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
        end = _HEAD_END.search(buffer)
        if (end.start() if end else len(buffer)) > MAX_HEAD:
            raise _Reply(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        if end:
            return bytes(buffer[: end.start()]), bytes(buffer[end.end() :])


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    first: bytes,
) -> int:
    """Send ``first`` and the client's bytes upstream while copying the response back.

    Ends at the upstream's EOF; returns how many response bytes reached the client.
    """
    up_writer.write(first)
    sending = asyncio.create_task(_send_rest(reader, up_writer))
    relayed = 0
    try:
        while True:
            try:
                data = await up_reader.read(_CHUNK)
            except OSError:  # the upstream reset: end the response as if it had closed
                data = b""
            if not data:
                return relayed
            writer.write(data)
            relayed += len(data)
            await writer.drain()
    finally:
        sending.cancel()
        await asyncio.wait([sending])
        if not sending.cancelled():
            sending.result()  # re-raise a bug; OSErrors were handled inside


async def _send_rest(reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """Copy the client's remaining bytes upstream, then half-close: the response may follow."""
    with contextlib.suppress(OSError):  # the upstream stopped reading: its response still counts
        await up_writer.drain()
        while data := await reader.read(_CHUNK):
            up_writer.write(data)
            await up_writer.drain()
        if up_writer.can_write_eof():
            up_writer.write_eof()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Flush, send EOF, and discard the client's unread input for a while before closing.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    response before the client has read it.
    """
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(OSError):  # includes TimeoutError
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(_CHUNK):
                pass


async def _close(stream: asyncio.StreamWriter, *, tidy: bool) -> None:
    if tidy:
        stream.close()
    else:
        stream.transport.abort()
    with contextlib.suppress(OSError):
        await stream.wait_closed()


def _client_ip(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


class _Connections:
    """The tasks serving one listening server's connections, cancelled when it closes."""

    def __init__(self, handle: _Handler) -> None:
        self._handle = handle
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self._closed:
            writer.transport.abort()
            return
        task.set_name("terrace.router.connection")
        self._tasks.add(task)
        try:
            # The handler closes its streams when cancelled. Ending normally (not cancelled) keeps
            # asyncio's stream callback on 3.11 from logging the cancellation as an error.
            with contextlib.suppress(asyncio.CancelledError):
                await self._handle(reader, writer)
        finally:
            self._tasks.discard(task)

    def follow(self, server: asyncio.Server) -> None:
        """Make ``server.close()`` cancel these tasks and ``server.wait_closed()`` await them."""
        close, wait_closed = server.close, server.wait_closed

        def closing() -> None:
            self._closed = True
            close()
            for task in self._tasks:
                task.cancel()

        async def waiting() -> None:
            await wait_closed()
            while self._tasks:
                await asyncio.wait(set(self._tasks))

        server.close = closing  # type: ignore[method-assign]
        server.wait_closed = waiting  # type: ignore[method-assign]
