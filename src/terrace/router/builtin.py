"""The builtin data plane: an asyncio reverse proxy that follows a :class:`RouteTable`.

No system dependency: httptools parses request and response heads and bodies, the event loop is
whatever runs (uvloop when the caller installed it). It is the fallback when HAProxy is missing
and, with ``pool_header``, the activator behind HAProxy that holds requests for sleeping pools.

::

    client --keep-alive--> BuiltinPlane --pooled keep-alive connections--> backend
           <-- response --              <-- response streamed as it arrives --

**How it runs.** Each client connection serves one request at a time (pipelined requests wait
their turn). The common case runs in protocol callbacks only, with no task: a request whose
body (if any) has arrived whole goes out on an idle pooled connection as soon as its head is
parsed, and the response is passed on as it arrives (:class:`_Exchange`). Everything that has
to wait runs in one task per request (:meth:`BuiltinPlane._slow`): holding a request for a
sleeping pool, opening a connection, streaming a request body, a retry, a WebSocket tunnel;
the response is still passed on by the callbacks. Heads are rewritten (hop-by-hop headers
removed, ``X-Forwarded-*`` and ``X-Request-Id`` set); bodies are re-framed as they stream
(sized bodies pass as they are, chunked bodies are re-chunked, a body that ends with the
backend's EOF reaches the client unframed and the client connection is closed after it).

**Rules and limits.**

- *Heads.* A request line over 8 KiB is a 414, a head over 64 KiB a 431, a head that does not
  arrive within ``timeouts.head`` a 408 (an idle keep-alive connection is closed silently), a
  version other than HTTP/1.0 and 1.1 a 505, anything else malformed or ambiguous (no or two
  ``Host`` in HTTP/1.1, ``Content-Length`` with ``Transfer-Encoding``, a target that is not a
  path, ...) a 400. Trailers are dropped.
- *Upstream connections* are kept per backend after a response that allows it (at most 128
  idle per backend, closed after 30 s idle, when the backend closes them, and when the backend
  leaves the table); the most recently used one is reused first.
- *Retry rule.* A request is sent again, once, on a new connection to the same backend only if
  (1) it went out on a reused idle connection, (2) that connection closed or reset before any
  byte of a response arrived, (3) the whole request was in hand when it was sent (no body, or a
  body of at most 64 KiB that had fully arrived: nothing was streamed), and (4) its method is
  idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; RFC 9110 9.2.2). Other requests get a 502
  instead, as the backend may have received and acted on them. To make that rare, a
  non-idempotent request only reuses a connection that was idle for less than 2 s.
- *Balancing.* Round-robin, or the backend with the fewest requests in flight on this plane
  (ties round-robin). A backend that refuses the connection (or does not accept it within
  ``timeouts.connect``) is skipped for the next one of the pool, each tried once, then 502.
- *Own answers* (``text/plain`` with ``X-Request-Id``): 404 no route, 502 the backend failed
  before a response head, 503 no backend, 504 no response head within ``timeouts.response``.
  After a 404 or 503 the client connection stays open when the client allows it.
- *Sleeping pools* (``wake``, no backend): ``on_wake`` is called for each such request, which
  is held until :meth:`BuiltinPlane.apply` gives the pool backends (an event per pool) and then
  forwarded, or answered 503 after ``timeouts.wake``.
- *Drain.* Requests in flight are counted per backend id (a tunnel counts until it closes);
  :meth:`BuiltinPlane.drained` waits for the counts to reach zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Collection, Coroutine, Mapping
from http import HTTPStatus
from typing import Any, Final, cast

import httptools

from terrace.router.plane import Timeouts, Waker
from terrace.router.table import Backend, Balance, Pool, Route, RouteTable

__all__ = ["BuiltinPlane"]

logger = logging.getLogger(__name__)

MAX_HEAD: Final = 64 * 1024
MAX_REQUEST_LINE: Final = 8 * 1024
MAX_IDLE_PER_BACKEND: Final = 128
UPSTREAM_IDLE: Final = 30.0
"""Seconds an idle upstream connection is kept."""
UNSAFE_REUSE: Final = 2.0
"""A non-idempotent request only reuses a connection idle for less than this many seconds."""
REPLAY_BODY: Final = 64 * 1024
"""The largest request body kept in hand so that the request can be sent again."""
READ_HIGH: Final = 256 * 1024
"""Unread bytes at which a connection stops reading from its socket."""
WRITE_HIGH: Final = 256 * 1024
"""Unsent bytes at which a connection counts as full (flow control)."""
LINGER: Final = 2.0
"""Seconds spent discarding a client's input before closing on it (see :meth:`_Client.linger`)."""

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_INF: Final = float("inf")
_CRLF: Final = b"\r\n"
_DEFAULT_TIMEOUTS: Final = Timeouts()

# What the header callbacks do with a header, by lower-case name (others are kept as they came).
_DROP, _HOST, _CONNECTION, _TRANSFER, _UPGRADE, _FORWARDED_FOR, _REQUEST_ID, _POOL, _LENGTH = range(
    9
)
_HOP_BY_HOP: Final = {
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"transfer-encoding": _TRANSFER,
    b"upgrade": _UPGRADE,
}
_REQUEST_KINDS: Final = {
    **_HOP_BY_HOP,
    b"host": _HOST,
    b"x-request-id": _REQUEST_ID,
    b"x-forwarded-for": _FORWARDED_FOR,
    b"x-forwarded-proto": _DROP,
    b"x-forwarded-host": _DROP,
    b"x-forwarded-port": _DROP,
    b"x-forwarded-prefix": _DROP,
}
_ACTIVATOR_KINDS: Final = {**_HOP_BY_HOP, b"host": _HOST, b"x-request-id": _REQUEST_ID}
_RESPONSE_KINDS: Final = {**_HOP_BY_HOP, b"x-request-id": _DROP, b"content-length": _LENGTH}
"""The response headers the plane reads or removes (Content-Length is only read)."""
_SPECIAL_FIRST: Final = frozenset(b"cCkKpPtTuUxX")
"""The first bytes of those names: other header lines are kept without a look at the name."""
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b""})

# How a response body reaches the client.
_NO_BODY, _SIZED, _CHUNKED, _UNTIL_EOF = range(4)
# How an exchange ended.
_DONE, _STALE, _CLOSED, _MALFORMED, _TIMEOUT, _ABORTED, _UPGRADED = range(7)

