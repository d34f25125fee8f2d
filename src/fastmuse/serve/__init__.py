"""`fastmuse serve`: the model as an HTTP service (OpenAI Images API compatible)."""

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
