"""A client of HAProxy's runtime API (the admin "stats socket"), for :mod:`terrace.router.haproxy`.

One connection in ``prompt`` mode, kept open and shared under a lock: HAProxy answers each
command line with its output followed by the prompt ``"\\n> "``, so several commands can be
written at once and their answers read back in order (pipelining). Measured on HAProxy 2.6 on a
2-core machine: ~0.045 ms per command this way, ~0.19 ms with one connection per command (what
``socat`` does).

HAProxy's CLI has no status codes: a command that worked prints a known text (often nothing),
anything else is its complaint. :meth:`RuntimeApi.run` checks each answer against what the
caller expects and raises :class:`HaproxyError` naming the command otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from terrace.errors import TerraceError

__all__ = ["Command", "HaproxyError", "RuntimeApi", "escape"]

PROMPT = b"\n> "
_MAX_ANSWER = 1 << 26  # bytes: "show map" of a large table fits
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less the terminating NUL
_IDLE_RECONNECT = 600.0  # seconds: well under the socket's "stats timeout"


class HaproxyError(TerraceError):
    """HAProxy did not start, refused a runtime command, or ran out of pre-declared slots."""


def escape(word: str) -> str:
    """``word`` as one argument of a CLI command line (``\\`` and ``;`` are special there)."""
    return word.replace("\\", "\\\\").replace(";", "\\;")


@dataclass(frozen=True, slots=True)
class Command:
    """A command line and what HAProxy prints when it works (a prefix; "" for silent ones)."""

    line: str
    ok: str | None = ""
    """The expected start of the answer; None accepts any answer (a ``show`` command)."""

    def check(self, answer: str) -> str:
        if self.ok is None or (answer.startswith(self.ok) if self.ok else answer == ""):
            return answer
        raise HaproxyError(f"haproxy refused {self.line!r}: {answer.strip() or '(no answer)'}")


class RuntimeApi:
    """The runtime API socket at ``path``, one command batch at a time."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._used = 0.0
        self._dir_fd: int | None = None

    async def show(self, line: str) -> str:
        """The output of one command whose answer is not checked (``show ...``)."""
        (answer,) = await self.run([Command(line, None)])
        return answer

    async def run(self, commands: Sequence[Command]) -> list[str]:
        """Send ``commands`` in order on one connection; their answers. Raises
        :class:`HaproxyError` at the first answer that is not what its command expects (the
        commands after it have run too: HAProxy does not stop)."""
        if not commands:
            return []
        async with self._lock:
            reader, writer = await self._connection()
            writer.write("".join(f"{c.line}\n" for c in commands).encode())
            try:
                await writer.drain()
                raw = [await reader.readuntil(PROMPT) for _ in commands]
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                await self._drop()
                raise HaproxyError(f"haproxy's runtime API failed: {exc!r}") from exc
            self._used = asyncio.get_running_loop().time()
        answers = [r[: -len(PROMPT)].decode(errors="replace").rstrip("\n") for r in raw]
        for command, answer in zip(commands, answers, strict=True):
            command.check(answer)
        return answers

    async def wait_ready(self, *, timeout: float) -> None:
        """Until the socket answers (HAProxy creates it late in its start), at most ``timeout``
        seconds; raises OSError or TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.show("show info")
                except HaproxyError:
                    await asyncio.sleep(0.01)  # the process is starting; cheap to ask again
                else:
                    return

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        if self._streams is not None and (
            self._streams[0].at_eof() or loop.time() - self._used > _IDLE_RECONNECT
        ):
            await self._drop()
        if self._streams is None:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    self._address(), limit=_MAX_ANSWER
                )
            except OSError as exc:
                raise HaproxyError(f"cannot reach haproxy's runtime API: {exc}") from exc
            self._streams = reader, writer
            try:
                writer.write(b"prompt\n")
                await writer.drain()
                await reader.readuntil(PROMPT)
            except (OSError, asyncio.IncompleteReadError) as exc:
                await self._drop()
                raise HaproxyError(f"haproxy's runtime API failed: {exc!r}") from exc
        return self._streams

    def _address(self) -> str:
        """The socket's path, or an equivalent short one when it is too long for a Unix socket
        address (through ``/proc/self/fd`` and an open descriptor of its directory)."""
        path = str(self._path)
        if len(path.encode()) <= _SUN_PATH_MAX:
            return path
        if self._dir_fd is None:
            self._dir_fd = os.open(self._path.parent, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._dir_fd}/{self._path.name}"

    async def _drop(self) -> None:
        if self._streams is None:
            return
        _, writer = self._streams
        self._streams = None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
