"""What the PostgreSQL store needs around asyncpg: its connection type, its errors as the
store's, and batches as the column arrays that `unnest` reads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg import exceptions as pg
from asyncpg.pool import PoolConnectionProxy

from orchestrator.store.base import StoreConflict, StoreUnavailable

K = TypeVar("K")

# A connection of its own, or one lent by the pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# Races and replicas: the whole transaction is worth trying again.
CONFLICTS = (pg.TransactionRollbackError, pg.UniqueViolationError)
# The server is gone, starting, stopping, full or refusing us: a temporary problem.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    pg.PostgresConnectionError,
    pg.OperatorInterventionError,
    pg.InsufficientResourcesError,
    pg.InvalidAuthorizationSpecificationError,
    pg.InvalidCatalogNameError,
    pg.ReadOnlySQLTransactionError,
    pg.IdleInTransactionSessionTimeoutError,
    pg.LockNotAvailableError,
)


def describe(error: BaseException) -> str:
    """One line for a driver or network error: its message, else its kind."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextmanager
def translating() -> Iterator[None]:
    """Driver errors as the store's: StoreConflict (try again) or StoreUnavailable (503)."""
    try:
        yield
    except CONFLICTS as error:
        raise StoreConflict(f"PostgreSQL: {describe(error)}") from error
    except UNAVAILABLE as error:
        raise StoreUnavailable(f"PostgreSQL: {describe(error)}") from error


def text(value: str | None) -> str | None:
    """A free-text value PostgreSQL can hold: its text type refuses NUL, which an error
    message from a handler or a service may carry; U+FFFD stands in for it."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays `unnest` reads."""
    return [list(column) for column in zip(*rows, strict=True)]


def rounds(keys: Sequence[K]) -> list[list[int]]:
    """The positions of a batch in rounds, each holding a key at most once, in order.

    One UPDATE cannot apply two writes to one row (it joins each row to one of them), so the
    n-th write of each key goes in round n: a batch without repeats is one round.
    """
    seen: dict[K, int] = {}
    found: list[list[int]] = []
    for position, key in enumerate(keys):
        n = seen[key] = seen.get(key, -1) + 1
        if n == len(found):
            found.append([])
        found[n].append(position)
    return found
