"""The configuration HAProxy starts with: everything the runtime API cannot create (pure).

HAProxy 2.6 cannot add backends, maps or rules at run time, so the file declares them all once and
:mod:`terrace.router.haproxy` then only changes map entries and servers over the runtime socket:

- two maps (files in the state folder, empty at start): ``hosts.map`` (each host some route
  names, and the same with a trailing dot, to itself) and ``prefix.map`` (route keys to route
  values, see :func:`route_value`);
- ``slots`` empty backends per balance algorithm (``rr0``.., ``lc0``..): a pool is given one of
  them for as long as it exists and its backends become dynamic servers there;
- the ``activator`` backend, where every sleeping pool's requests go: one dynamic server, the
  activator (added when it starts), and the server timeout of a request that waits for a wake.

How the frontend routes a request (verified on HAProxy 2.6.12), in as few rules as it can: every
rule costs each request, and this file is what the plane's throughput against nginx's comes down
to (``bench/router.py``; 32 strip rules, one pair per depth, once cost a fifth of it):

1. The key: the ``Host`` header lowercased, ``:port`` cut, looked up in ``hosts.map`` (``*`` when
   that fails: no header, an IP literal, a host no route names: the default routes), then the
   path, then ``/``. ``prefix.map`` holds ``host+prefix+"/"`` (``host+"/"`` for the root) and is
   read with ``map_beg``, which HAProxy 2.6 indexes as a prefix tree and answers with the longest
   matching entry whatever the insertion order. The ``/`` at the end of both is a segment
   boundary: ``/api`` and ``/api/x`` match the route ``/api``, ``/apis`` does not.
2. The value ``flags?backend?pool?pad?strip`` (``?`` is in no prefix, backend or pool name)
   names the backend: the pool's slot, or ``activator`` while it sleeps (that backend adds
   ``X-Terrace-Pool: pool`` for the activator). No value: the default backend answers 404.
   ``flags`` is ``p`` when the route strips (else ``-``): then ``X-Forwarded-Prefix`` is
   ``strip`` and the path loses its first ``depth`` segments in one rule. 2.6's ``field()``
   takes no variable, so ``pad`` (``MAX_STRIP_DEPTH - depth`` slashes) goes in front of the path
   first: the rest of the path then always starts at the same field.

Request headers are what Heroku's router sets (:mod:`terrace.router.plane`): ``X-Request-Id``
is HAProxy's ``uuid`` (version 4, the canonical text form) unless the request has one, kept in
``txn.id`` for the plane's own answers (``hdr`` of ``http-error`` and the 404: evaluated only
when one is sent; by a 502 or 504 the request itself is gone). No rule touches a backend's
response: each rule costs every request (an ``http-after-response`` id cost 3,600 instructions
a request, an ``X-Forwarded-Host``, which says what ``Host`` says, 2,500). Only the activator's
backend sets ``X-Terrace-Pool`` (replacing any a client sent): no rule removes it elsewhere, an
app may see a client's. When a pool last had a request is its slot backend's ``lastsess``
(``show stat``, whole seconds), which HAProxy keeps anyway.

Other things HAProxy 2.6.12 does that shaped this file: a relative ``stats socket`` path needs the
``unix@`` prefix; ``http-request set-timeout`` is refused in a frontend (so the longer server
timeout of a request that waits for a wake is the ``activator`` backend's own); after a 502 it
closes the client connection without saying so, and a client that reuses it loses its next
request: the 502 and 504 answers carry ``Connection: close`` (``http-error ... hdr``: no rule
per response); ``-q`` would hide the messages of a failed start too.
"""

from __future__ import annotations

from dataclasses import dataclass

from terrace.router.plane import Timeouts
from terrace.router.table import Balance

__all__ = [
    "ACTIVATOR",
    "ACTIVATOR_BACKEND",
    "DEFAULT_THREADS",
    "HOSTS_MAP",
    "MAPS",
    "MAX_STRIP_DEPTH",
    "MAX_THREADS",
    "POOL_HEADER",
    "PREFIX_MAP",
    "SOCKET",
    "Layout",
    "render",
    "route_value",
    "slot_balance",
    "slot_names",
]

