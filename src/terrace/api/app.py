"""The FastAPI application: routers under ``/api``, problem+json errors, an honest OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from sqlalchemy import text

from terrace import __version__
from terrace.api import problems, teams, users, vault, workspaces
from terrace.api.context import AppContext, context
from terrace.api.models import Health

__all__ = ["create_app"]

PREFIX = "/api"
# Statuses any authenticated operation may answer with a problem document.
ERROR_STATUSES = {
    "401": "Missing, unknown, expired or revoked API key",
    "403": "Your role does not allow this",
    "404": "No such object, or one in a team you are not in",
    "409": "Conflicts with the current state",
    "422": "The request is invalid",
    "500": "Internal error",
}


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(
        title="Terrace API",
        version=__version__,
        description="Teams, workspaces, env vars and the vault. Errors are RFC 9457 problem+json.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
    )
    app.state.terrace = ctx
    problems.install(app)
    for module in (users, teams, workspaces, vault):
        app.include_router(module.router, prefix=PREFIX)

    @app.get(f"{PREFIX}/health", tags=["meta"], summary="Is the API up, and its store reachable")
    def health(request: Request) -> Health:
        ctx = context(request)
        with ctx.db.session() as session:
            session.execute(text("SELECT 1"))
        return Health(status="ok", version=__version__, database=ctx.db.dialect)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components.update(_problem_schemas())
    problem = {problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in schema.get("paths", {}).items():
        public = path == f"{PREFIX}/health"
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, description in ERROR_STATUSES.items():
                if public and code not in {"422", "500"}:
                    continue
                responses[code] = {"description": description, "content": problem}
            if "requestBody" in operation:
                responses["400"] = {"description": "The body is not JSON", "content": problem}
    app.openapi_schema = schema
    return schema


def _problem_schemas() -> dict[str, Any]:
    definitions = problems.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = definitions.pop("$defs", {})
    return {"Problem": definitions, **nested}
