"""A throwaway PostgreSQL server for the tests: one per session, started by the first test
that needs it and stopped when the session ends.

The cluster itself (tests/pg_server.py, which the benchmarks share) runs in a temporary
directory on a free loopback port, as the `postgres` user when the tests run as root; here
with fsync off (nothing here must survive a power cut).

Where the server cannot start, the tests that need it skip, unless
ORCHESTRATOR_REQUIRE_POSTGRES=1 (which .ci/run sets) turns the skip into a failure.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from orchestrator.store.postgres_schema import MIGRATIONS
from tests.pg_server import SUPERUSER, PostgresServer, PostgresUnavailable, free_port

__all__ = ["SUPERUSER", "PostgresServer", "admin", "free_port", "fresh_schema", "server"]

REQUIRE = "ORCHESTRATOR_REQUIRE_POSTGRES"
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "deadlock_timeout": "100ms",  # a deadlock test waits this long, not the default second
}

_server: PostgresServer | None = None
_problem: str | None = None


def server() -> PostgresServer:
    """The session's server, started on first use; skips the test (fails it in CI) if it
    cannot start."""
    global _server, _problem
    if _server is None and _problem is None:
        try:
            _server = PostgresServer.start_new(SETTINGS)
        except PostgresUnavailable as error:
            _problem = str(error)
        else:  # should the session end without its teardown (an error in pytest itself)
            atexit.register(_server.remove)
    if _server is None:
        unavailable(_problem or "it did not start")
    assert _server is not None
    return _server


def unavailable(reason: str) -> None:
    """Skip the test for want of PostgreSQL, or fail it where PostgreSQL is required."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but PostgreSQL cannot start: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL cannot start here: {reason}")


async def admin(sql: str) -> None:
    """Run one statement as the superuser on the maintenance database."""
    conn = await asyncpg.connect(server().url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# Schemas for the store contract suite. Making and migrating one costs 30-90 ms, emptying
# a used one 2-5 ms, so a schema a test left at the current version is emptied (identities
# restarted too) and handed to the next test: as fresh as a new one, but for its
# schema_version row, which says "current" as a freshly migrated one would.
_free_schemas: list[str] = []
_emptying: list[str] | None = None

SCHEMA_VERSION = "SELECT max(version) FROM {schema}.schema_version"
TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename <> 'schema_version'"
IDENTITIES = """
    SELECT table_name, column_name FROM information_schema.columns
    WHERE table_schema = $1 AND is_identity = 'YES'
"""


async def fresh_schema() -> str:
    """An empty schema: a recycled one, else a new one that the first store migrates."""
    if _free_schemas:
        return _free_schemas.pop()
    name = server().new_name("contract")
    await admin(f'CREATE SCHEMA "{name}"')
    return name


async def recycle_schema(name: str) -> None:
    """Empty the schema for the next test if it holds the current schema, else drop it.
    Every connection to it must be closed."""
    global _emptying
    conn = await asyncpg.connect(server().url())
    try:
        quoted = f'"{name}"'
        migrated = await conn.fetchval("SELECT to_regclass($1)", f"{quoted}.schema_version")
        version = migrated and await conn.fetchval(SCHEMA_VERSION.format(schema=quoted))
        if version != len(MIGRATIONS):
            await conn.execute(f"DROP SCHEMA {quoted} CASCADE")
            return
        if _emptying is None:  # every current schema has the same tables
            tables = [row[0] for row in await conn.fetch(TABLES, name)]
            identities = [tuple(row) for row in await conn.fetch(IDENTITIES, name)]
            _emptying = [
                "BEGIN",
                "SET LOCAL session_replication_role = replica",  # no foreign-key order to keep
                *(f'DELETE FROM {{schema}}."{table}"' for table in tables),  # noqa: S608 - catalog names
                *(
                    f'ALTER TABLE {{schema}}."{t}" ALTER COLUMN "{c}" RESTART'
                    for t, c in identities
                ),
                "COMMIT",
            ]
        await conn.execute(";".join(_emptying).format(schema=quoted))
    finally:
        await conn.close()
    _free_schemas.append(name)


@pytest.fixture(scope="session", autouse=True)
def _postgres_session() -> Iterator[None]:
    """A server that some test started runs until the session ends, then is removed."""
    yield
    global _server
    _free_schemas.clear()
    if _server is not None:
        atexit.unregister(_server.remove)
        _server.remove()
        _server = None


@pytest.fixture
def postgres() -> PostgresServer:
    """The session's PostgreSQL server (the test skips where none can start)."""
    return server()


@pytest.fixture
async def postgres_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    name = postgres.new_name("test")
    await admin(f'CREATE DATABASE "{name}"')
    yield postgres.url(name)
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
