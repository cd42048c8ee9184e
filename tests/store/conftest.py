"""Fixtures of the store contract suite: every test body runs against every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.store import SqliteStore, Store

# A PostgresStore joins by adding its name here and a branch in StoreFactory.new.
BACKENDS = ["sqlite"]


class StoreFactory:
    """Makes stores of one backend on one fresh database, and closes them all at teardown."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.database = str(tmp_path / "orchestrator.db")
        self._made: list[Store] = []

    def new(self) -> Store:
        """A store on this factory's database, not yet opened (closed at teardown anyway)."""
        store: Store
        if self.backend == "sqlite":
            store = SqliteStore(self.database)
        else:
            raise ValueError(f"no store for backend {self.backend!r}")
        self._made.append(store)
        return store

    async def open(self) -> Store:
        """A second (third, ...) store on the same database, opened."""
        store = self.new()
        await store.open()
        return store

    async def close(self, store: Store) -> None:
        """Close `store` now instead of at teardown."""
        self._made.remove(store)
        await store.close()

    async def close_all(self) -> None:
        while self._made:
            await self._made.pop().close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def stores(backend: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(backend, tmp_path)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture
async def store(stores: StoreFactory) -> Store:
    return await stores.open()


@pytest.fixture
def sqlite_file(backend: str, stores: StoreFactory) -> Path:
    """The SQLite file behind `stores`; skips the test on every other backend."""
    if backend != "sqlite":
        pytest.skip("SQLite-specific: reads the file's schema_version table")
    return Path(stores.database)
