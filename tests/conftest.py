"""Fixtures every tier shares."""

from __future__ import annotations

import pytest

from tests.engine import handlers


@pytest.fixture(autouse=True)
def _reset_handlers() -> None:
    """Each test starts with fresh state in the test handlers."""
    handlers.reset()
