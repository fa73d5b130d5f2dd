"""What every data plane offers: listen on the platform's port, follow a route table, drain.

Two implementations pass one contract-test suite (``tests/router/test_contract.py``):

- :mod:`terrace.router.haproxy`: HAProxy driven over its runtime API socket (the default when
  ``haproxy`` is installed);
- :mod:`terrace.router.builtin`: asyncio, no system dependency (the fallback, and the activator
  that holds requests for sleeping services).

Behaviour every plane has (what the contract tests check):

- HTTP/1.1 with keep-alive on both sides; request and response bodies streamed (chunked or
  sized) both ways, never buffered whole; WebSocket (``Upgrade``) passed through;
- request headers as Heroku's router sets them: ``X-Request-Id`` kept when the client sent
  one, else a new one (version 4 UUID); ``X-Forwarded-For`` (appended), ``X-Forwarded-Proto``,
  ``X-Forwarded-Port`` set; ``X-Forwarded-Prefix`` set to what was stripped; ``Host`` passed
  as it came, and a client's ``X-Forwarded-Host`` (and other ``X-Forwarded-*``) removed. A
  backend's response is passed with its own headers (but hop-by-hop ones): the plane adds no
  id to it; the plane's own answers carry the request's id;
- its own answers: 404 no route, 502 the backend failed before answering, 503 no backend (a
  sleeping pool's requests are held instead, up to the wake timeout), 504 the backend did not
  answer in time;
- a backend that leaves a pool gets no new request; requests in flight on it finish
  (:meth:`DataPlane.drained` says when).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from terrace.router.table import RouteTable

__all__ = ["DataPlane", "Timeouts", "Waker"]

Waker = Callable[[str], None]
"""Called with a pool's name when a request arrives for a sleeping pool (``wake`` set, no
backend): the service should start. Called again for later requests; must not block."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect: float = 5.0
    """To open a connection to a backend."""
    head: float = 30.0
    """For a client to send a request's head, and for an idle keep-alive client connection."""
    response: float = 60.0
    """For a backend to start its response once the request is sent, and between two reads of
    a body in either direction."""
    tunnel: float = 3600.0
    """Idle time of an upgraded (WebSocket) connection."""
    wake: float = 60.0
    """How long a request for a sleeping pool is held before it gets 503."""


class DataPlane(Protocol):
    """A reverse proxy on the platform's port, driven by :class:`RouteTable` values."""

    @property
    def name(self) -> str:
        """``haproxy`` or ``builtin``."""
        ...

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: a free port); the bound port. Serves 404 until the
        first :meth:`apply`."""
        ...

    async def apply(self, table: RouteTable) -> None:
        """Follow ``table`` from now on. Returns once new requests are routed by it. A backend
        missing from every pool gets no new request; requests in flight on it finish."""
        ...

    async def drained(self, backend_ids: Collection[str], *, timeout: float) -> bool:
        """Wait until no request is in flight on any of ``backend_ids`` (which should have left
        every pool), at most ``timeout`` seconds; whether they drained. Idle keep-alive
        connections to them are closed."""
        ...

    async def idle(self) -> Mapping[str, float]:
        """Per pool of the current table: seconds since a request for it last arrived (or since
        the pool appeared, if none has)."""
        ...

    async def close(self) -> None:
        """Stop listening and close every connection (a process of its own is stopped)."""
        ...
