"""What `orchestrator check --connect` learns of a database without changing it: that it
answers, and its schema version beside the newest this orchestrator knows."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from orchestrator.store.base import StoreUnavailable
from orchestrator.store.postgres_url import redact, scrub
from orchestrator.store.sqlite import sqlite_path
from orchestrator.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS


@dataclass(frozen=True, slots=True)
class SchemaState:
    """A database's schema version (0: none yet) beside the newest this code knows."""

    where: str
    version: int
    known: int
    exists: bool = True

    @property
    def verdict(self) -> str:
        """current, older (serve migrates it forward) or newer (serve refuses it)."""
        if self.version == self.known:
            return "current"
        return "older" if self.version < self.known else "newer"

    def describe(self) -> str:
        """One line for people: where, what version, and what `serve` will do about it."""
        if not self.exists:
            return f"{self.where}: no database yet; serve creates it at schema version {self.known}"
        said = f"{self.where}: connected, schema version {self.version} of {self.known}"
        if self.verdict == "current":
            return f"{said} (current)"
        if self.verdict == "older":
            return f"{said} (older: serve migrates it forward)"
        return f"{said} (newer: serve refuses it; upgrade the orchestrator)"


async def schema_state(url: str, connect_timeout: float = 10.0) -> SchemaState:
    """Connect, read the schema version, disconnect; StoreUnavailable if it cannot."""
    if url.startswith("sqlite:"):
        return await asyncio.to_thread(_sqlite_state, sqlite_path(url))
    return await _postgres_state(url, connect_timeout)


def _sqlite_state(path: str) -> SchemaState:
    known = len(SQLITE_MIGRATIONS)
    if not Path(path).exists():
        return SchemaState(path, 0, known, exists=False)
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            found = db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchall()
            rows = db.execute("SELECT max(version) FROM schema_version").fetchall() if found else []
    except sqlite3.Error as error:
        raise StoreUnavailable(f"cannot read {path}: {error}") from None
    return SchemaState(path, (rows[0][0] or 0) if rows else 0, known)


async def _postgres_state(url: str, connect_timeout: float) -> SchemaState:
    import asyncpg  # an optional extra: `check` names it first if it is missing

    from orchestrator.store.postgres_driver import UNAVAILABLE, describe
    from orchestrator.store.postgres_schema import MIGRATIONS, stored_version

    try:
        conn = await asyncpg.connect(url, timeout=connect_timeout)
        try:
            version = await stored_version(conn)
        finally:
            await conn.close()
    except (*UNAVAILABLE, asyncpg.PostgresError, ValueError) as error:
        cause = scrub(describe(error), url)
        raise StoreUnavailable(f"cannot connect to {redact(url)}: {cause}") from None
    return SchemaState(redact(url), version, len(MIGRATIONS))
