"""The database, before serving: `check` validates its URL and driver and, with --connect,
reads its schema version; `serve` opens it once, so that a database it cannot use is one
line saying why rather than a traceback from the server's startup."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from orchestrator.app import configured_store
from orchestrator.settings import ENV_PREFIX, ConfigError, Settings
from orchestrator.store import StoreUnavailable
from orchestrator.store.postgres_url import driver_problem, redact
from orchestrator.store.probe import schema_state


def database_origin(source: Path) -> str:
    """Where database_url came from, as problems name it: the variable, else the file."""
    variable = f"{ENV_PREFIX}DATABASE_URL"
    return f"environment variable {variable}" if variable in os.environ else str(source)


def check_database_driver(settings: Settings, source: Path) -> None:
    """ConfigError if the database URL's driver is not installed."""
    problem = driver_problem(settings.database_url)
    if problem is not None:
        raise ConfigError([f"{database_origin(source)}: database_url: {problem}"])


def connection_report(settings: Settings, source: Path) -> tuple[bool, str]:
    """Connect and read the schema version: (usable, one line saying what serve will do
    with the database), or (False, why it cannot be reached)."""
    try:
        state = asyncio.run(schema_state(settings.database_url, settings.database_pool_timeout))
    except StoreUnavailable as error:
        return False, f"{database_origin(source)}: database_url: {error}"
    return state.verdict != "newer", state.describe()


def open_store_once(settings: Settings) -> str | None:
    """Open (migrating) and close the store before serving: why it cannot be, or None.

    A database that is unreachable, refuses us or is newer than this code is one line,
    where uvicorn would print the lifespan's traceback.
    """

    async def attempt() -> None:
        store = configured_store(settings)
        try:
            await store.open()
        finally:
            await store.close()

    where = redact(settings.database_url)
    try:
        asyncio.run(attempt())
    except (StoreUnavailable, RuntimeError, OSError, sqlite3.Error) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        return message if where in message else f"cannot open the store at {where}: {message}"
    return None
