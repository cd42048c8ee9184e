"""The Store contract, callbacks: tokens, receipts, the server key and reads of one task.

The tests speak only the Store and StoreTx protocols, never SQL, so every backend runs them
unchanged through the `store` fixture; the two that pin SQLite's own choices ask for
`sqlite_file` or `sqlite_backend`, which skip on other backends. A MemoryStore is its own
database, so on it "a second store" and "the store reopened" are the same object.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.ids import new_id
from orchestrator.records import Task
from orchestrator.states import RunState, TaskState
from orchestrator.store import CallbackToken, Receipt, Store, StoreUnavailable
from orchestrator.store.sqlite_schema import MIGRATIONS
from tests.store.conftest import (
    T0,
    StoreFactory,
    make_task,
    seed_run,
    set_schema_version,
    write,
)

# Token hashes are opaque strings to the store: sha256 hex in production, any text here.
HASH_A = "a" * 64
HASH_B = "b" * 64


@pytest.fixture
def sqlite_backend(backend: str) -> str:
    """The backend name; skips the test on every backend but SQLite."""
    if backend != "sqlite":
        pytest.skip("SQLite-specific: pins a choice the Store protocol leaves open")
    return backend


async def seed_tasks(store: Store, count: int = 1) -> list[Task]:
    """`count` committed tasks of one running run, the rows tokens and receipts point at."""
    run = await seed_run(store)
    tasks = [make_task(run, key=f"item-{i}") for i in range(count)]
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)
    return tasks


async def insert_token_then_fail(store: Store, task: Task) -> None:
    """One transaction that inserts HASH_A for `task`, then raises LookupError."""
    async with store.transaction() as tx:
        await tx.insert_callback_tokens([CallbackToken(HASH_A, task.id, 1)])
        raise LookupError


# Callback tokens.


async def token_of(store: Store, token_hash: str) -> tuple[str, int] | None:
    """(task id, attempt) a token hash resolves to through callback_target."""
    found = await store.callback_target(token_hash)
    return None if found is None else (found[0].id, found[1])


async def test_callback_target_finds_the_task_and_attempt_of_a_known_hash(store: Store) -> None:
    """callback_target answers the task and attempt a committed token hash was issued for."""
    [task] = await seed_tasks(store)
    async with store.transaction() as tx:
        await tx.insert_callback_tokens([CallbackToken(HASH_A, task.id, 3)])
    assert await token_of(store, HASH_A) == (task.id, 3)


async def test_callback_target_of_an_unknown_hash_is_none(store: Store) -> None:
    """callback_target answers None for a hash that was never inserted, even beside known ones."""
    [task] = await seed_tasks(store)
    assert await token_of(store, HASH_A) is None
    async with store.transaction() as tx:
        await tx.insert_callback_tokens([CallbackToken(HASH_A, task.id, 1)])
    assert await token_of(store, HASH_B) is None


async def test_inserting_a_known_hash_again_keeps_the_first_row(store: Store) -> None:
    """Inserting a stored hash again, later or twice in one call, keeps the first row."""
    first, second = await seed_tasks(store, 2)
    async with store.transaction() as tx:
        await tx.insert_callback_tokens([CallbackToken(HASH_A, first.id, 1)])
    async with store.transaction() as tx:
        await tx.insert_callback_tokens([CallbackToken(HASH_A, second.id, 2)])
        await tx.insert_callback_tokens(
            [CallbackToken(HASH_B, first.id, 1), CallbackToken(HASH_B, second.id, 5)]
        )
    assert await token_of(store, HASH_A) == (first.id, 1)
    assert await token_of(store, HASH_B) == (first.id, 1)


async def test_tokens_of_two_attempts_of_one_task_both_resolve(store: Store) -> None:
    """A retried task's earlier token keeps resolving, to its own attempt, beside the new one."""
    [task] = await seed_tasks(store)
    async with store.transaction() as tx:
        await tx.insert_callback_tokens([CallbackToken(HASH_A, task.id, 1)])
    async with store.transaction() as tx:
        await tx.insert_callback_tokens([CallbackToken(HASH_B, task.id, 2)])
    assert await token_of(store, HASH_A) == (task.id, 1)
    assert await token_of(store, HASH_B) == (task.id, 2)


async def test_tokens_of_a_rolled_back_transaction_do_not_resolve(store: Store) -> None:
    """Tokens inserted by a transaction that raises are gone with it."""
    [task] = await seed_tasks(store)
    with pytest.raises(LookupError):
        await insert_token_then_fail(store, task)
    assert await token_of(store, HASH_A) is None


# Receipts.


