"""The client side of the builtin plane: :class:`_Client`, a client connection whose request
parser queues up requests, and :class:`_Exchange`, one response passed on from a backend to it.

Both run in protocol callbacks only. A response head is rewritten on its way (hop-by-hop
headers removed); its body is re-framed as it streams (sized bodies pass as
they are, chunked bodies are re-chunked, a body that ends with the backend's EOF reaches the
client unframed and the client connection is closed after it). The plane
(:class:`terrace.router.builtin.BuiltinPlane`) decides what each request gets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import httptools

from terrace.router.connection import _Conn, _Upstream
from terrace.router.http1 import (
    _ABORTED,
    _CLOSED,
    _CONNECTION,
    _CRLF,
    _DONE,
    _FORWARDED_FOR,
    _HOST,
    _MALFORMED,
    _POOL,
    _REQUEST_ID,
    _STALE,
    _TIMEOUT,
    _TRANSFER,
    _UPGRADE,
    _UPGRADED,
    MAX_HEAD,
    MAX_REQUEST_LINE,
    _bad,
    _frame,
    _Head,
    _new_id,
    _options,
    _Reply,
    _Request,
)
from terrace.router.table import Pool, Route

if TYPE_CHECKING:
    from terrace.router.builtin import BuiltinPlane

LINGER: Final = 2.0
"""Seconds spent discarding a client's input before closing on it (see :meth:`_Client.linger`)."""

# How a response body reaches the client.
_NO_BODY, _SIZED, _CHUNKED, _UNTIL_EOF = range(4)

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
            self.head = head = _Head(up.raw, self.head_start)
            if up.status == 101:
                upgraded = self.request.upgrade and up.upgraded is not None
                self.finish(_UPGRADED if upgraded else _MALFORMED)
                return
            complete = self._start(complete, head)
        if complete:
            self.complete = True
            self.finish(_DONE)
        elif client._paused_writing:
            up.pause()  # until the client has taken what it was sent

    def _start(self, complete: bool, head: _Head) -> bool:
        """Send the response head and what arrived of the body; whether it is complete."""
        up, request = self.up, self.request
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
        out = b"%s%s%s\r\n" % (head.status_line, head.kept, connection)
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
