"""Group commit: many logical transactions, one SQLite transaction, one fsync.

A completion is a handful of short statements; what costs is the commit (an fsync with
synchronous=FULL) and, with aiosqlite, a thread hop per statement. So the statements of a
logical transaction run directly on the calling thread (each takes microseconds on a
WAL file) inside a SAVEPOINT, and only BEGIN and COMMIT, which may wait on a lock or
the disk, go to the connection's own thread (BEGIN only when another connection holds
SQLite's write lock: an uncontended BEGIN is tried on the spot). Logical transactions that queue up while a
commit is in flight join the next group; each caller resumes only after the commit that
holds its changes, so nothing is acknowledged before it is durable.

A logical transaction that raises is rolled back to its savepoint and leaves the rest of
its group alone; a failed COMMIT fails every member of the group with StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from orchestrator.store.base import StoreUnavailable

T = TypeVar("T")

MAX_GROUP = 512
BUSY_TIMEOUT_MS = 5000


@dataclass(eq=False, slots=True)
class Group:
    """The logical transactions sharing one SQLite transaction."""

    committed: asyncio.Future[None]
    members: int = 0
    sealed: bool = False


class GroupCommit:
    """Runs logical transactions one at a time on `conn` and commits them in groups."""

    def __init__(self, conn: sqlite3.Connection, max_group: int = MAX_GROUP) -> None:
        self._conn = conn
        self._max_group = max_group
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")
        self._lock = asyncio.Lock()
        self._queued = 0
        self._group: Group | None = None
        self._opening: asyncio.Future[None] | None = None
        self._committing: asyncio.Future[None] | None = None
        self.groups = 0
        self.transactions = 0
        # Statements on the event loop must never wait for a lock: BUSY at once, and the
        # waiting BEGIN goes to the thread (_begin).
        conn.execute("PRAGMA busy_timeout = 0")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[sqlite3.Connection]:
        """One logical transaction; resumes after the commit that made it durable."""
        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        try:
            group = await self._joinable_group()
            self._conn.execute("SAVEPOINT tx")
            try:
                yield self._conn
            except BaseException as error:
                self._undo(group, error)
                raise
            self._conn.execute("RELEASE tx")
            group.members += 1
            self.transactions += 1
        finally:
            self._lock.release()
            self._seal_if_idle()
        await asyncio.shield(group.committed)

    async def _joinable_group(self) -> Group:
        """The open group, opening one (after any commit in flight) if there is none."""
        while self._group is None or self._group.sealed:  # each pass awaits a commit or BEGIN
            if self._committing is not None:
                await asyncio.shield(self._committing)
            elif self._opening is not None:
                await asyncio.shield(self._opening)
            elif self._begin_now():
                break
            else:
                self._opening = asyncio.ensure_future(self._begin())
                self._opening.add_done_callback(_retrieve)
        assert self._group is not None  # noqa: S101 - the loop ends with an open group
        return self._group

    def _begin_now(self) -> bool:
        """Open a group on the spot if SQLite's write lock is free."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False  # busy: another connection writes; wait for it in the thread
        self._opened(asyncio.get_running_loop())
        return True

    async def _begin(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._begin_waiting)
        except sqlite3.Error as error:
            raise StoreUnavailable(str(error)) from error
        finally:
            self._opening = None
        self._opened(loop)
        # If whoever opened it was cancelled meanwhile, nobody would seal it: check soon.
        loop.call_soon(self._seal_if_idle)

    def _begin_waiting(self) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        finally:
            self._conn.execute("PRAGMA busy_timeout = 0")

    def _opened(self, loop: asyncio.AbstractEventLoop) -> None:
        self._group = Group(loop.create_future())
        self.groups += 1

    def _undo(self, group: Group, error: BaseException) -> None:
        """Roll back one logical transaction; if SQLite already dropped the whole
        transaction, the group is lost and its members are told so."""
        try:
            self._conn.execute("ROLLBACK TO tx")
            self._conn.execute("RELEASE tx")
        except sqlite3.Error:
            pass
        if not self._conn.in_transaction and not group.sealed:
            group.sealed = True
            self._group = None
            group.committed.set_exception(StoreUnavailable(f"transaction aborted: {error}"))
            group.committed.exception()  # retrieved: members that already left may not look

    def _seal_if_idle(self) -> None:
        group = self._group
        if group is None or group.sealed or self._lock.locked():
            return
        if self._queued and group.members < self._max_group:
            return  # another logical transaction is about to join
        group.sealed = True
        self._committing = asyncio.ensure_future(self._commit(group))

    async def _commit(self, group: Group) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._conn.execute, "COMMIT")
        except sqlite3.Error as error:
            group.committed.set_exception(StoreUnavailable(str(error)))
            group.committed.exception()
            with contextlib.suppress(sqlite3.Error):  # the members are told either way
                await loop.run_in_executor(self._thread, self._rollback)
        else:
            group.committed.set_result(None)
        finally:
            self._committing = None
            if self._group is group:
                self._group = None

    async def offload(self, work: Callable[[], T]) -> T:
        """Run `work` on the connection in its own thread: for statements whose cost grows
        with the data (a fan-out of thousands, a sweep), so the event loop keeps serving.

        Only from inside a logical transaction, which holds the connection: nothing else
        touches it until `work` is done.
        """
        done = asyncio.get_running_loop().run_in_executor(self._thread, work)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            # The rollback that follows must not meet the connection still in use.
            await asyncio.wait([done])
            raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    async def close(self) -> None:
        """Commit what is open and wait for it; the store refuses later transactions."""
        if self._opening is not None:
            await asyncio.gather(self._opening, return_exceptions=True)
        self._seal_if_idle()
        if self._committing is not None:
            await asyncio.gather(self._committing, return_exceptions=True)
        self._thread.shutdown(wait=True)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failed BEGIN as seen: its caller may have been cancelled before looking."""
    if not future.cancelled():
        future.exception()
