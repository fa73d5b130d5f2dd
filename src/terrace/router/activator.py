"""The activator for connections *inside* a landscape: a replica that calls a sleeping service
by name is sent here (the landscape's DNAT points the service's address at one port of this
per pool while the service has no replica). The connection is held, the service is woken,
and once the pool has a backend the bytes are spliced through to it. Any TCP protocol works:
nothing is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket

from terrace.router.plane import Waker
from terrace.router.table import Backend, RouteTable

__all__ = ["TcpActivator"]

log = logging.getLogger("terrace.router.activator")
_CHUNK = 64 * 1024
IP_FREEBIND = 15  # linux/in.h (the socket module does not name it)


class TcpActivator:
    """One listening port per sleeping pool, on ``host``."""

    def __init__(self, host: str, *, on_wake: Waker, timeout: float = 60.0) -> None:
        self.host = host
        self.on_wake = on_wake
        self.timeout = timeout
        self._servers: dict[str, asyncio.Server] = {}
        self._backends: dict[str, tuple[Backend, ...]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._turn = itertools.count()
        self._tasks: set[asyncio.Task[object]] = set()

    async def listen(self, pool: str) -> int:
        """The port (on ``host``) whose connections wait for ``pool``; made on first use."""
        server = self._servers.get(pool)
        if server is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # The host's end of a landscape's uplink may not exist yet: bind to it anyway.
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.bind((self.host, 0))
            server = await asyncio.start_server(functools.partial(self._hold, pool), sock=sock)
            self._servers[pool] = server
        port: int = server.sockets[0].getsockname()[1]
        return port

    def apply(self, table: RouteTable) -> None:
        """Backends per pool from now on; connections waiting for a pool that has some now go."""
        self._backends = {name: pool.backends for name, pool in table.pools.items()}
        for name, event in self._ready.items():
            if self._backends.get(name):
                event.set()
            else:
                event.clear()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()

    async def _hold(
        self, pool: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream = await self._connect(pool)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, TimeoutError) as exc:
            log.info("connection for %s dropped: %s", pool, exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _connect(self, pool: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        ready = self._ready.setdefault(pool, asyncio.Event())
        if self._backends.get(pool):
            ready.set()
        else:
            self.on_wake(pool)
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    await ready.wait()
                    backends = self._backends.get(pool, ())
                    for _ in range(len(backends)):
                        backend = backends[next(self._turn) % len(backends)]
                        with contextlib.suppress(OSError):
                            return await asyncio.open_connection(backend.host, backend.port)
                    ready.clear()
        except TimeoutError:
            log.warning("%s did not wake within %.0f s: connection closed", pool, self.timeout)
            return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
