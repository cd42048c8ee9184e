"""The API tier's fixtures (the app over a real SQLite file, an ASGI client) for the fuzz tests."""

from tests.api.conftest import app, client

__all__ = ["app", "client"]
