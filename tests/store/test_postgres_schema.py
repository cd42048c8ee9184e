"""PostgreSQL-specific: the schema version, forward migrations, a newer database refused,
replicas that start at once, and a server that cannot be reached named without its password.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from orchestrator.store import StoreUnavailable
from orchestrator.store import postgres_schema as schema
from orchestrator.store.postgres import PostgresStore
from tests import pg
from tests.pg import PostgresServer
from tests.store.conftest import seed_run

pytestmark = pytest.mark.usefixtures("postgres")


@pytest.fixture
async def url(postgres: PostgresServer) -> AsyncIterator[str]:
    """The URL of an empty schema, as a new database would be."""
    name = await pg.fresh_schema()
    yield postgres.url(search_path=name)
    await pg.recycle_schema(name)


@pytest.fixture
async def stores() -> AsyncIterator[list[PostgresStore]]:
    """Stores the test makes, closed at its end."""
    made: list[PostgresStore] = []
    yield made
    for store in made:
        await store.close()


async def versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [row[0] for row in await conn.fetch("SELECT version FROM schema_version")]
    finally:
        await conn.close()


async def execute(url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def opened(stores: list[PostgresStore], url: str) -> PostgresStore:
    store = PostgresStore(url, pool_max=2)
    stores.append(store)
    await store.open()
    return store


async def test_a_fresh_database_gets_the_current_version_once(
    url: str, stores: list[PostgresStore]
) -> None:
    """open() migrates an empty database to the current version, and a second open changes
    nothing: one version row, the number of migrations."""
    await opened(stores, url)
    await opened(stores, url)
    assert await versions(url) == [len(schema.MIGRATIONS)]


async def test_replicas_starting_at_once_migrate_it_once(
    url: str, stores: list[PostgresStore]
) -> None:
    """Five stores opening an empty database at the same moment all open, and the schema is
    made once (the advisory lock lets one migrate while the others wait)."""
    await asyncio.gather(*(opened(stores, url) for _ in range(5)))
    assert await versions(url) == [len(schema.MIGRATIONS)]
    run = await seed_run(stores[0])
    assert [await store.get_run(run.id) for store in stores] == [run] * 5


async def test_an_older_database_is_migrated_forward_with_its_rows(
    url: str, stores: list[PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at an earlier version is moved forward by the scripts it lacks, its rows
    kept, and its version raised."""
    first = await opened(stores, url)
    run = await seed_run(first)
    await first.close()
    later = [*schema.MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT DEFAULT 'later'"]
    monkeypatch.setattr(schema, "MIGRATIONS", later)
    second = await opened(stores, url)
    assert await versions(url) == [len(later)]
    assert await second.get_run(run.id) == run
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT note FROM runs WHERE id = $1", run.id) == "later"
    finally:
        await conn.close()


async def test_a_newer_database_is_refused_and_left_as_it_is(
    url: str, stores: list[PostgresStore]
) -> None:
    """A database migrated by a newer orchestrator is refused with the message SQLite gives,
    naming the database; it is left unchanged and the refused store stays closed."""
    await (await opened(stores, url)).close()
    newer = len(schema.MIGRATIONS) + 1
    await execute(url, "UPDATE schema_version SET version = $1", newer)
    refused = PostgresStore(url)
    stores.append(refused)
    message = (
        f"{url} has schema version {newer}; this orchestrator knows up to "
        f"{len(schema.MIGRATIONS)}: upgrade the orchestrator"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        await refused.open()
    assert await versions(url) == [newer]
    with pytest.raises(StoreUnavailable):
        await refused.ping()
    with pytest.raises(StoreUnavailable):
        async with refused.transaction():
            pass
    await refused.close()


@pytest.mark.parametrize(
    "credentials", ["orchestrator:s3cr%40t-pw@", "orchestrator@"], ids=["user", "query"]
)
async def test_an_unreachable_server_is_named_without_the_password(credentials: str) -> None:
    """open() on a port nothing listens on raises StoreUnavailable naming the server, with
    the password (in the user part or the query) shown as ***."""
    port = pg.free_port()
    query = "" if ":" in credentials else "?password=s3cr%40t-pw"
    store = PostgresStore(f"postgresql://{credentials}127.0.0.1:{port}/db{query}", pool_timeout=5)
    with pytest.raises(StoreUnavailable) as raised:
        await store.open()
    message = str(raised.value)
    assert "s3cr" not in message
    assert f"127.0.0.1:{port}/db" in message
    assert "***" in message
    assert "refused" in message.lower()
    await store.close()


async def test_a_user_who_cannot_create_tables_is_told_so(postgres: PostgresServer) -> None:
    """open() as a user without the right to create tables raises StoreUnavailable saying
    the schema cannot be migrated and why, and leaves the store closed."""
    role, schema = postgres.new_name("reader"), await pg.fresh_schema()
    await pg.admin(f'CREATE ROLE "{role}" LOGIN')
    url = postgres.url(search_path=schema).replace(f"{pg.SUPERUSER}@", f"{role}@")
    store = PostgresStore(url)
    try:
        with pytest.raises(
            StoreUnavailable,
            match=r"cannot migrate the schema of .*: .*Error: .*the user must be able to create tables",
        ):
            await store.open()
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
        await pg.recycle_schema(schema)
        await pg.admin(f'DROP ROLE "{role}"')
