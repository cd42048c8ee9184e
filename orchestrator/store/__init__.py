"""Stores: where events, runs, tasks, barriers and history persist."""

from __future__ import annotations

from orchestrator.store.base import (
    RECONNECTED,
    BarrierWrite,
    CallbackToken,
    KeptEvent,
    Notice,
    NoticeFn,
    Page,
    Receipt,
    RejectionCount,
    Store,
    StoreConflict,
    StoreTx,
    StoreUnavailable,
    Unfinished,
    Wait,
    WaitKey,
)
from orchestrator.store.memory import MemoryStore
from orchestrator.store.postgres_url import EXAMPLE, EXTRA, is_postgres, postgres_problem
from orchestrator.store.sqlite import SqliteStore, sqlite_path

__all__ = [
    "RECONNECTED",
    "BarrierWrite",
    "CallbackToken",
    "KeptEvent",
    "MemoryStore",
    "Notice",
    "NoticeFn",
    "Page",
    "Receipt",
    "RejectionCount",
    "SqliteStore",
    "Store",
    "StoreConflict",
    "StoreTx",
    "StoreUnavailable",
    "Unfinished",
    "Wait",
    "WaitKey",
    "open_store",
    "url_problem",
]

SQLITE_EXAMPLE = "sqlite:///PATH"


def url_problem(url: str) -> str | None:
    """What is wrong with a database URL, without connecting; None if it can be tried."""
    if url.startswith("sqlite:"):
        try:
            sqlite_path(url)
        except ValueError as error:
            return str(error)
        return None
    if is_postgres(url):
        return postgres_problem(url)
    scheme = url.split(":", 1)[0] if ":" in url else url
    return (
        f"unsupported database URL scheme {scheme!r}: expected {SQLITE_EXAMPLE} (relative), "
        f"sqlite:////PATH (absolute) or {EXAMPLE}"
    )


def open_store(
    url: str,
    synchronous: str = "FULL",
    *,
    pool_min: int = 1,
    pool_max: int = 10,
    pool_timeout: float = 10.0,
    busy_timeout: float = 2.0,
) -> Store:
    """The store for a database URL (not yet opened); ValueError says what is wrong with it.

    The pool settings size a PostgreSQL store's connection pool; `synchronous` is SQLite's;
    `busy_timeout` is how long a write may wait for the database before StoreUnavailable.
    """
    if url.startswith("sqlite:"):
        return SqliteStore(sqlite_path(url), synchronous=synchronous, busy_timeout=busy_timeout)
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    try:  # asyncpg is an optional extra: imported only when a URL asks for it
        from orchestrator.store.postgres import PostgresStore
    except ModuleNotFoundError as error:
        if error.name != "asyncpg":
            raise
        raise ValueError(f"a postgresql:// database needs the asyncpg driver: {EXTRA}") from None
    return PostgresStore(url, pool_min=pool_min, pool_max=pool_max, pool_timeout=pool_timeout)
