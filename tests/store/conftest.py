"""Fixtures and record builders of the store contract suite, whose bodies run on every backend."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from orchestrator.barrier import Barrier
from orchestrator.ids import new_id
from orchestrator.model import JoinPolicy
from orchestrator.records import Event, Run, Task
from orchestrator.states import RunState, TaskMove, TaskState
from orchestrator.store import MemoryStore, SqliteStore, Store
from orchestrator.store.postgres import PostgresStore
from orchestrator.task_moves import TaskWrite
from tests import pg

BACKENDS = ["sqlite", "memory", "postgres"]


class StoreFactory:
    """Makes stores of one backend on one fresh database, and closes them all at teardown.

    A MemoryStore is its own database: for it, every store the factory makes is the same
    object, so "a second store on the database" and "the store reopened" are that object.
    A PostgreSQL "database" is a schema of its own on the session's server (the URL's
    search_path names it): as fresh as a new database, and made in a few milliseconds.
    """

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.database = str(tmp_path / "orchestrator.db")
        self._made: list[Store] = []
        self._memory: MemoryStore | None = None
        self.schema: str | None = None
        self.url = ""

    async def prepare(self) -> None:
        """Make the PostgreSQL schema this factory's stores use (other backends: nothing)."""
        if self.backend != "postgres" or self.schema is not None:
            return
        self.schema = await pg.fresh_schema()
        self.url = pg.server().url(search_path=self.schema)

    def new(self) -> Store:
        """A store on this factory's database, not yet opened (closed at teardown anyway)."""
        store: Store
        if self.backend == "sqlite":
            store = SqliteStore(self.database)
        elif self.backend == "memory":
            if self._memory is None:
                self._memory = MemoryStore()
            store = self._memory
        elif self.backend == "postgres":
            if not self.url:
                raise RuntimeError("StoreFactory.prepare() makes the PostgreSQL schema first")
            store = PostgresStore(self.url, pool_min=1, pool_max=4)
        else:
            raise ValueError(f"no store for backend {self.backend!r}")
        self._made.append(store)
        return store

    async def open(self) -> Store:
        """A second (third, ...) store on the same database, opened."""
        await self.prepare()
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
        if self.schema is not None:
            await pg.recycle_schema(self.schema)
            self.schema = None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def stores(backend: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(backend, tmp_path)
    try:
        await factory.prepare()
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


# Records for the contract tests to store.

T0 = 1_700_000_000.0


def make_event(
    *, trigger: str = "leads", dedup_key: str | None = None, now: float = T0, **payload: Any
) -> Event:
    return Event(new_id("evt", now), trigger, "outreach", now, dict(payload), dedup_key)


def make_run(event: Event, *, workflow: str = "outreach", now: float = T0) -> Run:
    spec = {"name": workflow, "steps": {"research": {"handler": "handlers.demo:research"}}}
    return Run(new_id("run", now), workflow, event.id, RunState.RUNNING, now, spec)


def make_task(run: Run, step: str = "research", key: str = "a", item: Any = None) -> Task:
    return Task(
        new_id("tsk", run.created_at), run.id, step, key, {"lead": key} if item is None else item
    )


def make_barrier(run: Run, step: str = "research", policy: JoinPolicy | None = None) -> Barrier:
    return Barrier(run.id, step, expected=4, required=4, policy=policy or JoinPolicy())


# The store never reads a write's move; the tests name it after the state the write reaches.
MOVE_TO = {
    TaskState.PENDING: TaskMove.REQUEUE,
    TaskState.DISPATCHED: TaskMove.DISPATCH,
    TaskState.SUCCEEDED: TaskMove.SUCCEED,
    TaskState.FAILED: TaskMove.FAIL,
    TaskState.TIMED_OUT: TaskMove.TIME_OUT,
    TaskState.CANCELLED: TaskMove.CANCEL,
}


def write(task: Task, expected: TaskState, attempt: int = 1) -> TaskWrite:
    """`task` as a write that applies only to a row still in `expected` at `attempt`."""
    return TaskWrite(task, expected, attempt, MOVE_TO[task.state])


async def seed_run(
    store: Store,
    *,
    workflow: str = "outreach",
    status: RunState = RunState.RUNNING,
    now: float = T0,
) -> Run:
    """A committed event and run; a finished `status` is reached through set_run_status."""
    event = make_event(now=now)
    run = make_run(event, workflow=workflow, now=now)
    async with store.transaction() as tx:
        await tx.insert_event(event)
        await tx.insert_run(run)
        if status is RunState.RUNNING:
            return run
        assert await tx.set_run_status(run.id, RunState.RUNNING, status, now + 1)
    return run.replace(status=status, finished_at=now + 1)


# Looking inside a SQLite file.


def schema_versions(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("SELECT version FROM schema_version")]


def set_schema_version(path: Path, version: int) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE schema_version SET version = ?", (version,))