_UUID_MASK: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_BITS: Final = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant
_random_bits = random.getrandbits


class _Reply(Exception):
    """A response the plane gives itself instead of forwarding."""

    def __init__(self, status: HTTPStatus, text: str, *, keep: bool = False) -> None:
        super().__init__(status, text)
        self.status = status
        self.text = text
        self.keep = keep
        """Whether the client connection may stay open after it (404, 503)."""

    def render(self, request_id: bytes, connection: bytes) -> bytes:
        body = self.text.encode("utf-8", "replace") + b"\n"
        return b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n" % (
            self.status.value,
            self.status.phrase.encode(),
        ) + b"Content-Length: %d\r\nX-Request-Id: %s\r\n%s\r\n%s" % (
            len(body),
            request_id,
            connection,
            body,
        )


class _Abort(Exception):
    """The exchange broke after the response started, or the client left: close, no answer."""


class _Stale(Exception):
    """A reused upstream connection closed before any response byte."""


def _bad(text: str) -> _Reply:
    return _Reply(HTTPStatus.BAD_REQUEST, f"bad request: {text}")


def _new_id() -> bytes:
    """A random (version 4) UUID as 32 hex digits; not for secrets, so no system call."""
    return b"%032x" % (_random_bits(128) & _UUID_MASK | _UUID_BITS)


def _status_line(line: bytes) -> bytes:
    """An upstream's status line (its CRLF included) as HTTP/1.1, with a reason phrase."""
    if len(line) > 15:  # "HTTP/1.x 200 " and more
        return b"HTTP/1.1" + line[8:]
    status = int(line[9:12])
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def _options(value: bytes) -> list[bytes]:
    """The header names a ``Connection`` value lists (beyond close, keep-alive and upgrade)."""
    tokens = (token.strip().lower() for token in value.split(b","))
    return [token for token in tokens if token not in _CONNECTION_OPTIONS]


def _without(headers: bytearray, names: Collection[bytes]) -> bytearray:
    """Serialized header lines without those named (for names listed in ``Connection``)."""
    kept = bytearray()
    for line in bytes(headers).split(_CRLF):
        if line and line.split(b":", 1)[0].lower() not in names:
            kept += line + _CRLF
    return kept


def _frame(out: bytearray, parts: list[bytes], chunked: bool) -> None:
    for part in parts:
        if chunked:
            out += b"%x\r\n" % len(part)
            out += part
            out += _CRLF
        else:
            out += part


class _Conn(asyncio.Protocol):
    """One TCP connection: awaitable reads, flow-controlled writes, a lazy timer.

    :meth:`read` hands over what the socket gave (reading pauses while much is unread).
    :attr:`deadline` (loop time) is a plain attribute that reads, drains and the subclasses'
    :meth:`_expired` obey: one timer per connection is armed for it and re-armed only when it
    fires early, so moving the deadline at every read costs nothing.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_drainer",
        "_error",
        "_loop",
        "_paused_reading",
        "_paused_writing",
        "_timer",
        "_timer_at",
        "_waiter",
        "closed",
        "deadline",
        "eof",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport = cast(asyncio.Transport, None)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[bytes] | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self.deadline = _INF
        self.eof = False
        self.closed = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH:
            self.pause()

    def eof_received(self) -> bool:
        self.eof = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(b"")
        return True  # stay open for writing: a half-closed client still gets its response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        if exc is not None:
            self._error = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            if exc is None:
                waiter.set_result(b"")
            else:
                waiter.set_exception(ConnectionResetError(str(exc)))
        self._wake_drainer(ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_drainer(None)

    # -- reading and writing

    async def read(self) -> bytes:
        """The next bytes received; b"" at EOF. Raises TimeoutError past :attr:`deadline`."""
        if self._chunks:
            data = self._chunks.popleft()
            self._buffered -= len(data)
            if self._buffered <= READ_HIGH // 4:
                self.resume()
            return data
        if self._error is not None:
            raise ConnectionResetError(str(self._error))
        if self.eof:
            return b""
        self.resume()
        waiter = self._loop.create_future()
        self._waiter = waiter
        if self.deadline < self._timer_at:
            self._arm()
        try:
            received: bytes = await waiter
        finally:
            self._waiter = None
        return received

    def take(self) -> list[bytes]:
        """Everything received and not read yet (reading resumes)."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self.resume()
        return chunks

    def write(self, data: bytes | bytearray) -> None:
        if not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the socket's send buffer is full. Raises when the connection is lost, and
        TimeoutError past :attr:`deadline`."""
        if self.closed:
            raise ConnectionResetError("connection lost")
        if not self._paused_writing:
            return
        drainer = self._loop.create_future()
        self._drainer = drainer
        if self.deadline < self._timer_at:
            self._arm()
        try:
            await drainer
        finally:
            self._drainer = None

    def pause(self) -> None:
        if not self._paused_reading and not self.closed and not self.transport.is_closing():
            self._paused_reading = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused_reading and not self.closed and not self.transport.is_closing():
            self._paused_reading = False
            self.transport.resume_reading()

    def half_close(self) -> None:
        """Send EOF once what was written is sent."""
        transport = self.transport
        if not self.closed and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        """Close once what was written is sent (no more reads or writes from now)."""
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Close now, unless :meth:`close` was called already."""
        if not self.closed:
            self.closed = True
            self.transport.abort()

    # -- the lazy timer

    def watch(self) -> None:
        """Have the timer fire by :attr:`deadline` (for :meth:`_expired`)."""
        if self.deadline < self._timer_at:
            self._arm()

    def _arm(self) -> None:
        deadline = self.deadline
        if deadline == _INF:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = _INF
        if self.closed:
            return
        if self.deadline - self._loop.time() > 0.001:  # moved since the timer was armed
            if self._waiter is not None or self._drainer is not None or self._watched():
                self._arm()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_exception(TimeoutError())
        self._wake_drainer(TimeoutError())
        try:
            self._expired()
        except Exception:
            logger.exception("router timer failed")
            self.abort()

    def _watched(self) -> bool:
        """Whether the timer also matters while nothing awaits a read or a drain."""
        return False

    def _expired(self) -> None:
        """The deadline passed (anything awaiting was woken with TimeoutError)."""

    def _wake_drainer(self, exc: BaseException | None) -> None:
        drainer = self._drainer
        if drainer is not None and not drainer.done():
            self._drainer = None
            if exc is None:
                drainer.set_result(None)
            else:
                drainer.set_exception(exc)