async def test_receipt_is_missing_before_and_the_body_hash_after(store: Store) -> None:
    """receipts answers nothing for a key until insert_receipts, then its body hash, later too."""
    [task] = await seed_tasks(store)
    key = (task.id, "msg_1")
    async with store.transaction() as tx:
        assert await tx.receipts({key}) == {}
        await tx.insert_receipts([Receipt(task.id, "msg_1", "body-hash-1", T0 + 1)])
        assert await tx.receipts({key}) == {key: "body-hash-1"}
    async with store.transaction() as tx:
        assert await tx.receipts({key}) == {key: "body-hash-1"}


async def test_receipts_are_kept_per_task_and_webhook_id(store: Store) -> None:
    """A receipt answers only for its own (task, webhook id): another id or task has its own."""
    first, second = await seed_tasks(store, 2)
    async with store.transaction() as tx:
        await tx.insert_receipts([Receipt(first.id, "msg_1", "first-1", T0)])
        assert await tx.receipts({(first.id, "msg_2")}) == {}
        assert await tx.receipts({(second.id, "msg_1")}) == {}
        await tx.insert_receipts(
            [Receipt(first.id, "msg_2", "first-2", T0), Receipt(second.id, "msg_1", "second-1", T0)]
        )
    async with store.transaction() as tx:
        assert await tx.receipts({(first.id, "msg_1")}) == {(first.id, "msg_1"): "first-1"}
        assert await tx.receipts({(first.id, "msg_2")}) == {(first.id, "msg_2"): "first-2"}
        assert await tx.receipts({(second.id, "msg_1")}) == {(second.id, "msg_1"): "second-1"}


# The server key.


async def test_server_key_is_32_bytes_and_stable(store: Store) -> None:
    """server_key is 32 bytes and the same on every call."""
    key = await store.server_key()
    assert isinstance(key, bytes)
    assert len(key) == 32
    assert await store.server_key() == key


async def test_server_key_is_shared_by_stores_on_one_database(
    store: Store, stores: StoreFactory
) -> None:
    """A second store on the same database, and the first one reopened, see the same key."""
    key = await store.server_key()
    assert await (await stores.open()).server_key() == key
    await stores.close(store)
    assert await (await stores.open()).server_key() == key


async def test_server_key_made_at_once_by_two_stores_is_one_key(stores: StoreFactory) -> None:
    """Two stores asking a fresh database for its key at the same time get the same key."""
    first, second = await stores.open(), await stores.open()
    keys = await asyncio.gather(first.server_key(), second.server_key())
    assert keys[0] == keys[1]
    assert await first.server_key() == keys[0]


async def test_server_key_differs_between_databases(
    store: Store, backend: str, tmp_path: Path
) -> None:
    """Each database makes its own random key rather than sharing a constant one."""
    elsewhere = StoreFactory(backend, tmp_path / "elsewhere")
    try:
        other = await elsewhere.open()
        assert await other.server_key() != await store.server_key()
    finally:
        await elsewhere.close_all()


# Reading one task outside a transaction.


async def test_get_task_of_an_unknown_id_is_none(store: Store) -> None:
    """Store.get_task answers None for an id no task has."""
    await seed_tasks(store)
    assert await store.get_task(new_id("tsk")) is None


async def test_get_task_sees_committed_writes_only(store: Store) -> None:
    """Store.get_task reads a task once its insert or write commits, not before."""
    run = await seed_run(store)
    task = make_task(run)
    dispatched = replace(task, state=TaskState.DISPATCHED, started_at=T0 + 1, awaiting=True)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        assert await store.get_task(task.id) is None
    assert await store.get_task(task.id) == task
    async with store.transaction() as tx:
        assert await tx.write_tasks([write(dispatched, TaskState.PENDING)]) == {task.id}
        assert await store.get_task(task.id) == task
    assert await store.get_task(task.id) == dispatched


# SQLite's own choices.


async def test_refused_open_leaves_no_open_connection(
    store: Store, stores: StoreFactory, sqlite_file: Path
) -> None:
    """A store whose open() refuses a newer schema is left closed: unusable, and safe to close."""
    await stores.close(store)
    set_schema_version(sqlite_file, len(MIGRATIONS) + 1)
    refused = stores.new()
    with pytest.raises(RuntimeError, match="upgrade the orchestrator"):
        await refused.open()
    with pytest.raises(StoreUnavailable):
        await refused.ping()
    with pytest.raises(StoreUnavailable):
        async with refused.transaction():
            pass
    await refused.close()
    await refused.close()


async def test_list_runs_limit_zero_is_read_as_one(store: Store, sqlite_backend: str) -> None:
    """list_runs(limit=0) answers the same page as limit=1: the newest run and a cursor."""
    runs = [await seed_run(store, status=RunState.SUCCEEDED, now=T0 + i) for i in range(3)]
    zero = await store.list_runs(limit=0)
    assert zero == await store.list_runs(limit=1)
    assert zero.items == [runs[-1]]
    assert zero.next_cursor is not None
