"""docs/configuration.md is generated from the models, complete, and never out of date."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import configdoc
from orchestrator.settings import Settings

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_file_is_what_the_generator_prints() -> None:
    """Edit a field or its description and this fails until `make docs` is run."""
    assert COMMITTED.read_text() == configdoc.render(), "run `make docs` and commit the result"


def test_every_option_has_a_description() -> None:
    """No option reaches the reference without saying what it does."""
    assert configdoc.undocumented() == []


def test_every_top_level_option_is_listed_with_its_environment_variable() -> None:
    """Each Settings field appears once, under the ORCHESTRATOR_ name that overrides it."""
    text = configdoc.render()
    for name in Settings.model_fields:
        assert text.count(f"| `{name}` |") == 1, name
        if name not in ("services", "workflows", "triggers"):
            assert f"`ORCHESTRATOR_{name.upper()}`" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (300.0, '"5m"'),
        (2592000.0, '"30d"'),
        (0.25, '"250ms"'),
        (5400.0, '"90m"'),
        (1.5, '"1500ms"'),
        (0.0001, "0.0001"),
    ],
)
def test_durations_are_written_the_way_a_config_writes_them(seconds: float, text: str) -> None:
    """Defaults read like config values: the largest unit that divides them evenly."""
    assert configdoc.duration_text(seconds) == text
