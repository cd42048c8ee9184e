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

Waiting for the write is bounded: a logical transaction that cannot start within
`busy_timeout` seconds (another process holds SQLite's write lock, or the writer is stuck
behind it) fails with StoreUnavailable instead, and the callers answer 503. Once a BEGIN
has waited that long in vain, the store is known to be contended: later transactions get
one non-blocking try and fail at once until a BEGIN succeeds again, so a queue of batches
behind a held lock does not wait the bound once per batch.
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
BUSY_TIMEOUT = 2.0  # seconds a logical transaction may wait to start (the store_busy_timeout)
OPENING_SLACK = 1.0  # how much later than that a BEGIN in the thread may report back


@dataclass(eq=False, slots=True)
class Group:
    """The logical transactions sharing one SQLite transaction."""

    committed: asyncio.Future[None]
    members: int = 0
    sealed: bool = False


class GroupCommit:
    """Runs logical transactions one at a time on `conn` and commits them in groups."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        max_group: int = MAX_GROUP,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self._conn = conn
        self._max_group = max_group
        self._busy_timeout = busy_timeout
        # loop.time() when a BEGIN started waiting for another connection's lock; None
        # once a BEGIN got it. Every wait ends by this plus busy_timeout.
        self._contended_since: float | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")
        self._lock = asyncio.Lock()
        self._queued = 0
        self._group: Group | None = None
        self._opening: asyncio.Future[None] | None = None
        self._committing: asyncio.Future[None] | None = None
        self.groups = 0
        self.transactions = 0
        self.waiting_begins = 0  # BEGINs that had to wait in the thread for another's lock
        # Statements on the event loop must never wait for a lock: BUSY at once, and the
        # waiting BEGIN goes to the thread (_begin).
        conn.execute("PRAGMA busy_timeout = 0")

    @asynccontextmanager
    async def transaction(self, wait: float | None = None) -> AsyncIterator[sqlite3.Connection]:
        """One logical transaction; resumes after the commit that made it durable.

        StoreUnavailable if it cannot start within `wait` seconds (default: busy_timeout).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._busy_timeout if wait is None else wait)
        self._queued += 1
        try:
            await self._acquire(deadline)
        except BaseException:
            # The open group may have stayed unsealed for this waiter: it is not coming.
            self._queued -= 1
            self._seal_if_idle()
            raise
        self._queued -= 1
        try:
            group = await self._joinable_group(deadline)
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

    async def _acquire(self, deadline: float) -> None:
        """The writer's turn, by `deadline` (loop time)."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            raise self._busy() from None

    async def _joinable_group(self, deadline: float) -> Group:
        """The open group, opening one (after any commit in flight) if there is none, by
        `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        while self._group is None or self._group.sealed:  # each pass awaits a commit or BEGIN
            if self._contended_since is not None:
                deadline = min(deadline, self._contended_since + self._busy_timeout)
            if self._committing is not None:
                await self._within(self._committing, deadline)
            elif self._opening is not None:
                # It ends by itself within the wait it was given (SQLite's busy_timeout),
                # and its outcome is every waiter's: wait for it, with slack for the thread.
                await self._within(self._opening, deadline + OPENING_SLACK)
            elif self._begin_now():
                break
            elif deadline <= loop.time():
                raise self._busy()
            else:
                if self._contended_since is None:
                    self._contended_since = loop.time()
                self._opening = asyncio.ensure_future(self._begin(deadline - loop.time()))
                self._opening.add_done_callback(_retrieve)
        assert self._group is not None  # noqa: S101 - the loop ends with an open group
        return self._group

    async def _within(self, future: asyncio.Future[None], deadline: float) -> None:
        """Wait for a commit or BEGIN in flight (which goes on regardless) by `deadline`."""
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(future)
        except TimeoutError:
            raise self._busy() from None

    def _busy(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"the store is busy: no write within {self._busy_timeout:g} s "
            "(another process holds the database's write lock?)"
        )

    def _begin_now(self) -> bool:
        """Open a group on the spot if SQLite's write lock is free."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False  # busy: another connection writes; wait for it in the thread
        self._opened(asyncio.get_running_loop())
        return True

    async def _begin(self, wait: float) -> None:
        loop = asyncio.get_running_loop()
        self.waiting_begins += 1
        try:
            await loop.run_in_executor(self._thread, self._begin_waiting, wait)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"{self._busy()}: {error}") from error
        finally:
            self._opening = None
        self._opened(loop)
        # If whoever opened it was cancelled meanwhile, nobody would seal it: check soon.
        loop.call_soon(self._seal_if_idle)

    def _begin_waiting(self, wait: float) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {max(1, round(wait * 1000))}")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        finally:
            self._conn.execute("PRAGMA busy_timeout = 0")

    def _opened(self, loop: asyncio.AbstractEventLoop) -> None:
        self._group = Group(loop.create_future())
        self.groups += 1
        self._contended_since = None

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
