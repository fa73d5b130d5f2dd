"""The REST API: FastAPI under ``/api``, one module per resource, problem+json errors."""

from terrace.api.app import create_app
from terrace.api.context import AppContext

__all__ = ["AppContext", "create_app"]
