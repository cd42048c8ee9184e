"""Database URLs without a database: what makes one usable, how it is shown without its
password, and the clear error when the PostgreSQL driver is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from orchestrator.settings import ConfigError, load_settings
from orchestrator.store import open_store, url_problem
from orchestrator.store.postgres_url import driver_problem, postgres_problem, redact, scrub


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://orch:hunter2@db:5432/orch", "postgresql://orch:***@db:5432/orch"),
        ("postgres://orch:p%40ss@db/orch?sslmode=require", "postgres://orch:***@db/orch?sslmode=require"),
        ("postgresql://orch@db/orch?password=hunter2&x=1", "postgresql://orch@db/orch?password=***&x=1"),
        ("postgresql://orch:a@b@h1:5432,h2:5433/orch", "postgresql://orch:***@h1:5432,h2:5433/orch"),
        ("postgresql://db/orch", "postgresql://db/orch"),
        ("sqlite:///orchestrator.db", "sqlite:///orchestrator.db"),
    ],
)  # fmt: skip
def test_redact_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    """A password in the user part or in the query is shown as ***; everything else stays."""
    assert redact(url) == shown


def test_scrub_removes_the_decoded_password_from_a_message() -> None:
    """A driver message that quotes the password (decoded) shows *** instead."""
    url = "postgresql://orch:p%40ss@db/orch"
    assert scrub("auth failed for p@ss", url) == "auth failed for ***"
    assert scrub("nothing to hide", "postgresql://db/orch") == "nothing to hide"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://orch:pw@db.internal:5432/orch",
        "postgres://db/orch",
        "postgresql://[::1]:5432/orch",
        "postgresql:///orch?host=/run/postgresql",
        "postgresql://h1:5432,h2:5433/orch?target_session_attrs=read-write",
    ],
)
def test_usable_postgres_urls_pass(url: str) -> None:
    """URLs naming a server (a host, several, an IPv6 address, a socket directory) pass."""
    assert postgres_problem(url) is None
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql:///orch", "names no server: expected postgresql://USER:PASSWORD@HOST"),
        ("postgresql://u:secret@:5432/orch", "names no server"),
        ("postgresql://db:http/orch", "port 'http' is not a number from 1 to 65535"),
        ("postgresql://db:70000/orch", "port '70000'"),
        ("mysql://db/orch", "unsupported database URL scheme 'mysql': expected sqlite:///PATH"),
        ("orchestrator.db", "unsupported database URL scheme 'orchestrator.db'"),
        ("sqlite:orchestrator.db", "expected a URL such as sqlite:///orchestrator.db"),
    ],
)
def test_unusable_urls_say_what_is_expected(url: str, expected: str) -> None:
    """Each unusable URL gets one line saying what was expected, never with its password."""
    problem = url_problem(url)
    assert problem is not None
    assert expected in problem
    assert "secret" not in problem


def test_a_config_with_an_unusable_url_names_file_field_and_expectation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_settings reports a bad database_url with its file (or environment variable),
    the field and what was expected."""
    monkeypatch.delenv("ORCHESTRATOR_DATABASE_URL", raising=False)
    config = tmp_path / "bad.toml"
    config.write_text('database_url = "postgresql:///orch"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert raised.value.problems[0].startswith(f"{config}: database_url: postgresql:///orch names")
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "mysql://db/orch")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert raised.value.problems[0].startswith(
        "environment variable ORCHESTRATOR_DATABASE_URL: database_url: unsupported"
    )


def test_pool_bounds_must_be_in_order(tmp_path: Path) -> None:
    """database_pool_max below database_pool_min is refused, naming both."""
    config = tmp_path / "pool.toml"
    config.write_text("database_pool_min = 5\ndatabase_pool_max = 2\n")
    with pytest.raises(ConfigError, match="database_pool_max: must be at least database_pool_min"):
        load_settings(config)


def test_without_the_driver_the_extra_to_install_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """With asyncpg missing, check's driver test and open_store both name the extra to install."""
    url = "postgresql://db/orch"
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "asyncpg" else found(name, *a)
    )
    assert driver_problem(url) == (
        "a postgresql:// database needs the asyncpg driver: pip install 'orchestrator[postgres]'"
    )
    assert driver_problem("sqlite:///x.db") is None
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # `import asyncpg` now fails
    monkeypatch.delitem(sys.modules, "orchestrator.store.postgres", raising=False)
    with pytest.raises(ValueError, match=r"pip install 'orchestrator\[postgres\]'"):
        open_store(url)
