"""The builtin plane's slow path: a request that has to wait, served in a task of its own.

:class:`terrace.router.builtin.BuiltinPlane` serves what it can in protocol callbacks; whatever
has to wait is handed to :func:`_slow` in one task per request: holding the request for a
sleeping pool (:func:`_hold`), opening a connection (:func:`_connect`), trying the pool's
backends in turn and retrying a request a stale keep-alive connection lost (:func:`_forward`,
the retry rule), streaming a request body as it arrives (:func:`_pump`), and a WebSocket or
other upgraded connection (:func:`_tunnel`). The response is still passed on by the callbacks
(:class:`terrace.router.client._Exchange`); :func:`_exchange` waits for it. The rules these
follow are in :mod:`terrace.router.builtin`'s docstring.

These are functions of the plane (the first argument) rather than its methods so that the plane
stays about routing, balancing and the callbacks; they use its state directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, cast

from terrace.router.client import _Client, _Exchange
from terrace.router.connection import _INF, _Conn, _Upstream
from terrace.router.http1 import (
    _ABORTED,
    _CLOSED,
    _CRLF,
    _DONE,
    _MALFORMED,
    _STALE,
    _TIMEOUT,
    _UPGRADED,
    IDEMPOTENT,
    _frame,
    _Head,
    _new_id,
    _Reply,
    _Request,
)
from terrace.router.table import Backend, Pool, Route

if TYPE_CHECKING:
    from terrace.router.builtin import BuiltinPlane

logger = logging.getLogger("terrace.router.builtin")

REPLAY_BODY: Final = 64 * 1024
"""The largest request body kept in hand so that the request can be sent again."""


class _Abort(Exception):
    """The exchange broke after the response started, or the client left: close, no answer."""


class _Stale(Exception):
    """A reused upstream connection closed before any response byte."""


def _failure(result: int, backend: Backend) -> _Reply:
    """The plane's answer (502, 504) when an exchange ended with ``result`` before a response
    head reached the client."""
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


async def _slow(
    plane: BuiltinPlane,
    client: _Client,
    request: _Request,
    route: Route | None,
    pool: Pool,
    *,
    order: tuple[Backend, ...],
    fresh: bool = False,
) -> None:
    """Serve a request that has to wait for something (see the module's docstring)."""
    try:
        try:
            if not order:
                route, pool = await _hold(plane, request, pool)
                order = plane._order(pool)
            keep = await _forward(plane, client, request, route, pool, order=order, fresh=fresh)
        except _Reply as reply:
            client.task = None
            plane._answer(client, request, reply)
            if not client.lingering:
                plane._resume(client)
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
        plane._resume(client)
    else:
        client.linger()


async def _hold(plane: BuiltinPlane, request: _Request, pool: Pool) -> tuple[Route | None, Pool]:
    """Wait until the request's pool has backends: its route and pool then, resolved in
    the table that woke it. 503 when it does not wake in time."""
    if plane._on_wake is not None:
        try:
            plane._on_wake(pool.name)
        except Exception:
            logger.exception("on_wake failed for pool %s", pool.name)
    deadline = plane._loop.time() + plane._timeouts.wake
    while True:
        event = plane._wakes.get(pool.name)
        if event is None:
            event = plane._wakes[pool.name] = asyncio.Event()
        try:
            async with asyncio.timeout_at(deadline):
                await event.wait()
        except TimeoutError:
            raise _Reply(
                HTTPStatus.SERVICE_UNAVAILABLE, f"{pool.name} did not wake in time"
            ) from None
        route, pool = plane._resolve(request)
        if pool.backends:
            return route, pool
        if not pool.wake:
            raise _Reply(HTTPStatus.SERVICE_UNAVAILABLE, f"{pool.name} has no backend")


async def _forward(
    plane: BuiltinPlane,
    client: _Client,
    request: _Request,
    route: Route | None,
    pool: Pool,
    *,
    order: tuple[Backend, ...],
    fresh: bool,
) -> bool:
    """Send ``request`` to the first backend of ``order`` that accepts a connection;
    whether the client connection stays open."""
    rid = request.request_id or _new_id()
    request.request_id = rid
    head = plane._upstream_head(client, request, route, rid)
    unsafe = request.method not in IDEMPOTENT
    for backend in order:
        plane._started(backend.id)
        try:
            up = None if fresh else plane._take_idle(backend, unsafe=unsafe)
            reused = up is not None
            if up is None:
                try:
                    up = await _connect(plane, backend)
                except OSError:  # refused, unreachable or timed out: the next backend
                    continue
            try:
                return await _exchange(plane, client, request, up, head)
            except _Stale:
                if unsafe or not reused:
                    raise _failure(_CLOSED, backend) from None
            # A stale keep-alive connection: once more on a new one (the retry rule).
            try:
                up = await _connect(plane, backend)
            except OSError:
                raise _failure(_CLOSED, backend) from None
            try:
                return await _exchange(plane, client, request, up, head)
            except _Stale:
                raise _failure(_CLOSED, backend) from None
        finally:
            plane._finished(backend.id)
    raise _Reply(HTTPStatus.BAD_GATEWAY, f"bad gateway: no backend of {pool.name} is reachable")


async def _connect(plane: BuiltinPlane, backend: Backend) -> _Upstream:
    loop = plane._loop
    async with asyncio.timeout(plane._timeouts.connect):
        _, up = await loop.create_connection(
            lambda: _Upstream(backend, loop), backend.host, backend.port
        )
    return up


async def _exchange(
    plane: BuiltinPlane, client: _Client, request: _Request, up: _Upstream, head: bytes
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
    waiter = plane._loop.create_future()
    exchange = _Exchange(plane, client, request, up, waiter)
    up.write(first)
    exchange.begin()
    pump = None
    if not request.done:
        pump = plane._loop.create_task(_pump(plane, client, request, up, chunked))
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
        plane._settle(up, request, reusable)
        return exchange.keep and request.done and not request.upgrade
    if result == _UPGRADED:
        await _tunnel(plane, client, up, cast(_Head, exchange.head))
        return False
    if result == _STALE and pump is None and request.body_size <= REPLAY_BODY:
        raise _Stale
    if result == _ABORTED:
        raise _Abort("the exchange broke")
    raise _failure(result, up.backend)


async def _pump(
    plane: BuiltinPlane, client: _Client, request: _Request, up: _Upstream, chunked: bool
) -> _Reply | _Abort | None:
    """Forward the rest of the request body as it arrives. If that fails ``up`` is aborted
    (which ends the exchange); the client's share of the failure is returned."""
    loop = plane._loop
    timeout = plane._timeouts.response
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
                    out = bytearray()
                    _frame(out, parts, True)
                    up.write(out)
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


async def _tunnel(plane: BuiltinPlane, client: _Client, up: _Upstream, head: _Head) -> None:
    """After a 101: the response head, then bytes both ways until both sides are done."""
    out = bytearray(head.status_line)
    out += head.kept
    out += b"Connection: Upgrade\r\nUpgrade: " + (head.upgrade_to or b"") + _CRLF + _CRLF
    out += cast(bytes, up.upgraded)
    client.write(out)
    if client.rest:
        up.write(client.rest)
        client.rest = None
    idle = plane._timeouts.tunnel
    loop = plane._loop

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
