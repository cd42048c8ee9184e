"""A throwaway PostgreSQL server for the tests: one per session, started by the first test
that needs it and stopped when the session ends.

`initdb` and `postgres` (on PATH) run in a temporary directory, listening on a free loopback
port and on a unix socket in that directory, with fsync off (nothing here must survive a
power cut). PostgreSQL refuses to run as root, and CI runs as root: there the server runs
as the `postgres` user that the server package creates (else `nobody`), through
subprocess's user= and group=, which need no other tool. The cluster collates text by
ICU's en-US rules where it can, so a query that forgets the store's bytewise order shows.

Where the server cannot start, the tests that need it skip, unless
ORCHESTRATOR_REQUIRE_POSTGRES=1 (which .ci/run sets) turns the skip into a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from orchestrator.store.postgres_schema import MIGRATIONS

REQUIRE = "ORCHESTRATOR_REQUIRE_POSTGRES"
SUPERUSER = "postgres"
COMMAND_TIMEOUT = 60.0
START_ATTEMPTS = 3  # a free port may be taken between finding it and binding it
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "deadlock_timeout": "100ms",  # a deadlock test waits this long, not the default second
}
# Tried in order: ICU's en-US collation, else the plain C.UTF-8 locale.
LOCALES = [
    ["--locale-provider=icu", "--icu-locale=en-US", "--locale=C.UTF-8"],
    ["--locale=C.UTF-8"],
]


class PostgresUnavailable(Exception):
    """PostgreSQL cannot run here; the message says why."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The operating-system user the server runs as (None: whoever runs the tests)."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def pick(cls) -> Owner:
        if os.geteuid() != 0:
            return cls()
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(user.pw_uid, user.pw_gid)
        raise PostgresUnavailable("running as root, and there is no postgres or nobody user")

    def run(self, *argv: str, home: Path) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL command as this user; PostgresUnavailable if it fails."""
        kwargs: dict[str, Any] = {}
        if self.uid is not None:
            kwargs = {"user": self.uid, "group": self.gid, "extra_groups": []}
        try:
            done = subprocess.run(  # noqa: S603 - fixed PostgreSQL commands
                argv,
                cwd=home,
                env={**os.environ, "HOME": str(home), "LC_ALL": "C.UTF-8"},
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
                **kwargs,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise PostgresUnavailable(f"{argv[0]}: {error}") from None
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PostgresUnavailable(f"{' '.join(argv[:2])} failed: {' / '.join(output)}")
        return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, running until `stop()`."""

    def __init__(self, root: Path, owner: Owner) -> None:
        self.root = root
        self.owner = owner
        self.data = root / "data"
        self.port = 0
        self._names = count(1)

    @classmethod
    def start_new(cls) -> PostgresServer:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if shutil.which(tool) is None:
                raise PostgresUnavailable(f"{tool} is not on PATH")
        owner = Owner.pick()
        root = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
        if owner.uid is not None:
            os.chown(root, owner.uid, owner.gid or -1)
        server = cls(root, owner)
        try:
            server._initdb()
            server.start()
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return server

    def _initdb(self) -> None:
        base = ["initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"]
        problem: PostgresUnavailable | None = None
        for locale in LOCALES:
            try:
                self.owner.run(*base, *locale, "--no-sync", "--no-instructions", home=self.root)
                return
            except PostgresUnavailable as error:
                problem = error
                shutil.rmtree(self.data, ignore_errors=True)
        assert problem is not None
        raise problem

    def start(self) -> None:
        """Start (or restart) the server, on a new free port the first time."""
        problem: PostgresUnavailable | None = None
        for _ in range(START_ATTEMPTS if self.port == 0 else 1):
            port = self.port or free_port()
            options = " ".join(
                [f"-p {port}", f"-k {self.root}", *(f"-c {k}={v}" for k, v in SETTINGS.items())]
            )
            try:
                self._pg_ctl("start", "-o", options, "-l", str(self.root / "postgres.log"))
            except PostgresUnavailable as error:
                problem = error
                continue
            self.port = port
            return
        assert problem is not None
        raise problem

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` keeps what was committed (with synchronous_commit off, an
        `immediate` stop may lose the last commits, as a crash would)."""
        self._pg_ctl("stop", "-m", mode)

    def _pg_ctl(self, action: str, *options: str) -> None:
        timeout = str(int(COMMAND_TIMEOUT))
        self.owner.run("pg_ctl", action, "-D", str(self.data), "-w", "-t", timeout, *options,
                       home=self.root)  # fmt: skip

    def remove(self) -> None:
        with contextlib.suppress(PostgresUnavailable):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", **query: str) -> str:
        params = "&".join(f"{key}={value}" for key, value in query.items())
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}" + (
            f"?{params}" if params else ""
        )

    def new_name(self, prefix: str) -> str:
        """A name no other database or schema of this session has."""
        return f"{prefix}_{os.getpid()}_{next(self._names)}"


_server: PostgresServer | None = None
_problem: str | None = None


def server() -> PostgresServer:
    """The session's server, started on first use; skips the test (fails it in CI) if it
    cannot start."""
    global _server, _problem
    if _server is None and _problem is None:
        try:
            _server = PostgresServer.start_new()
        except PostgresUnavailable as error:
            _problem = str(error)
        else:  # should the session end without its teardown (an error in pytest itself)
            atexit.register(_server.remove)
    if _server is None:
        unavailable(_problem or "it did not start")
    assert _server is not None
    return _server


def unavailable(reason: str) -> None:
    """Skip the test for want of PostgreSQL, or fail it where PostgreSQL is required."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but PostgreSQL cannot start: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL cannot start here: {reason}")


async def admin(sql: str) -> None:
    """Run one statement as the superuser on the maintenance database."""
    conn = await asyncpg.connect(server().url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# Schemas for the store contract suite. Making and migrating one costs 30-90 ms, emptying
# a used one 2-5 ms, so a schema a test left at the current version is emptied (identities
# restarted too) and handed to the next test: as fresh as a new one, but for its
# schema_version row, which says "current" as a freshly migrated one would.
_free_schemas: list[str] = []
_emptying: list[str] | None = None

SCHEMA_VERSION = "SELECT max(version) FROM {schema}.schema_version"
TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename <> 'schema_version'"
IDENTITIES = """
    SELECT table_name, column_name FROM information_schema.columns
    WHERE table_schema = $1 AND is_identity = 'YES'
"""


async def fresh_schema() -> str:
    """An empty schema: a recycled one, else a new one that the first store migrates."""
    if _free_schemas:
        return _free_schemas.pop()
    name = server().new_name("contract")
    await admin(f'CREATE SCHEMA "{name}"')
    return name


async def recycle_schema(name: str) -> None:
    """Empty the schema for the next test if it holds the current schema, else drop it.
    Every connection to it must be closed."""
    global _emptying
    conn = await asyncpg.connect(server().url())
    try:
        quoted = f'"{name}"'
        migrated = await conn.fetchval("SELECT to_regclass($1)", f"{quoted}.schema_version")
        version = migrated and await conn.fetchval(SCHEMA_VERSION.format(schema=quoted))
        if version != len(MIGRATIONS):
            await conn.execute(f"DROP SCHEMA {quoted} CASCADE")
            return
        if _emptying is None:  # every current schema has the same tables
            tables = [row[0] for row in await conn.fetch(TABLES, name)]
            identities = [tuple(row) for row in await conn.fetch(IDENTITIES, name)]
            _emptying = [
                "BEGIN",
                "SET LOCAL session_replication_role = replica",  # no foreign-key order to keep
                *(f'DELETE FROM {{schema}}."{table}"' for table in tables),  # noqa: S608 - catalog names
                *(
                    f'ALTER TABLE {{schema}}."{t}" ALTER COLUMN "{c}" RESTART'
                    for t, c in identities
                ),
                "COMMIT",
            ]
        await conn.execute(";".join(_emptying).format(schema=quoted))
    finally:
        await conn.close()
    _free_schemas.append(name)


@pytest.fixture(scope="session", autouse=True)
def _postgres_session() -> Iterator[None]:
    """A server that some test started runs until the session ends, then is removed."""
    yield
    global _server
    _free_schemas.clear()
    if _server is not None:
        atexit.unregister(_server.remove)
        _server.remove()
        _server = None


@pytest.fixture
def postgres() -> PostgresServer:
    """The session's PostgreSQL server (the test skips where none can start)."""
    return server()


@pytest.fixture
async def postgres_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    name = postgres.new_name("test")
    await admin(f'CREATE DATABASE "{name}"')
    yield postgres.url(name)
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
