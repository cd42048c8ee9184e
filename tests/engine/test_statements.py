"""What the engine asks of SQLite: a constant number of statements per batch, whatever its size.

A statement here is one call into the database (`execute` or `executemany`): one round
trip on a networked database. Transaction control (BEGIN, SAVEPOINT, RELEASE, COMMIT) is
counted apart. The figures are pinned so that a change that adds a statement per task, or
one to the callback path, shows up here first (docs/decisions.md, section 15).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from orchestrator.engine import Engine
from orchestrator.states import Outcome
from orchestrator.store import SqliteStore
from tests.engine import handlers
from tests.engine.conftest import awaiting_callbacks, wait_for_end, workflow

CONTROL = ("BEGIN", "SAVEPOINT", "RELEASE", "COMMIT", "ROLLBACK", "PRAGMA")


class Counting:
    """The writer connection, counting the statements run through it."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements: Counter[str] = Counter()
        self.counting = False

    def _note(self, sql: str) -> None:
        if self.counting:
            words = sql.split()
            kind = "control" if words and words[0].upper() in CONTROL else "statement"
            self.statements[kind] += 1

    def execute(self, sql: str, *args: Any) -> Any:
        self._note(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._note(sql)
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture
async def counted(
    sqlite_store: SqliteStore,
) -> AsyncIterator[tuple[Callable[..., Engine], Counting]]:
    commits = sqlite_store._commits
    assert commits is not None
    counting = Counting(commits._conn)
    commits._conn = counting  # type: ignore[assignment]
    engines: list[Engine] = []
    async with httpx.AsyncClient() as http:

        def make(workflows: Any) -> Engine:
            engine = Engine(sqlite_store, workflows, http=http)
            engines.append(engine)
            return engine

        yield make, counting
        for engine in engines:
            await engine.close()


async def test_one_accepted_callback_costs_seven_statements(
    counted: tuple[Callable[..., Engine], Counting],
) -> None:
    """Receipt check, task read, barrier read, task write, barrier write, receipt, history."""
    make, counting = counted
    engine = make({"wf": workflow(wait={"handler": "hand_off", "for_each": "event.items"})})
    await awaiting_callbacks(engine, "wf", 2)
    ctx = handlers.STATE.handed_off["0"]
    task = await engine.store.get_task(ctx.task_id)
    assert task is not None
    counting.counting = True
    verdict, _ = await engine.callback(
        task, 1, "msg-1", hashlib.sha256(b"{}").hexdigest(), Outcome.SUCCEEDED, {"ok": True}, None
    )
    counting.counting = False
    assert verdict.value == "accepted"
    assert counting.statements["statement"] == 7
    assert counting.statements["control"] <= 4, "BEGIN, SAVEPOINT, RELEASE, COMMIT"


async def test_a_fan_out_costs_the_same_statements_whatever_its_size(
    counted: tuple[Callable[..., Engine], Counting],
) -> None:
    """Firing a run of N local tasks, dispatching them and recording their results costs a
    constant number of statements: no more for 400 tasks than for 10."""
    make, counting = counted
    engine = make({"wf": workflow(fan={"handler": "echo", "for_each": "event.items"})})
    spent = {}
    for items in (10, 400):
        counting.statements.clear()
        counting.counting = True
        with engine.bus.subscribe() as subscription:
            fired = await engine.fire("wf", {"items": list(range(items))})
            assert fired.run_id is not None
            await wait_for_end(subscription, fired.run_id, within=20)
        counting.counting = False
        spent[items] = counting.statements["statement"]
    assert spent[400] <= spent[10] <= 30, spent
