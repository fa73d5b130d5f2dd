"""The builtin plane's TCP connections: :class:`_Conn`, the base of both sides (awaitable reads,
flow-controlled writes, a lazy timer), and :class:`_Upstream`, a connection to a backend.

Upstream connections are kept per backend between requests by the plane
(:meth:`terrace.router.builtin.BuiltinPlane._settle`); while one is idle, anything it receives, its
EOF or its idle deadline closes it and takes it out of its idle list. The client side is in
:mod:`terrace.router.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from terrace.router.http1 import _ABORTED
from terrace.router.table import Backend

if TYPE_CHECKING:
    from terrace.router.client import _Exchange

logger = logging.getLogger("terrace.router.builtin")

READ_HIGH: Final = 256 * 1024
"""Unread bytes at which a connection stops reading from its socket."""
WRITE_HIGH: Final = 256 * 1024
"""Unsent bytes at which a connection counts as full (flow control)."""

_INF: Final = float("inf")


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