HOSTS_MAP = "hosts.map"
PREFIX_MAP = "prefix.map"
MAPS = (HOSTS_MAP, PREFIX_MAP)
SOCKET = "admin.sock"
MAX_STRIP_DEPTH = 16
"""The most path segments a route may strip (``/_ws/12-3000`` is 2)."""
DEFAULT_THREADS = 1
"""HAProxy's threads unless told otherwise. One: a Terrace machine's router shares its cores with
the apps behind it, and a second thread makes each request cost more CPU (on 2 cores,
with the backend and the load beside it, 4-13 % more CPU a request with 2 threads in 3 of 4
interleaved comparisons). One thread carries 40,000-55,000 requests a second there; a router
with cores to spare gets more with ``--router-threads``."""
MAX_THREADS = 64
"""The most threads Debian's HAProxy is built for (``haproxy -vv``: MAX_THREADS)."""
POOL_HEADER = "X-Terrace-Pool"
ACTIVATOR_BACKEND = "activator"
"""The backend where sleeping pools' requests go (no slot has this name)."""
ACTIVATOR = f"{ACTIVATOR_BACKEND}/activator"
"""The activator's server."""
_STRIPS = "if { var(txn.route) -m beg p }"
_ID = " hdr X-Request-Id %[var(txn.id)]"
"""The request's id on an answer of the plane's own (none before the request was read)."""
_NO_ROUTE = "no-route"
_FORWARDED = ("X-Forwarded-Prefix", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port")
_SLOT_PREFIX = {Balance.ROUND_ROBIN: "rr", Balance.LEAST_CONN: "lc"}

_MESSAGES = {
    400: "bad request",
    408: "request head not received in time",
    500: "internal error in the router",
    502: "bad gateway: the backend failed before answering",
    503: "service unavailable: no backend can take the request",
    504: "gateway timeout: the backend did not answer in time",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """What the configuration is made from."""

    listen: str
    """The ``bind`` address: ``fd@N`` for a socket the plane opened, or ``host:port``."""
    port: int
    """The port ``listen`` is bound to: ``X-Forwarded-Port``."""
    timeouts: Timeouts
    slots: int
    maxconn: int
    stop_grace: float
    threads: int = DEFAULT_THREADS
    """HAProxy's ``nbthread``."""


def slot_names(balance: Balance, slots: int) -> tuple[str, ...]:
    return tuple(f"{_SLOT_PREFIX[balance]}{index}" for index in range(slots))


def slot_balance(slot: str) -> Balance | None:
    """The balance of the slot backend called ``slot``; None for another name."""
    prefix, number = slot[:2], slot[2:]
    if not number.isdigit():
        return None
    return next((b for b, p in _SLOT_PREFIX.items() if p == prefix), None)


def route_value(*, slot: str, pool: str, strip: str, sleeping: bool) -> str:
    """A route's map value, ``flags?backend?pool?pad?strip`` (see the module's docstring).

    ``strip`` is the path prefix the route removes ("" for none), at most
    :data:`MAX_STRIP_DEPTH` segments; no part but ``strip`` holds a ``?`` (none can, in fact).
    """
    depth = strip.count("/")
    if depth > MAX_STRIP_DEPTH:
        raise ValueError(
            f"HAProxy strips at most {MAX_STRIP_DEPTH} path segments, {strip!r} has {depth}"
        )
    pad = "/" * (MAX_STRIP_DEPTH - depth) if strip else ""
    backend = ACTIVATOR_BACKEND if sleeping else slot
    return f"{'p' if strip else '-'}?{backend}?{pool}?{pad}?{strip}"


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}"


def render(layout: Layout) -> str:
    """The configuration text. Paths are relative: HAProxy runs in the state folder."""
    t = layout.timeouts
    # A sleeping pool's request waits in the activator up to `wake`, then for its backend.
    held = t.wake + t.connect + t.response
    lines = [
        "# Written by Terrace at each start; changes at run time go through the runtime API.",
        "global",
        f"  nbthread {layout.threads}",
        f"  maxconn {layout.maxconn}",
        f"  hard-stop-after {_ms(layout.stop_grace)}",
        f"  stats socket unix@{SOCKET} mode 600 level admin",
        "  stats timeout 2h",
        "",
        "defaults",
        "  mode http",
        "  option http-keep-alive",
        "  option forwardfor",
        "  http-reuse safe",
        "  retries 3",
        "  option redispatch 1",
        f"  timeout connect {_ms(t.connect)}",
        f"  timeout http-request {_ms(t.head)}",
        f"  timeout http-keep-alive {_ms(t.head)}",
        f"  timeout client {_ms(max(t.head, t.response))}",
        f"  timeout server {_ms(t.response)}",
        f"  timeout tunnel {_ms(t.tunnel)}",
        *(
            f'  http-error status {status} content-type text/plain string "{text}\\n"'
            + (" hdr Connection close" if status in (502, 504) else "")
            + _ID
            for status, text in _MESSAGES.items()
        ),
        "",
        "frontend terrace",
        f"  bind {layout.listen}",
        # The request's id, or a new one; kept for the plane's own answers (_ID).
        "  http-request add-header X-Request-Id %[uuid] unless { req.fhdr(x-request-id) -m found }",
        "  http-request set-var(txn.id) req.fhdr(x-request-id)",
        # What a client sent as X-Forwarded-* goes, but for X-Forwarded-For (a list: HAProxy
        # adds the client's address to it). A delete then an add is cheaper than a set. The port
        # is the one the plane bound: a constant costs less than dst_port.
        *(f"  http-request del-header {name}" for name in _FORWARDED),
        "  http-request add-header X-Forwarded-Proto http",
        f"  http-request add-header X-Forwarded-Port {layout.port}",
        "  http-request set-var(txn.path) path",
        "  http-request set-var(txn.route) req.fhdr(host),lower,field(1,:),"
        f"map_str({HOSTS_MAP},*),concat(,txn.path,/),map_beg({PREFIX_MAP})",
        f"  http-request add-header X-Forwarded-Prefix %[var(txn.route),field(5,?,0)] {_STRIPS}",
        "  http-request set-path /%[var(txn.route),field(4,?),concat(,txn.path),"
        f"field({MAX_STRIP_DEPTH + 2},/,0)] {_STRIPS}",
        "  use_backend %[var(txn.route),field(2,?)]",  # none for "": the default
        f"  default_backend {_NO_ROUTE}",
    ]
    lines += [
        "",
        f"backend {_NO_ROUTE}",
        '  http-request return status 404 content-type text/plain string "no route\\n"' + _ID,
        "",
        f"backend {ACTIVATOR_BACKEND}",
        f"  timeout server {_ms(held)}",
        f"  http-request set-header {POOL_HEADER} %[var(txn.route),field(3,?)]",
    ]
    for balance in Balance:
        for slot in slot_names(balance, layout.slots):
            lines += ["", f"backend {slot}", f"  balance {balance.value}"]
    return "\n".join(lines) + "\n"
