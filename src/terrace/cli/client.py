"""Talking to a Terrace API over HTTP: the client, and the errors a command can end with.

Every non-2xx answer becomes a :class:`RequestFailed` carrying the problem document; a server that
does not answer is :class:`Unreachable`. Neither message ever contains the API key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import httpx

from terrace import __version__
from terrace.cli.terminal import printable
from terrace.errors import TerraceError

__all__ = [
    "ApiClient",
    "CliError",
    "FieldError",
    "RequestFailed",
    "SpecProblem",
    "Target",
    "Unreachable",
    "UsageProblem",
    "normalize_url",
]

DEFAULT_TIMEOUT = 60.0  # seconds; creating a workspace may clone a repository
CONNECT_TIMEOUT = 10.0
TEXT = {"Accept": "text/plain, application/problem+json"}
"""What a request for a log accepts."""


class CliError(TerraceError):
    """A command cannot go on. ``exit_code`` is how the process ends: 1 unless a usage error."""

    exit_code = 1

    def lines(self) -> list[str]:
        """What to print on stderr, one line each; the first one gets ``error: ``."""
        return [str(self)]


class UsageProblem(CliError):
    """The command line or the configuration is incomplete or wrong: exit 2."""

    exit_code = 2


class Unreachable(CliError):
    """No answer from the API: refused, timed out, not HTTP."""


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class SpecProblem:
    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.file}:{self.line}:{self.column}: {self.message}{where}"


class RequestFailed(CliError):
    """The API answered with a problem document (or with some other non-2xx response)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        errors: tuple[FieldError, ...] = (),
        problems: tuple[SpecProblem, ...] = (),
    ) -> None:
        super().__init__(f"{title}: {detail}" if detail else title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.problems = problems

    def lines(self) -> list[str]:
        """The server's words, with control characters escaped (a detail may span lines)."""
        title, detail = printable(self.title), printable(self.detail, multiline=True)
        return [
            f"{title}: {detail}" if detail else title,
            *(f"{printable(e.path)}: {printable(e.message)}" for e in self.errors),
            *(printable(str(p)) for p in self.problems),
        ]

    @classmethod
    def from_response(cls, response: httpx.Response) -> RequestFailed:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        status = response.status_code
        if not isinstance(body, dict) or not isinstance(body.get("title"), str):
            text = " ".join(response.text.split())[:200]
            return cls(status, f"HTTP {status} {response.reason_phrase}".strip(), text)
        return cls(
            status,
            body["title"],
            str(body.get("detail") or ""),
            errors=tuple(_field_errors(body.get("errors"))),
            problems=tuple(_spec_problems(body.get("problems"))),
        )


def _field_errors(raw: object) -> list[FieldError]:
    items = raw if isinstance(raw, list) else []
    return [
        FieldError(str(e.get("path", "")), str(e.get("message", "")))
        for e in items
        if isinstance(e, dict)
    ]


def _spec_problems(raw: object) -> list[SpecProblem]:
    items = raw if isinstance(raw, list) else []
    return [
        SpecProblem(
            file=str(p.get("file", "")),
            line=_int(p.get("line")),
            column=_int(p.get("column")),
            path=str(p.get("path", "")),
            message=str(p.get("message", "")),
        )
        for p in items
        if isinstance(p, dict)
    ]


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def normalize_url(url: str) -> str:
    """``host:8400``, ``http://host:8400/`` and ``http://host:8400/api`` all name one API."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    url = url.removesuffix("/api")
    return url.rstrip("/")


@dataclass(frozen=True, slots=True)
class Target:
    """Which API to call and with which key; ``source`` says where the URL came from."""

    url: str
    key: str | None
    source: str

    def with_key(self, key: str) -> Target:
        return replace(self, key=key)


class ApiClient:
    """A synchronous client for ``{target.url}/api``; JSON in, JSON (or None for 204) out."""

    def __init__(self, target: Target, *, transport: httpx.BaseTransport | None = None) -> None:
        headers = {
            "User-Agent": f"terrace-cli/{__version__}",
            "Accept": "application/json, application/problem+json",
        }
        if target.key:
            headers["Authorization"] = f"Bearer {target.key}"
        self.target = target
        self._http = httpx.Client(
            base_url=target.url + "/api",
            headers=headers,
            timeout=httpx.Timeout(DEFAULT_TIMEOUT, connect=CONNECT_TIMEOUT),
            transport=transport,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if not response.is_success:
            raise RequestFailed.from_response(response)
        if response.status_code == httpx.codes.NO_CONTENT or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise RequestFailed(
                response.status_code,
                "Unexpected response",
                f"{self.target.url} did not answer with JSON; is it a Terrace API?",
            ) from None

    def _unreachable(self, exc: httpx.TransportError) -> Unreachable:
        reason = str(exc) or type(exc).__name__
        return Unreachable(
            f"cannot reach the Terrace API at {self.target.url}: {reason}; "
            "start one with `terrace server` or set TERRACE_API"
        )

    def text(self, path: str) -> str:
        """A plain-text resource (a log)."""
        try:
            response = self._http.get(path, headers=TEXT)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if not response.is_success:
            raise RequestFailed.from_response(response)
        return response.text

    @contextmanager
    def stream_text(
        self, path: str, *, params: Mapping[str, str] | None = None
    ) -> Iterator[Iterator[str]]:
        """A plain-text resource as it arrives, for as long as the server sends it."""
        try:
            with self._http.stream(
                "GET",
                path,
                params=params,
                headers=TEXT,
                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
            ) as response:
                if not response.is_success:
                    response.read()
                    raise RequestFailed.from_response(response)
                yield response.iter_text()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def get(self, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, json=json, timeout=timeout)

    def put(self, path: str, json: Any) -> Any:
        return self.request("PUT", path, json=json)

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str, json: Any = None) -> Any:
        return self.request("DELETE", path, json=json)
