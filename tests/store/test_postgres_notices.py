"""PostgreSQL-specific: notices between replicas (LISTEN/NOTIFY), delivered on commit only,
and a RECONNECTED notice after the listening connection was lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator.store import Notice
from orchestrator.store.base import RECONNECTED
from orchestrator.store.postgres import PostgresStore
from tests import pg
from tests.pg import PostgresServer

pytestmark = pytest.mark.usefixtures("postgres")


@pytest.fixture
async def url(postgres: PostgresServer) -> AsyncIterator[str]:
    name = await pg.fresh_schema()
    yield postgres.url(search_path=name)
    await pg.recycle_schema(name)


@pytest.fixture
async def pair(url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema: two replicas."""
    first, second = PostgresStore(url, pool_max=2), PostgresStore(url, pool_max=2)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


class Heard:
    def __init__(self) -> None:
        self.notices: asyncio.Queue[Notice] = asyncio.Queue()

    def __call__(self, notice: Notice) -> None:
        self.notices.put_nowait(notice)

    async def next(self) -> Notice:
        async with asyncio.timeout(10):
            return await self.notices.get()


async def test_a_notice_arrives_at_the_other_replica_once_committed(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """A notice left in a transaction reaches the other store's listener after COMMIT; one
    from a transaction that rolled back never does."""
    sender, receiver = pair
    heard = Heard()
    await receiver.listen(heard)

    async def rolled_back() -> None:
        async with sender.transaction() as tx:
            tx.notify("history", "lost")
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await rolled_back()
    async with sender.transaction() as tx:
        tx.notify("history", "41")
        tx.notify("replica", "rep_a 1800000000.0")
    assert await heard.next() == Notice("history", "41")
    assert await heard.next() == Notice("replica", "rep_a 1800000000.0")
    assert heard.notices.empty()


async def test_a_lost_listening_connection_comes_back_and_says_so(
    pair: tuple[PostgresStore, PostgresStore], postgres: PostgresServer, url: str
) -> None:
    """When the server drops the listener's connection, the store connects again and
    delivers RECONNECTED, then hears notices as before."""
    sender, receiver = pair
    heard = Heard()
    await receiver.listen(heard)
    async with sender.transaction() as tx:
        await tx.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
    assert await heard.next() == Notice(RECONNECTED, "")
    async with sender.transaction() as tx:
        tx.notify("history", "99")
    assert await heard.next() == Notice("history", "99")
