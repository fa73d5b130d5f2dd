"""The FastAPI application: routers under ``/api``, problem+json errors, an honest OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from sqlalchemy import text

from terrace import __version__
from terrace.api import domains, landscape, problems, teams, users, vault, workspaces
from terrace.api.context import AppContext, context
from terrace.api.models import Health

__all__ = ["create_app"]

PREFIX = "/api"
# Statuses any operation may answer with a problem document; the public health check only
# the last three.
ERROR_STATUSES = (401, 403, 404, 409, 422, 500, 503)
PUBLIC_ERROR_STATUSES = (422, 500, 503)


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(
        title="Terrace API",
        version=__version__,
        description="Teams, workspaces, env vars and the vault. Errors are RFC 9457 problem+json.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.terrace = ctx
    problems.install(app)
    for module in (users, teams, workspaces, landscape, domains, vault):
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
            statuses = list(PUBLIC_ERROR_STATUSES if public else ERROR_STATUSES)
            if "requestBody" in operation:
                statuses.append(400)
            for status in statuses:
                titles = sorted({k.title for k in problems.KINDS if k.status == status})
                responses[str(status)] = {"description": "; ".join(titles), "content": problem}
    app.openapi_schema = schema
    return schema


def _problem_schemas() -> dict[str, Any]:
    definitions = problems.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = definitions.pop("$defs", {})
    return {"Problem": definitions, **nested}