class _Request:
    """One request read from a client: filled in by the parser's callbacks.

    Fields that most requests leave as they are keep their class-level default (no slots:
    creating one is on every request's path).
    """

    head_size = 0
    fed = 0
    head_done = False
    done = False
    body_size = 0
    method = b""
    version = ""
    keep_alive = False
    upgrade = False
    host: bytes | None = None
    hosts = 0
    forwarded_for: bytes | None = None
    request_id: bytes | None = None
    pool: bytes | None = None
    transfer_encoding: bytes | None = None
    upgrade_to: bytes | None = None
    options: list[bytes] | None = None  # header names listed in Connection

    def __init__(self) -> None:
        self.url = b""
        self.kept = bytearray()  # header lines forwarded as they came
        self.body: list[bytes] = []


_NO_REQUEST: Final = _Request()
_NO_REQUEST.head_done = _NO_REQUEST.done = True


class _Client(_Conn):
    """A client connection. Its request parser's callbacks queue up :class:`_Request` s.

    Who reads it: the plane's callbacks (:meth:`BuiltinPlane._next`) while :attr:`task` is None,
    else that task (through :meth:`read`). While :attr:`exchange` is set, a response is on its
    way and new bytes wait unparsed.
    """

    __slots__ = (
        "current",
        "error",
        "exchange",
        "forwarded_for",
        "kinds",
        "lingering",
        "parser",
        "plane",
        "requests",
        "rest",
        "task",
    )

    def __init__(self, plane: BuiltinPlane, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.plane = plane
        self.kinds = plane._kinds
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[_Request] = deque()
        self.current = _NO_REQUEST  # the request being parsed
        self.error: _Reply | None = None
        self.rest: bytes | None = None  # bytes after an Upgrade request's head
        self.forwarded_for = b""
        self.task: asyncio.Task[None] | None = None
        self.exchange: _Exchange | None = None
        self.lingering = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.forwarded_for = str(peer[0]).encode()
        self.plane._accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.task is not None or self.exchange is not None:
            super().data_received(data)  # for the task, or for after the response
        elif not self.lingering:
            self.feed(data)
            self.plane._next(self)

    def eof_received(self) -> bool:
        super().eof_received()
        if self.lingering:
            self.close()
        elif self.task is None and self.exchange is None:
            self.plane._next(self)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.plane._clients.discard(self)
        if self.exchange is not None:
            self.exchange.finish(_ABORTED)
        elif self.task is not None:
            self.task.cancel()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.exchange is not None:
            self.exchange.up.resume()

    # -- parsing

    def feed(self, data: bytes) -> None:
        """Parse ``data``; an error is kept in :attr:`error` for the request it belongs to."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.rest = data[upgrade.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            self.error = context if isinstance(context, _Reply) else _bad(str(exc))
        except httptools.HttpParserError as exc:
            if str(exc) == "Invalid HTTP version":
                self.error = _Reply(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "unsupported version")
            else:
                self.error = _bad(str(exc) or "malformed request")
        current = self.current
        if self.error is not None:
            # The error is the request's in progress (llhttp checks some of a head after its
            # callback): it is not served.
            if not current.done and self.requests and self.requests[-1] is current:
                self.requests.pop()
            return
        if not current.head_done:
            current.fed += len(data)  # at most one earlier message's tail too much
            if current.fed > MAX_HEAD:
                self.error = _Reply(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"
                )

    def on_message_begin(self) -> None:
        self.current = request = _Request()
        self.requests.append(request)

    def on_url(self, url: bytes) -> None:
        request = self.current
        request.url += url
        if len(request.url) > MAX_REQUEST_LINE:
            raise _Reply(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        if request.head_done:
            return  # a trailer: dropped
        request.head_size += len(name) + len(value) + 4
        if request.head_size > MAX_HEAD:
            raise _Reply(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        kind = self.kinds.get(name.lower())
        if kind is None:
            kept = request.kept
            kept += name
            kept += b": "
            kept += value
            kept += _CRLF
            return
        value = value.strip(b" \t")
        if kind == _HOST:
            request.hosts += 1
            request.host = value
            request.kept += name + b": " + value + _CRLF
        elif kind == _REQUEST_ID:
            if value and request.request_id is None:
                request.request_id = value
        elif kind == _FORWARDED_FOR:
            previous = request.forwarded_for
            request.forwarded_for = value if previous is None else previous + b", " + value
        elif kind == _CONNECTION:
            options = _options(value)
            if options:
                request.options = (request.options or []) + options
        elif kind == _TRANSFER:
            previous = request.transfer_encoding
            request.transfer_encoding = value if previous is None else previous + b", " + value
        elif kind == _UPGRADE:
            request.upgrade_to = value
        elif kind == _POOL:
            request.pool = value

    def on_headers_complete(self) -> None:
        request = self.current
        parser = self.parser
        request.head_done = True
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()

    def on_body(self, body: bytes) -> None:
        request = self.current
        request.body.append(body)
        request.body_size += len(body)

    def on_message_complete(self) -> None:
        self.current.done = True

    # -- ending

    def linger(self) -> None:
        """Send EOF once the answer is out, then discard input for a while before closing.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        response before the client has read it.
        """
        if self.closed:
            return
        self.lingering = True
        self.task = None
        self.exchange = None
        self.take()
        self.half_close()
        if self.eof:
            self.close()
            return
        self.deadline = self._loop.time() + LINGER
        self.watch()

    def _watched(self) -> bool:
        return self.task is None and self.exchange is None

    def _expired(self) -> None:
        if self.task is not None or self.exchange is not None:
            return
        if self.lingering:
            self.close()
        elif self.requests:  # part of a head arrived
            reply = _Reply(HTTPStatus.REQUEST_TIMEOUT, "request head not received in time")
            self.write(reply.render(_new_id(), b"Connection: close\r\n"))
            self.linger()
        else:  # an idle keep-alive connection
            self.close()


class _Upstream(_Conn):
    """A connection to a backend. Its response parser says where heads end and gives the body;
    the head itself is read from the raw bytes (:class:`_Head`)."""

    __slots__ = (
        "backend",
        "body",
        "done",
        "exchange",
        "head_done",
        "idle_since",
        "interims",
        "keep_alive",
        "parser",
        "raw",
        "stack",
        "status",
        "upgraded",
    )

    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.backend = backend
        self.parser = httptools.HttpResponseParser(self)
        self.stack: list[_Upstream] | None = None  # the idle list it is in
        self.idle_since = 0.0
        self.exchange: _Exchange | None = None
        self.raw = b""  # the response's bytes until its head is complete
        self.interims = 0  # 1xx heads before the response's own head
        self.status = 0
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.upgraded: bytes | None = None
        self.body: list[bytes] = []

    def feed(self, data: bytes) -> bool:
        """Parse ``data``; whether the response is complete. Raises httptools.HttpParserError
        for a malformed response."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgraded = data[upgrade.args[0] :]
        except httptools.HttpParserError:
            if not self.done:
                raise
            self.keep_alive = False  # bytes after the response: not reused
        return self.done

    # -- httptools callbacks

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interims += 1
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True
            self.keep_alive = self.keep_alive and self.parser.should_keep_alive()

    # -- asyncio.Protocol: the exchange in progress, or the idle pool

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            try:
                exchange.data(data)
            except Exception:
                logger.exception("router exchange failed")
                exchange.finish(_ABORTED)
        elif self.stack is not None:  # nothing is expected on an idle connection
            self._unpool()
            self.abort()
        else:
            super().data_received(data)

    def eof_received(self) -> bool:
        super().eof_received()
        if self.exchange is not None:
            self.exchange.ended()
        elif self.stack is not None:  # closed by the backend while idle
            self._unpool()
            self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._unpool()
        if self.exchange is not None:
            self.exchange.ended()

    def _unpool(self) -> None:
        stack = self.stack
        self.stack = None
        if stack is not None:
            with contextlib.suppress(ValueError):
                stack.remove(self)

    def _watched(self) -> bool:
        return self.stack is not None or self.exchange is not None

    def _expired(self) -> None:
        if self.exchange is not None:
            self.exchange.timed_out()
        elif self.stack is not None:
            self._unpool()
            self.close()


class _Head:
    """A response head as the client gets it, read from the raw bytes llhttp accepted."""

    length = False
    transfer_encoding: bytes | None = None
    upgrade_to: bytes | None = None

    def __init__(self, raw: bytes, start: int) -> None:
        """The head that starts at ``start`` in ``raw`` (complete: llhttp parsed it)."""
        line_end = raw.index(b"\r\n", start)
        end = raw.index(b"\r\n\r\n", line_end)  # the end of the last header line
        self.end = end + 4
        self.status_line = _status_line(raw[start : line_end + 2])
        kept: list[bytes] = []
        options: list[bytes] | None = None
        if end > line_end:
            for line in raw[line_end + 2 : end].split(b"\r\n"):
                if line[0] in _SPECIAL_FIRST:
                    colon = line.index(b":")
                    kind = _RESPONSE_KINDS.get(line[:colon].lower())
                    if kind == _LENGTH:
                        self.length = True
                    elif kind is not None:
                        value = line[colon + 1 :].strip(b" \t")
                        if kind == _TRANSFER:
                            coding = self.transfer_encoding
                            self.transfer_encoding = (
                                value if coding is None else coding + b", " + value
                            )
                        elif kind == _UPGRADE:
                            self.upgrade_to = value
                        elif kind == _CONNECTION and value.lower() not in _CONNECTION_OPTIONS:
                            options = (options or []) + _options(value)
                        continue
                kept.append(line)
        kept.append(b"")
        joined = b"\r\n".join(kept)  # each line with its CRLF
        self.kept = bytes(_without(bytearray(joined), options)) if options else joined


class _Exchange:
    """One response passed on from ``up`` to ``client``, in the protocols' callbacks.

    Ends once (:meth:`finish`): the plane is told (:meth:`BuiltinPlane._fast_done`), or the
    task that sent the request is woken through :attr:`waiter`.
    """

    route: Route | None = None
    pool: Pool | None = None
    received = False  # any response byte
    started = False  # the response head went to the client
    complete = False
    keep = False  # the client connection may serve another request
    mode = _NO_BODY
    interims = 0  # 1xx heads passed on
    head_start = 0  # where the response's own head starts in ``up.raw``
    head: _Head | None = None
    result = -1

    def __init__(
        self,
        plane: BuiltinPlane,
        client: _Client,
        request: _Request,
        up: _Upstream,
        waiter: asyncio.Future[None] | None,
    ) -> None:
        self.plane = plane
        self.client = client
        self.request = request
        self.up = up
        self.waiter = waiter
        self.backend = up.backend

    def begin(self) -> None:
        """Wait for the response (the request went out)."""
        up = self.up
        up.exchange = self
        self.client.exchange = self
        up.deadline = self.plane._loop.time() + self.plane._timeouts.response
        up.watch()

    def data(self, data: bytes) -> None:
        up = self.up
        plane = self.plane
        self.received = True
        up.deadline = plane._loop.time() + plane._timeouts.response
        if not self.started:
            up.raw = up.raw + data if up.raw else data
        try:
            complete = up.feed(data)
        except httptools.HttpParserError:
            self.finish(_ABORTED if self.started else _MALFORMED)
            return
        client = self.client
        if self.started:
            parts = up.body
            if parts:
                up.body = []
                if self.mode == _CHUNKED:
                    out = bytearray()
                    _frame(out, parts, True)
                    if complete:
                        out += b"0\r\n\r\n"
                    client.write(out)
                else:
                    client.write(parts[0] if len(parts) == 1 else b"".join(parts))
            elif complete and self.mode == _CHUNKED:
                client.write(b"0\r\n\r\n")
        else:
            while self.interims < up.interims:  # 1xx heads: passed on as they are
                interim = _Head(up.raw, self.head_start)
                if self.request.version == "1.1":
                    client.write(interim.status_line + interim.kept + _CRLF)
                self.interims += 1
                self.head_start = interim.end
            if not up.head_done:
                return
            self.head = _Head(up.raw, self.head_start)
            if up.status == 101:
                upgraded = self.request.upgrade and up.upgraded is not None
                self.finish(_UPGRADED if upgraded else _MALFORMED)
                return
            complete = self._start(complete)
        if complete:
            self.complete = True
            self.finish(_DONE)
        elif client._paused_writing:
            up.pause()  # until the client has taken what it was sent

    def _start(self, complete: bool) -> bool:
        """Send the response head and what arrived of the body; whether it is complete."""
        up, request, head = self.up, self.request, cast(_Head, self.head)
        status = up.status
        keep = request.keep_alive and not request.upgrade  # a refused upgrade: closed after
        if request.method == b"HEAD" or status in (204, 304):
            mode = _NO_BODY
            complete = up.done = True
            up.keep_alive = up.keep_alive and not up.body
        elif head.transfer_encoding is not None and head.transfer_encoding.lower().endswith(
            b"chunked"
        ):
            mode = _CHUNKED if request.version == "1.1" else _UNTIL_EOF
        elif head.length:
            mode = _SIZED
        else:
            mode = _UNTIL_EOF
        if mode == _UNTIL_EOF:
            keep = False
        if not keep:
            connection = b"Connection: close\r\n"
        elif request.version == "1.0":
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        if mode == _CHUNKED:
            connection = b"Transfer-Encoding: %s\r\n%s" % (head.transfer_encoding, connection)
        out = b"%s%sX-Request-Id: %s\r\n%s\r\n" % (
            head.status_line,
            head.kept,
            request.request_id,
            connection,
        )
        body = up.body
        if body and mode != _NO_BODY:
            if mode == _CHUNKED:
                chunked = bytearray(out)
                _frame(chunked, body, True)
                if complete:
                    chunked += b"0\r\n\r\n"
                out = bytes(chunked)
            else:
                out += body[0] if len(body) == 1 else b"".join(body)
        elif complete and mode == _CHUNKED:
            out += b"0\r\n\r\n"
        up.body = []
        up.raw = b""
        self.mode = mode
        self.keep = keep
        self.started = True
        self.client.write(out)
        return complete

    def ended(self) -> None:
        """The backend closed (or reset) its connection."""
        if not self.started:
            self.finish(_CLOSED if self.received else _STALE)
        elif self.mode == _UNTIL_EOF:
            self.complete = True
            self.finish(_DONE)
        else:
            self.finish(_ABORTED)

    def timed_out(self) -> None:
        self.finish(_ABORTED if self.started else _TIMEOUT)

    def finish(self, result: int) -> None:
        if self.result >= 0:
            return
        self.result = result
        up, client = self.up, self.client
        if up.exchange is self:
            up.exchange = None
        if client.exchange is self:
            client.exchange = None
        if result not in {_DONE, _UPGRADED}:
            up.abort()
        waiter = self.waiter
        if waiter is None:
            self.plane._fast_done(self)
        elif not waiter.done():
            waiter.set_result(None)


class BuiltinPlane:
    """The asyncio data plane (see the module's docstring for its rules)."""

    def __init__(
        self,
        *,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        on_wake: Waker | None = None,
        pool_header: str | None = None,
    ) -> None:
        self._timeouts = timeouts
        self._on_wake = on_wake
        self._pool_header = pool_header
        self._kinds: dict[bytes, int] = (
            {**_ACTIVATOR_KINDS, pool_header.lower().encode("latin-1"): _POOL}
            if pool_header
            else dict(_REQUEST_KINDS)
        )
        self._table = RouteTable()
        self._live: dict[str, Backend] = {}  # by id: the backends of the current table
        self._candidates: dict[bytes | None, tuple[Route, ...]] = {}
        self._routes: dict[tuple[bytes | None, bytes], tuple[Route, Pool]] = {}
        self._seen: dict[str, float] = {}
        self._turns: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._drain_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._idle: dict[str, list[_Upstream]] = {}  # by backend id
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._loop = cast(asyncio.AbstractEventLoop, None)
        self._closing = False
        self._proto_port = b""

    @property
    def name(self) -> str:
        return "builtin"

    # -- the DataPlane protocol

    async def start(self, host: str, port: int) -> int:
        self._loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Client(self, loop), host, port, backlog=1024
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        self._proto_port = b"X-Forwarded-Proto: http\r\nX-Forwarded-Port: %d\r\n" % bound
        return bound

    async def apply(self, table: RouteTable) -> None:
        now = time.monotonic()
        live = {b.id: b for pool in table.pools.values() for b in pool.backends}
        self._table = table
        self._live = live
        self._routes = {}
        self._candidates = {}
        self._seen = {name: self._seen.get(name, now) for name in table.pools}
        for name in list(self._wakes):
            pool = table.pools.get(name)
            if pool is None or pool.backends or not pool.wake:
                self._wakes.pop(name).set()
        for backend_id, stack in list(self._idle.items()):
            if any(live.get(backend_id) != up.backend for up in stack):
                self._close_idle(backend_id)

    async def drained(self, backend_ids: Collection[str], *, timeout: float) -> bool:
        ids = set(backend_ids)
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        for backend_id in ids:
            if self._in_flight.get(backend_id):
                future = loop.create_future()
                self._drain_waiters.setdefault(backend_id, []).append(future)
                waiting.append(future)
        drained = True
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=timeout)
            drained = not pending
            for future in pending:
                future.cancel()
            for backend_id in ids:
                futures = [f for f in self._drain_waiters.pop(backend_id, []) if not f.done()]
                if futures:
                    self._drain_waiters[backend_id] = futures
        for backend_id in ids:
            self._close_idle(backend_id)
        return drained

    async def idle(self) -> Mapping[str, float]:
        now = time.monotonic()
        return {name: now - self._seen.get(name, now) for name in self._table.pools}

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            if client.exchange is not None:
                client.exchange.up.abort()
            client.abort()
        for task in self._tasks:
            task.cancel()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        for backend_id in list(self._idle):
            self._close_idle(backend_id)
        if self._server is not None:
            await self._server.wait_closed()

    # -- client connections, in callbacks

    def _accepted(self, client: _Client) -> None:
        if self._closing:
            client.abort()
            return
        self._clients.add(client)
        client.deadline = self._loop.time() + self._timeouts.head
        client.watch()

    def _next(self, client: _Client) -> None:
        """Serve the client's next request if its head is complete, and so on while the
        answers need no waiting (own answers, and requests sent on pooled connections)."""
        requests = client.requests
        try:
            while not (client.task or client.exchange or client.lingering or client.closed):
                if requests and requests[0].head_done:
                    self._dispatch(client, requests.popleft())
                    continue
                if client.error is not None:
                    client.write(client.error.render(_new_id(), b"Connection: close\r\n"))
                    client.linger()
                elif client.eof:
                    if requests:
                        reply = _bad("the request head ended early")
                        client.write(reply.render(_new_id(), b"Connection: close\r\n"))
                    client.close()
                else:
                    client.deadline = deadline = self._loop.time() + self._timeouts.head
                    if deadline < client._timer_at:
                        client._arm()
                return
        except Exception:
            logger.exception("router connection failed")
            client.abort()

    def _dispatch(self, client: _Client, request: _Request) -> None:
        """Answer, send on an idle pooled connection, or hand over to :meth:`_slow`."""
        try:
            route, pool = self._admit(request)
        except _Reply as reply:
            self._answer(client, request, reply)
            return
        order = self._order(pool) if pool.backends else ()
        if order and request.done and not request.upgrade:
            backend = order[0]
            up = self._take_idle(backend, unsafe=request.method not in IDEMPOTENT)
            if up is not None:
                rid = request.request_id or _new_id()
                request.request_id = rid
                head = self._upstream_head(client, request, route, rid)
                if request.body or request.transfer_encoding is not None:
                    framed = bytearray(head)
                    _frame(framed, request.body, request.transfer_encoding is not None)
                    if request.transfer_encoding is not None:
                        framed += b"0\r\n\r\n"
                    head = bytes(framed)
                self._started(backend.id)
                exchange = _Exchange(self, client, request, up, None)
                exchange.route = route
                exchange.pool = pool
                up.write(head)
                exchange.begin()
                return
        self._spawn(client, self._slow(client, request, route, pool, order))

    def _spawn(self, client: _Client, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        client.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answer(self, client: _Client, request: _Request, reply: _Reply) -> None:
        """Write the plane's own answer to ``request``; linger unless the connection stays."""
        keep = reply.keep and request.keep_alive and request.done and not request.upgrade
        if keep:
            connection = b"Connection: keep-alive\r\n" if request.version == "1.0" else b""
        else:
            connection = b"Connection: close\r\n"
        client.write(reply.render(request.request_id or _new_id(), connection))
        if not keep:
            client.linger()

    def _fast_done(self, exchange: _Exchange) -> None:
        """After an exchange started by :meth:`_dispatch`: keep or close both connections, and
        go on with the client (or retry in a task)."""
        self._finished(exchange.backend.id)
        client, request, up, result = (
            exchange.client,
            exchange.request,
            exchange.up,
            exchange.result,
        )
        if result == _DONE:
            self._settle(up, request, up.done and up.keep_alive)
            if exchange.keep:
                self._resume(client)
            else:
                client.linger()
            return
        if (
            result == _STALE
            and request.method in IDEMPOTENT
            and request.body_size <= REPLAY_BODY
            and not client.closed
        ):
            pool = cast(Pool, exchange.pool)
            work = self._slow(
                client, request, exchange.route, pool, (exchange.backend,), fresh=True
            )
            self._spawn(client, work)
            return
        if result == _ABORTED:
            client.abort()
            return
        reply = self._failure(result, exchange.backend)
        self._answer(client, request, reply)

    def _resume(self, client: _Client) -> None:
        """Back to the callbacks after a response: parse what arrived meanwhile, go on."""
        client.task = None
        if client._chunks and not client.closed:
            for data in client.take():
                client.feed(data)
        self._next(client)

    # -- one request

    def _admit(self, request: _Request) -> tuple[Route | None, Pool]:
        """Check the request's head and resolve it; raises the plane's answer instead."""
        version = request.version
        if version not in {"1.1", "1.0"}:
            if version == "0.9":
                raise _bad("malformed request line")
            raise _Reply(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"HTTP/{version} is not supported")
        if not request.url.startswith(b"/"):
            raise _bad("the request target must be a path such as /index.html")
        if request.hosts > 1 or (request.hosts == 0 and version == "1.1"):
            raise _bad("an HTTP/1.1 request needs exactly one Host header")
        if request.transfer_encoding is not None and version == "1.0":
            raise _bad("invalid Transfer-Encoding")
        route, pool = self._resolve(request)
        self._seen[pool.name] = time.monotonic()
        if not pool.backends and not pool.wake:
            raise _Reply(HTTPStatus.SERVICE_UNAVAILABLE, f"{pool.name} has no backend", keep=True)
        return route, pool

    def _resolve(self, request: _Request) -> tuple[Route | None, Pool]:
        """The route (None with ``pool_header``) and pool of ``request`` in the current table."""
        table = self._table
        if self._pool_header:
            name = (request.pool or b"").decode("latin-1")
            pool = table.pools.get(name)
            if pool is None:
                raise _Reply(HTTPStatus.NOT_FOUND, f"no pool {name!r}", keep=True)
            return None, pool
        host, url = request.host, request.url
        if b"?" in url:
            url = url.partition(b"?")[0]
        resolved = self._routes.get((host, url))
        if resolved is not None:
            return resolved
        candidates = self._candidates.get(host)
        if candidates is None:
            candidates = table.candidates(None if host is None else host.decode("latin-1"))
            if len(self._candidates) > 1024:
                self._candidates.clear()
            self._candidates[host] = candidates
        path = url.decode("latin-1")
        for route in candidates:
            if route.matches(path):
                resolved = route, table.pools[route.pool]
                if len(self._routes) > 4096:
                    self._routes.clear()
                self._routes[host, url] = resolved
                return resolved
        raise _Reply(HTTPStatus.NOT_FOUND, f"no route for {path}", keep=True)

    def _upstream_head(
        self, client: _Client, request: _Request, route: Route | None, rid: bytes
    ) -> bytes:
        target = request.url
        kept: bytes | bytearray = request.kept
        if request.options:
            kept = _without(request.kept, request.options)
        forwarded = b""
        if route is not None:
            if route.strip:
                path, question, query = target.decode("latin-1").partition("?")
                target = route.target(path, query if question else None).encode("latin-1")
            ip = client.forwarded_for
            if request.forwarded_for:
                ip = b"%s, %s" % (request.forwarded_for, ip)
            host = b"" if request.host is None else b"X-Forwarded-Host: %s\r\n" % request.host
            prefix = b"X-Forwarded-Prefix: %s\r\n" % route.strip.encode() if route.strip else b""
            forwarded = b"X-Forwarded-For: %s\r\n%s%s%s" % (ip, self._proto_port, host, prefix)
        extra = b""
        if request.transfer_encoding is not None:
            extra = b"Transfer-Encoding: %s\r\n" % request.transfer_encoding
        if request.upgrade:
            extra += b"Connection: Upgrade\r\nUpgrade: %s\r\n" % (request.upgrade_to or b"")
        elif request.version == "1.0":
            extra += b"Connection: keep-alive\r\n"
        return b"%s %s HTTP/%s\r\n%s%sX-Request-Id: %s\r\n%s\r\n" % (
            request.method,
            target,
            b"1.1" if request.version == "1.1" else b"1.0",
            kept,
            forwarded,
            rid,
            extra,
        )

    @staticmethod
    def _failure(result: int, backend: Backend) -> _Reply:
        if result == _TIMEOUT:
            return _Reply(
                HTTPStatus.GATEWAY_TIMEOUT,
                f"gateway timeout: backend {backend.id} did not answer in time",
            )
        if result == _MALFORMED:
            return _Reply(
                HTTPStatus.BAD_GATEWAY, f"bad gateway: backend {backend.id} answered malformed"
            )
        return _Reply(
            HTTPStatus.BAD_GATEWAY, f"bad gateway: backend {backend.id} closed without answering"
        )

    # -- one request, in a task

    async def _slow(
        self,
        client: _Client,
        request: _Request,
        route: Route | None,
        pool: Pool,
        order: tuple[Backend, ...],
        *,
        fresh: bool = False,
    ) -> None:
        """Serve a request that has to wait for something (see the module's docstring)."""
        try:
            try:
                if not order:
                    route, pool = await self._hold(request, pool)
                    order = self._order(pool)
                keep = await self._forward(client, request, route, pool, order, fresh=fresh)
            except _Reply as reply:
                client.task = None
                self._answer(client, request, reply)
                if not client.lingering:
                    self._resume(client)
                return
        except (_Abort, OSError):
            client.abort()
            return
        except asyncio.CancelledError:
            client.abort()
            raise
        except Exception:
            logger.exception("router request failed")
            client.abort()
            return
        if keep:
            self._resume(client)
        else:
            client.linger()

    async def _hold(self, request: _Request, pool: Pool) -> tuple[Route | None, Pool]:
        """Wait until the request's pool has backends: its route and pool then, resolved in
        the table that woke it. 503 when it does not wake in time."""
        if self._on_wake is not None:
            try:
                self._on_wake(pool.name)
            except Exception:
                logger.exception("on_wake failed for pool %s", pool.name)
        deadline = self._loop.time() + self._timeouts.wake
        while True:
            event = self._wakes.get(pool.name)
            if event is None:
                event = self._wakes[pool.name] = asyncio.Event()
            try:
                async with asyncio.timeout_at(deadline):
                    await event.wait()
            except TimeoutError:
                raise _Reply(
                    HTTPStatus.SERVICE_UNAVAILABLE, f"{pool.name} did not wake in time"
                ) from None
            route, pool = self._resolve(request)
            if pool.backends:
                return route, pool
            if not pool.wake:
                raise _Reply(HTTPStatus.SERVICE_UNAVAILABLE, f"{pool.name} has no backend")

    async def _forward(
        self,
        client: _Client,
        request: _Request,
        route: Route | None,
        pool: Pool,
        order: tuple[Backend, ...],
        *,
        fresh: bool,
    ) -> bool:
        """Send ``request`` to the first backend of ``order`` that accepts a connection;
        whether the client connection stays open."""
        rid = request.request_id or _new_id()
        request.request_id = rid
        head = self._upstream_head(client, request, route, rid)
        unsafe = request.method not in IDEMPOTENT
        for backend in order:
            self._started(backend.id)
            try:
                up = None if fresh else self._take_idle(backend, unsafe=unsafe)
                reused = up is not None
                if up is None:
                    try:
                        up = await self._connect(backend)
                    except OSError:  # refused, unreachable or timed out: the next backend
                        continue
                try:
                    return await self._exchange(client, request, up, head)
                except _Stale:
                    if unsafe or not reused:
                        raise self._failure(_CLOSED, backend) from None
                # A stale keep-alive connection: once more on a new one (the retry rule).
                try:
                    up = await self._connect(backend)
                except OSError:
                    raise self._failure(_CLOSED, backend) from None
                try:
                    return await self._exchange(client, request, up, head)
                except _Stale:
                    raise self._failure(_CLOSED, backend) from None
            finally:
                self._finished(backend.id)
        raise _Reply(HTTPStatus.BAD_GATEWAY, f"bad gateway: no backend of {pool.name} is reachable")

    async def _connect(self, backend: Backend) -> _Upstream:
        loop = self._loop
        async with asyncio.timeout(self._timeouts.connect):
            _, up = await loop.create_connection(
                lambda: _Upstream(backend, loop), backend.host, backend.port
            )
        return up

    async def _exchange(
        self, client: _Client, request: _Request, up: _Upstream, head: bytes
    ) -> bool:
        """Send the request on ``up`` and wait until its response has been passed on; whether
        the client connection stays open. Raises _Stale (``up`` closed before any response byte
        and nothing was streamed), _Reply (502, 504) or _Abort."""
        chunked = request.transfer_encoding is not None
        first: bytes | bytearray = head
        if request.body or (request.done and chunked):
            first = bytearray(head)  # ``head`` stays as it is for a retry
            _frame(first, request.body, chunked)
            if request.done and chunked:
                first += b"0\r\n\r\n"
            if request.body_size > REPLAY_BODY or not request.done:
                request.body = []  # streamed: no longer in hand
        waiter = self._loop.create_future()
        exchange = _Exchange(self, client, request, up, waiter)
        up.write(first)
        exchange.begin()
        pump = None
        if not request.done:
            pump = self._loop.create_task(self._pump(client, request, up, chunked))
        try:
            await waiter
        finally:
            exchange.finish(_ABORTED)  # no-op unless cancelled
            if pump is not None and not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        failure = pump.result() if pump is not None and not pump.cancelled() else None
        if failure is not None and not exchange.started:
            raise failure  # the client's side broke (408, 400) or it left (_Abort)
        result = exchange.result
        if result == _DONE:
            reusable = up.done and up.keep_alive and not request.upgrade and request.done
            self._settle(up, request, reusable)
            return exchange.keep and request.done and not request.upgrade
        if result == _UPGRADED:
            await self._tunnel(client, request, up, cast(_Head, exchange.head))
            return False
        if result == _STALE and pump is None and request.body_size <= REPLAY_BODY:
            raise _Stale
        if result == _ABORTED:
            raise _Abort("the exchange broke")
        raise self._failure(result, up.backend)

    async def _pump(
        self, client: _Client, request: _Request, up: _Upstream, chunked: bool
    ) -> _Reply | _Abort | None:
        """Forward the rest of the request body as it arrives. If that fails ``up`` is aborted
        (which ends the exchange); the client's share of the failure is returned."""
        loop = self._loop
        timeout = self._timeouts.response
        try:
            while True:
                client.deadline = loop.time() + timeout
                up.deadline = _INF  # the backend is not due to answer before it has the body
                try:
                    data = await client.read()
                except TimeoutError:
                    up.abort()
                    return _Reply(HTTPStatus.REQUEST_TIMEOUT, "request body not received in time")
                except OSError:
                    data = b""
                if not data:
                    up.abort()
                    return _Abort("the client left during the request body")
                client.feed(data)
                if client.error is not None and not request.done:
                    up.abort()
                    return client.error
                parts = request.body
                if parts:
                    request.body = []
                    if chunked:
                        up.write(b"".join([b"%x\r\n%s\r\n" % (len(p), p) for p in parts]))
                    else:
                        up.write(parts[0] if len(parts) == 1 else b"".join(parts))
                up.deadline = loop.time() + timeout
                if request.done:
                    if chunked:
                        up.write(b"0\r\n\r\n")
                    up.watch()  # the response is due ``timeout`` after the body
                    return None
                if up._paused_writing:
                    await up.drain()
        except OSError:  # the backend stopped reading (or left)
            up.abort()
        return None

    async def _tunnel(self, client: _Client, request: _Request, up: _Upstream, head: _Head) -> None:
        """After a 101: the response head, then bytes both ways until both sides are done."""
        out = bytearray(head.status_line)
        out += head.kept
        out += b"Connection: Upgrade\r\nUpgrade: " + (head.upgrade_to or b"") + _CRLF
        out += b"X-Request-Id: " + cast(bytes, request.request_id) + _CRLF + _CRLF
        out += cast(bytes, up.upgraded)
        client.write(out)
        if client.rest:
            up.write(client.rest)
            client.rest = None
        idle = self._timeouts.tunnel
        loop = self._loop

        async def pipe(source: _Conn, sink: _Conn) -> None:
            while True:
                source.deadline = sink.deadline = loop.time() + idle
                data = await source.read()
                if not data:
                    sink.half_close()
                    return
                sink.write(data)
                if sink._paused_writing:
                    await sink.drain()

        upward = loop.create_task(pipe(client, up))
        try:
            await pipe(up, client)
            await upward
        except (OSError, TimeoutError):
            pass
        finally:
            if not upward.done():
                upward.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, TimeoutError):
                await upward
            up.abort()
            client.abort()

    # -- backends: balancing, in-flight counts, idle connections

    def _order(self, pool: Pool) -> tuple[Backend, ...]:
        """The pool's backends in the order to try them: the chosen one first.

        The turn moves past the chosen backend, so that round-robin rotates and least-conn
        rotates among the backends tied for fewest requests in flight.
        """
        backends = pool.backends
        count = len(backends)
        if count == 1:
            return backends
        first = self._turns.get(pool.name, 0) % count
        if pool.balance is Balance.LEAST_CONN:
            in_flight = self._in_flight
            start, least = first, -1
            for step in range(count):
                index = (start + step) % count
                load = in_flight.get(backends[index].id, 0)
                if least < 0 or load < least:
                    least, first = load, index
        self._turns[pool.name] = first + 1
        return backends[first:] + backends[:first]

    def _started(self, backend_id: str) -> None:
        self._in_flight[backend_id] = self._in_flight.get(backend_id, 0) + 1

    def _finished(self, backend_id: str) -> None:
        left = self._in_flight[backend_id] - 1
        if left:
            self._in_flight[backend_id] = left
            return
        del self._in_flight[backend_id]
        for waiter in self._drain_waiters.pop(backend_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _take_idle(self, backend: Backend, *, unsafe: bool) -> _Upstream | None:
        stack = self._idle.get(backend.id)
        while stack:
            up = stack[-1]
            if up.eof or (up.backend is not backend and up.backend != backend):
                stack.pop()
                up.stack = None
                up.abort()
                continue
            if unsafe and self._loop.time() - up.idle_since >= UNSAFE_REUSE:
                return None
            stack.pop()
            up.stack = None
            return up
        return None

    def _settle(self, up: _Upstream, request: _Request, reusable: bool) -> None:
        """After a response: keep ``up`` for a next request, or close it."""
        backend = up.backend
        live = self._live.get(backend.id)
        if not reusable or up.eof or (live is not backend and live != backend):
            up.abort()
            return
        stack = self._idle.get(backend.id)
        if stack is None:
            stack = self._idle[backend.id] = []
        if len(stack) >= MAX_IDLE_PER_BACKEND or self._closing:
            up.close()
            return
        if request.method == b"HEAD":  # its parser expects the body the head announced
            up.parser = httptools.HttpResponseParser(up)
        up.raw = b""
        up.interims = 0
        up.head_done = up.done = False
        up.idle_since = now = self._loop.time()
        up.deadline = deadline = now + UPSTREAM_IDLE
        if deadline < up._timer_at:
            up._arm()
        up.stack = stack
        stack.append(up)
        if up._paused_reading:
            up.resume()

    def _close_idle(self, backend_id: str) -> None:
        for up in self._idle.pop(backend_id, []):
            up.stack = None
            up.close()
