"""Notices between replicas: PostgreSQL's LISTEN/NOTIFY on one channel per schema.

A transaction's notices are sent with `pg_notify` in its last round trip before COMMIT,
so PostgreSQL delivers them only if it commits, and only after. Each store listens on a
connection of its own (not one of the pool's). If that connection drops, it is made
again with backoff, and a RECONNECTED notice tells the engine to read the store once for
what it may have missed: a lost notice delays news, never loses a change. Reconnecting is
a timer that doubles after each failure, never a loop that sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog

from orchestrator.store.base import RECONNECTED, Notice, NoticeFn
from orchestrator.store.postgres_driver import UNAVAILABLE, describe
from orchestrator.store.postgres_url import scrub

log = structlog.get_logger("orchestrator.store")

SEND = "SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n"
RETRY_FIRST, RETRY_MAX = 0.2, 5.0
SEPARATOR = "\t"


def channel_of(schema: str) -> str:
    """The channel the replicas on one schema share (an identifier of at most 63 bytes)."""
    return ("orchestrator_" + schema)[:63]


def encode(topic: str, payload: str) -> str:
    return f"{topic}{SEPARATOR}{payload}"


def decode(message: str) -> Notice:
    topic, _, payload = message.partition(SEPARATOR)
    return Notice(topic, payload)


async def send(conn: Any, channel: str, notices: Sequence[tuple[str, str]]) -> None:
    """The transaction's notices, in one round trip (PostgreSQL holds them until COMMIT)."""
    if notices:
        await conn.execute(SEND, channel, [encode(topic, payload) for topic, payload in notices])


class Listener:
    """LISTEN on the channel, on a connection of its own, until closed."""

    def __init__(self, url: str, channel: str, on_notice: NoticeFn) -> None:
        self._url = url
        self._channel = channel
        self._on_notice = on_notice
        self._conn: asyncpg.Connection[Any] | None = None
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._reconnecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._url)
        await conn.add_listener(self._channel, self._heard)
        conn.add_termination_listener(self._lost)
        self._conn = conn

    def _heard(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._on_notice(decode(str(payload)))

    def _lost(self, conn: Any) -> None:
        if not self._closed and self._retry is None and self._reconnecting is None:
            self._retry_in(RETRY_FIRST)

    def _retry_in(self, delay: float) -> None:
        """Try to connect again after `delay` (a timer, doubling after each failure)."""
        loop = asyncio.get_running_loop()
        self._retry = loop.call_later(delay, self._try_reconnect, delay)

    def _try_reconnect(self, delay: float) -> None:
        self._retry = None
        if not self._closed:
            self._reconnecting = asyncio.ensure_future(self._reconnect(delay))

    async def _reconnect(self, delay: float) -> None:
        """One attempt; on success say notices may have been missed meanwhile."""
        try:
            await self._connect()
        except (*UNAVAILABLE, asyncpg.PostgresError) as error:
            log.warning(
                "listen_reconnect_failed", retry_in=min(RETRY_MAX, delay * 2),
                reason=scrub(describe(error), self._url),
            )  # fmt: skip
            self._retry_in(min(RETRY_MAX, delay * 2))
            return
        finally:
            self._reconnecting = None
        log.info("listen_reconnected", channel=self._channel)
        self._on_notice(Notice(RECONNECTED, ""))

    async def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*UNAVAILABLE, asyncpg.PostgresError):
                await conn.close(timeout=2.0)
