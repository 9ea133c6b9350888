"""The HTTP service: ``create_app(index_path)`` (FastAPI), run by ``lookalike serve``."""

from lookalike.server.app import create_app

__all__ = ["create_app"]
