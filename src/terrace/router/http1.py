"""HTTP/1.1 as the builtin plane (:mod:`terrace.router.builtin`) speaks it: limits, what it does
with each header, its own answers, body framing, and the heads it reads and writes.

A request head is filled in by the client parser's callbacks (:class:`_Request`); a response head
is read from the raw bytes llhttp accepted (:class:`_Head`). Bodies are framed as they pass on
(:func:`_frame`: sized bodies as they are, chunked bodies re-chunked). The codes for how an
exchange ended are here too, as both sides' connections and the plane use them. No I/O here.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from http import HTTPStatus
from typing import Final

MAX_HEAD: Final = 64 * 1024
MAX_REQUEST_LINE: Final = 8 * 1024

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_CRLF: Final = b"\r\n"

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
_RESPONSE_KINDS: Final = {**_HOP_BY_HOP, b"content-length": _LENGTH}
"""The response headers the plane reads or removes (Content-Length is only read; an app's
``X-Request-Id`` passes, as every header not hop-by-hop)."""
_SPECIAL_FIRST: Final = frozenset(b"cCkKpPtTuUxX")
"""The first bytes of those names: other header lines are kept without a look at the name."""
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b""})

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


def _bad(text: str) -> _Reply:
    return _Reply(HTTPStatus.BAD_REQUEST, f"bad request: {text}")


def _new_id() -> bytes:
    """A random (version 4) UUID in its canonical text form, as HAProxy's ``uuid`` makes them;
    not for secrets, so no system call."""
    h = b"%032x" % (_random_bits(128) & _UUID_MASK | _UUID_BITS)
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


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


class _Head:
    """A response head as the client gets it, read from the raw bytes llhttp accepted."""

    __slots__ = ("end", "kept", "length", "status_line", "transfer_encoding", "upgrade_to")

    def __init__(self, raw: bytes, start: int) -> None:
        """The head that starts at ``start`` in ``raw`` (complete: llhttp parsed it)."""
        line_end = raw.index(b"\r\n", start)
        end = raw.index(b"\r\n\r\n", line_end)  # the end of the last header line
        self.end = end + 4
        if raw.startswith(b"HTTP/1.1 ", start) and line_end - start > 13:
            self.status_line = raw[start : line_end + 2]
        else:
            self.status_line = _status_line(raw[start : line_end + 2])
        self.length = False
        self.transfer_encoding: bytes | None = None
        self.upgrade_to: bytes | None = None
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
                            coding: bytes | None = self.transfer_encoding
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
