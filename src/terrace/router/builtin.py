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
to wait runs in one task per request (:func:`terrace.router.forward._slow`): holding a request
for a sleeping pool, opening a connection, streaming a request body, a retry, a WebSocket
tunnel; the response is still passed on by the callbacks. Heads are rewritten (hop-by-hop
headers removed; on requests ``X-Forwarded-*`` and ``X-Request-Id`` set) and bodies re-framed
as they stream (:mod:`terrace.router.client`).

**Where it lives.** :mod:`terrace.router.http1`: limits, header handling, the plane's own
answers, body framing, request and response heads. :mod:`terrace.router.connection`: the
connections' base protocol and upstream connections. :mod:`terrace.router.client`: client
connections and the exchange that passes a response on. :mod:`terrace.router.forward`: the
tasks of requests that wait (holding, connecting, retrying, streaming a request body,
tunnels). Here: the plane itself (the DataPlane protocol, routing, balancing, in-flight counts,
the idle upstream connections, and the requests served in callbacks).

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
import logging
import time
from collections.abc import Collection, Coroutine, Mapping
from http import HTTPStatus
from typing import Any, Final, cast

import httptools

from terrace.router.client import _Client, _Exchange
from terrace.router.connection import _Upstream
from terrace.router.forward import REPLAY_BODY, _failure, _slow
from terrace.router.http1 import (
    _ABORTED,
    _ACTIVATOR_KINDS,
    _DONE,
    _POOL,
    _REQUEST_KINDS,
    _STALE,
    IDEMPOTENT,
    _bad,
    _frame,
    _new_id,
    _Reply,
    _Request,
    _without,
)
from terrace.router.plane import Timeouts, Waker
from terrace.router.table import Backend, Balance, Pool, Route, RouteTable

__all__ = ["BuiltinPlane"]

logger = logging.getLogger(__name__)

MAX_IDLE_PER_BACKEND: Final = 128
UPSTREAM_IDLE: Final = 30.0
"""Seconds an idle upstream connection is kept."""
UNSAFE_REUSE: Final = 2.0
"""A non-idempotent request only reuses a connection idle for less than this many seconds."""

_DEFAULT_TIMEOUTS: Final = Timeouts()


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
        self._spawn(client, _slow(self, client, request, route, pool, order=order))

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
            work = _slow(
                self, client, request, exchange.route, pool, order=(exchange.backend,), fresh=True
            )
            self._spawn(client, work)
            return
        if result == _ABORTED:
            client.abort()
            return
        reply = _failure(result, exchange.backend)
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
            prefix = b"X-Forwarded-Prefix: %s\r\n" % route.strip.encode() if route.strip else b""
            forwarded = b"X-Forwarded-For: %s\r\n%s%s" % (ip, self._proto_port, prefix)
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
