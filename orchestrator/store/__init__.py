"""Stores: where events, runs, tasks, barriers and history persist."""

from __future__ import annotations

from orchestrator.store.base import (
    BarrierWrite,
    CallbackToken,
    Page,
    Receipt,
    RejectionCount,
    Store,
    StoreConflict,
    StoreTx,
    StoreUnavailable,
    Unfinished,
)
from orchestrator.store.memory import MemoryStore
from orchestrator.store.sqlite import SqliteStore, sqlite_path

__all__ = [
    "BarrierWrite",
    "CallbackToken",
    "MemoryStore",
    "Page",
    "Receipt",
    "RejectionCount",
    "SqliteStore",
    "Store",
    "StoreConflict",
    "StoreTx",
    "StoreUnavailable",
    "Unfinished",
    "open_store",
]


def open_store(url: str, synchronous: str = "FULL", busy_timeout: float = 2.0) -> Store:
    """The store for a database URL (not yet opened); ValueError names an unknown scheme.

    `busy_timeout`: how long a write may wait for the database before StoreUnavailable."""
    if url.startswith("sqlite:"):
        return SqliteStore(sqlite_path(url), synchronous=synchronous, busy_timeout=busy_timeout)
    scheme = url.split(":", 1)[0]
    raise ValueError(f"unsupported database URL scheme {scheme!r}: expected sqlite:///PATH")
