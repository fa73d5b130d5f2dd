"""The configuration HAProxy starts with: everything the runtime API cannot create (pure).

HAProxy 2.6 cannot add backends, maps or rules at run time, so the file declares them all once and
:mod:`terrace.router.haproxy` then only changes map entries and servers over the runtime socket:

- three maps (files in the state folder, empty at start): ``hosts.map`` (each host some route
  names, and the same with a trailing dot, to itself), ``exact.map`` and ``prefix.map`` (route
  keys to route values, see :func:`route_value`);
- ``slots`` empty backends per balance algorithm (``rr0``.., ``lc0``..): a pool is given one of
  them for as long as it exists and its backends become dynamic servers there;
- a stick table keyed by pool name whose entries' expiry says when a pool last had a request.

How the frontend routes a request (verified on HAProxy 2.6.12):

1. ``host``: the ``Host`` header lowercased, ``:port`` removed, looked up in ``hosts.map``; ``*``
   when that fails (no header, an IP literal, a host no route names): the default routes.
2. ``key`` = host + path. ``exact.map`` holds ``host+prefix`` for each route (a request for the
   prefix itself); ``prefix.map`` holds ``host+prefix+"/"`` (``host+"/"`` for the root) and is
   read with ``map_beg``, which HAProxy 2.6 indexes as a prefix tree and answers with the longest
   matching entry whatever the insertion order. The exact hit, when there is one, is the longest
   match; a ``/`` ends every prefix key, so ``/api`` never matches ``/apis``.
3. No value: 404. Else the value ``slot/depth/pool/sleeping`` picks the slot backend; ``depth``
   path segments are stripped with ``field()`` (2.6's ``bytes()`` takes no variable, so one rule
   pair per depth up to :data:`MAX_STRIP_DEPTH`), ``X-Forwarded-Prefix`` set to them; a sleeping
   pool's requests carry ``X-Terrace-Pool`` for the activator behind its slot.

Other things HAProxy 2.6.12 does that shaped this file: a relative ``stats socket`` path needs the
``unix@`` prefix; ``http-request set-timeout`` is refused in a frontend (so each slot sets the
longer server timeout of a sleeping pool itself); after a 502 it closes the client connection
without saying so, and a client that reuses it loses its next request: the 502 and 504 answers
carry ``Connection: close``; ``-q`` would hide the messages of a failed start too.
"""

from __future__ import annotations

from dataclasses import dataclass

from terrace.router.plane import Timeouts
from terrace.router.table import Balance

__all__ = [
    "ACTIVATOR",
    "EXACT_MAP",
    "HOSTS_MAP",
    "IDLE_EXPIRE_MS",
    "IDLE_TABLE",
    "MAPS",
    "MAX_STRIP_DEPTH",
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
EXACT_MAP = "exact.map"
PREFIX_MAP = "prefix.map"
MAPS = (HOSTS_MAP, EXACT_MAP, PREFIX_MAP)
SOCKET = "admin.sock"
IDLE_TABLE = "idle"
IDLE_EXPIRE_MS = 24 * 24 * 3600 * 1000
"""The stick table's expiry (24 days, near HAProxy's longest timer): ms left = ms since use."""
MAX_STRIP_DEPTH = 16
"""The most path segments a route may strip (``/_ws/12-3000`` is 2)."""
POOL_HEADER = "X-Terrace-Pool"
ACTIVATOR = "terrace:activator"
"""The server name of the activator in a sleeping pool's slot (no backend id has a colon)."""
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
    timeouts: Timeouts
    slots: int
    maxconn: int
    stop_grace: float


def slot_names(balance: Balance, slots: int) -> tuple[str, ...]:
    return tuple(f"{_SLOT_PREFIX[balance]}{index}" for index in range(slots))


def slot_balance(slot: str) -> Balance | None:
    """The balance of the slot backend called ``slot``; None for another name."""
    prefix, number = slot[:2], slot[2:]
    if not number.isdigit():
        return None
    return next((b for b, p in _SLOT_PREFIX.items() if p == prefix), None)


def route_value(*, slot: str, depth: int, pool: str, sleeping: bool) -> str:
    """A route's map value (no part holds a ``/``: slot and pool names cannot)."""
    return f"{slot}/{depth}/{pool}/{int(sleeping)}"


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
            for status, text in _MESSAGES.items()
        ),
        "",
        "frontend terrace",
        f"  bind {layout.listen}",
        f"  http-request del-header {POOL_HEADER}",
        "  http-request del-header X-Forwarded-Prefix",
        "  http-request set-header X-Request-Id %[uuid,regsub(-,,g)]"
        " unless { req.hdr(x-request-id) -m found }",
        "  http-request set-var(txn.request_id) req.fhdr(x-request-id)",
        "  http-request set-header X-Forwarded-Proto http",
        "  http-request set-header X-Forwarded-Host %[req.fhdr(host)]"
        " if { req.fhdr(host) -m found }",
        "  http-request del-header X-Forwarded-Host unless { req.fhdr(host) -m found }",
        "  http-request set-header X-Forwarded-Port %[dst_port]",
        "  http-request set-var(txn.host) str(*)",
        "  http-request set-var(txn.host) req.fhdr(host),lower,regsub(:[^:]*$,),"
        f"map_str({HOSTS_MAP})",
        "  http-request set-var(txn.path) path",
        "  http-request set-var(txn.key) var(txn.host),concat(,txn.path)",
        f"  http-request set-var(txn.route) var(txn.key),map_str({EXACT_MAP})",
        f"  http-request set-var(txn.route) var(txn.key),map_beg({PREFIX_MAP})"
        " unless { var(txn.route) -m found }",
        '  http-request return status 404 content-type text/plain string "no route\\n"'
        " unless { var(txn.route) -m found }",
        "  http-request set-var(txn.slot) var(txn.route),field(1,/)",
        "  http-request set-var(txn.strip) var(txn.route),field(2,/)",
        "  http-request set-var(txn.pool) var(txn.route),field(3,/)",
        "  http-request set-var(txn.sleeping) var(txn.route),field(4,/)",
        f"  http-request track-sc0 var(txn.pool) table {IDLE_TABLE}",
        f"  http-request set-header {POOL_HEADER} %[var(txn.pool)]"
        " if { var(txn.sleeping) -m str 1 }",
    ]
    for depth in range(1, MAX_STRIP_DEPTH + 1):
        when = f"if {{ var(txn.strip) -m int {depth} }}"
        lines += [
            f"  http-request set-header X-Forwarded-Prefix %[path,field(1,/,{depth + 1})] {when}",
            f"  http-request set-path /%[path,field({depth + 2},/,0)] {when}",
        ]
    lines += [
        "  use_backend %[var(txn.slot)]",
        "  http-after-response set-header Connection close if { status 502 } || { status 504 }",
        "  http-after-response set-header X-Request-Id %[var(txn.request_id)]"
        " if { var(txn.request_id) -m found }",
        "",
        f"backend {IDLE_TABLE}",
        f"  stick-table type string len 100 size 1m expire {IDLE_EXPIRE_MS}",
    ]
    for balance in Balance:
        for slot in slot_names(balance, layout.slots):
            lines += [
                "",
                f"backend {slot}",
                f"  balance {balance.value}",
                f"  http-request set-timeout server {_ms(held)}"
                " if { var(txn.sleeping) -m str 1 }",
            ]
    return "\n".join(lines) + "\n"
