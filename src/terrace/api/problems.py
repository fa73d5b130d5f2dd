"""Errors as ``application/problem+json`` (RFC 9457): the only place exceptions become responses.

Every problem has a stable ``type`` (``urn:terrace:problem:<slug>``), a ``title`` that is the same
for every problem of that type, and a ``detail`` about this one. Spec problems add ``problems``
(each ``{file, line, column, path, message}``); invalid requests add ``errors``. Input values are
never echoed back: they may be secrets.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from terrace.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    SourceError,
    SpecError,
    TerraceError,
    Unauthenticated,
    VaultError,
)
from terrace.sources import Busy

__all__ = ["KINDS", "MEDIA_TYPE", "CatchAll", "Problem", "install", "problem_response"]

log = logging.getLogger("terrace.api")
MEDIA_TYPE = "application/problem+json"
PREFIX = "urn:terrace:problem:"


class FieldError(BaseModel):
    path: str = Field(description="Where in the request: `body.name`, `path.teamId`, `query.x`.")
    message: str


class SpecProblem(BaseModel):
    file: str
    line: int
    column: int
    path: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=[PREFIX + "not-found"])
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    problems: list[SpecProblem] | None = None


@dataclass(frozen=True, slots=True)
class Kind:
    status: int
    slug: str
    title: str


BAD_REQUEST = Kind(400, "bad-request", "The body is not valid JSON")
UNAUTHENTICATED = Kind(401, "unauthenticated", "Missing or invalid API key")
FORBIDDEN = Kind(403, "forbidden", "Your role does not allow this")
NOT_FOUND = Kind(404, "not-found", "Not found")
METHOD_NOT_ALLOWED = Kind(405, "method-not-allowed", "Method not allowed")
CONFLICT = Kind(409, "conflict", "Conflict with the current state")
INVALID_REQUEST = Kind(422, "invalid-request", "The request is invalid")
INVALID_SPEC = Kind(422, "invalid-spec", "The landscape or provider file is invalid")
SOURCE_UNAVAILABLE = Kind(422, "source-unavailable", "The workspace source could not be read")
INTERNAL = Kind(500, "internal-error", "Internal error")
VAULT = Kind(500, "vault-error", "The vault could not open a secret")
BUSY = Kind(503, "busy", "The server is busy")

KINDS = (
    BAD_REQUEST,
    UNAUTHENTICATED,
    FORBIDDEN,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    CONFLICT,
    INVALID_REQUEST,
    INVALID_SPEC,
    SOURCE_UNAVAILABLE,
    INTERNAL,
    VAULT,
    BUSY,
)
"""Every problem type the API answers with (docs/api.md lists them)."""

# Exception class -> kind; the first matching class wins (subclasses first).
_BY_EXCEPTION: tuple[tuple[type[TerraceError], Kind], ...] = (
    (SpecError, INVALID_SPEC),
    (Unauthenticated, UNAUTHENTICATED),
    (Forbidden, FORBIDDEN),
    (NotFound, NOT_FOUND),
    (Conflict, CONFLICT),
    (InvalidInput, INVALID_REQUEST),
    (Busy, BUSY),
    (SourceError, SOURCE_UNAVAILABLE),
    (VaultError, VAULT),
)
_BY_STATUS = {kind.status: kind for kind in reversed(KINDS)}  # the first kind of each status
# PostgreSQL's "try again" conditions: serialization failure, deadlock.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}


def problem_response(
    kind: Kind, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PREFIX + kind.slug,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    headers = dict(headers or {})
    if kind.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if kind.status == 503:
        headers["Retry-After"] = "5"
    return JSONResponse(body, status_code=kind.status, media_type=MEDIA_TYPE, headers=headers)


async def _terrace_error(_request: Request, exc: Exception) -> JSONResponse:
    kind = next((k for cls, k in _BY_EXCEPTION if isinstance(exc, cls)), INTERNAL)
    if isinstance(exc, SpecError):
        problems = [{"file": p.file, **p.to_json()} for p in exc.problems]
        files = ", ".join(sorted({p.file for p in exc.problems}))
        return problem_response(
            kind, f"{len(problems)} problem(s) in {files}: see `problems`", problems=problems
        )
    if isinstance(exc, VaultError):
        # The message names key ids and the master key's file: for the server log only.
        log.error("vault error: %s", exc)
        return problem_response(kind, "a stored secret could not be opened; see the server log")
    errors = None
    if isinstance(exc, InvalidInput) and exc.field:
        errors = [{"path": f"body.{exc.field}", "message": str(exc)}]
    return problem_response(kind, str(exc), errors=errors)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()))
        errors.append({"path": location, "message": str(error.get("msg", "invalid"))})
    detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors) or "invalid request"
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return problem_response(BAD_REQUEST, detail)
    return problem_response(INVALID_REQUEST, detail, errors=errors)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _BY_STATUS.get(exc.status_code) or Kind(exc.status_code, "http-error", "HTTP error")
    detail = exc.detail if isinstance(exc.detail, str) else kind.title
    return problem_response(kind, detail, headers=exc.headers)


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    """A concurrent request won a race the code's own checks could not see: say so, as a 409."""
    assert isinstance(exc, DBAPIError)
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(exc, IntegrityError) or sqlstate in _RETRYABLE_SQLSTATES:
        return problem_response(
            CONFLICT, "a concurrent change to the same objects won; send the request again"
        )
    return _unexpected(_request, exc)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    incident = secrets.token_hex(6)
    log.error(
        "unexpected error %s in %s %s: %s",
        incident,
        request.method,
        request.url.path,
        type(exc).__name__,
        exc_info=exc,
    )
    return problem_response(
        INTERNAL, f"an unexpected error occurred; the server log has it as incident {incident}"
    )


class CatchAll:
    """Answer any exception no handler took with a 500 problem, inside the app.

    Starlette's own last resort (ServerErrorMiddleware) answers and then re-raises, so the server
    logs it twice and closes the keep-alive connection without saying so; the client's next
    request on it fails. Here the exception ends: logged once, answered, connection kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            response = _unexpected(Request(scope), exc)
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into a problem document."""
    app.add_exception_handler(TerraceError, _terrace_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_middleware(CatchAll)
