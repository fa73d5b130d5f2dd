"""Errors as ``application/problem+json`` (RFC 9457): the only place exceptions become responses.

Every problem has a stable ``type`` (``urn:terrace:problem:<slug>``), a ``title`` that is the same
for every problem of that type, and a ``detail`` about this one. Spec problems add ``problems``
(each ``{file, line, column, path, message}``); invalid requests add ``errors``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

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

__all__ = ["MEDIA_TYPE", "Problem", "install", "problem_response"]

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


# exception class -> (status, slug, title); the first matching class wins.
_KINDS: list[tuple[type[TerraceError], int, str, str]] = [
    (SpecError, 422, "invalid-spec", "The landscape or provider file is invalid"),
    (Unauthenticated, 401, "unauthenticated", "Missing or invalid API key"),
    (Forbidden, 403, "forbidden", "Your role does not allow this"),
    (NotFound, 404, "not-found", "Not found"),
    (Conflict, 409, "conflict", "Conflict with the current state"),
    (InvalidInput, 422, "invalid-request", "The request is invalid"),
    (SourceError, 422, "source-unavailable", "The workspace source could not be fetched"),
    (VaultError, 500, "vault-error", "The vault could not open a secret"),
]
_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Missing or invalid API key"),
    403: ("forbidden", "Your role does not allow this"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict with the current state"),
    413: ("too-large", "The request is too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-request", "The request is invalid"),
}


def problem_response(status: int, slug: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _terrace_error(_request: Request, exc: Exception) -> JSONResponse:
    kind = next((k for k in _KINDS if isinstance(exc, k[0])), None)
    if kind is None:  # pragma: no cover - every TerraceError subclass is listed
        return await _unexpected(_request, exc)
    _, status, slug, title = kind
    if isinstance(exc, SpecError):
        problems = [{"file": p.file, **p.to_json()} for p in exc.problems]
        files = sorted({p.file for p in exc.problems})
        detail = f"{len(problems)} problem(s) in {', '.join(files)}: see `problems`"
        return problem_response(status, slug, title, detail, problems=problems)
    if isinstance(exc, VaultError):
        log.error("vault error: %s", exc)  # names keys and files, never values
    errors = None
    if isinstance(exc, InvalidInput) and exc.field:
        errors = [{"path": f"body.{exc.field}", "message": str(exc)}]
    return problem_response(status, slug, title, str(exc), errors=errors)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()))
        # Never echo the input back: it may be a secret value.
        errors.append({"path": location, "message": str(error.get("msg", "invalid"))})
    detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors) or "invalid request"
    return problem_response(422, "invalid-request", "The request is invalid", detail, errors=errors)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    return problem_response(exc.status_code, slug, title, detail)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
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
        500,
        "internal-error",
        "Internal error",
        f"an unexpected error occurred; the server log has it as incident {incident}",
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into a problem document."""
    app.add_exception_handler(TerraceError, _terrace_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
