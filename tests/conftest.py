"""Fixtures every tier shares."""

from __future__ import annotations

import pytest

from tests.engine import handlers

# The PostgreSQL server of the session (tests/pg.py), for the tests that ask for it.
pytest_plugins = ["tests.pg"]


@pytest.fixture(autouse=True)
def _reset_handlers() -> None:
    """Each test starts with fresh state in the test handlers."""
    handlers.reset()
