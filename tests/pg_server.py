"""A throwaway PostgreSQL cluster: `initdb` and `postgres` (on PATH) in a temporary
directory, listening on a free loopback port and on a unix socket in that directory.

The tests' session server (tests/pg.py) and the benchmarks' (bench/postgres.py) both start
theirs here, each with its own server settings (the tests turn fsync off; the benchmarks
keep PostgreSQL's durable defaults). This module needs neither pytest nor a driver.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the
`postgres` user that the server package creates (else `nobody`), through subprocess's
user= and group=, which need no other tool. The cluster collates text by ICU's en-US rules
where it can, so a query that forgets the store's bytewise order shows.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

SUPERUSER = "postgres"
COMMAND_TIMEOUT = 60.0
START_ATTEMPTS = 3  # a free port may be taken between finding it and binding it
# Tried in order: ICU's en-US collation, else the plain C.UTF-8 locale.
LOCALES = [
    ["--locale-provider=icu", "--icu-locale=en-US", "--locale=C.UTF-8"],
    ["--locale=C.UTF-8"],
]


class PostgresUnavailable(Exception):
    """PostgreSQL cannot run here; the message says why."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The operating-system user the server runs as (None: whoever runs this process)."""

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

    def __init__(self, root: Path, owner: Owner, settings: Mapping[str, str]) -> None:
        self.root = root
        self.owner = owner
        self.settings = dict(settings)
        self.data = root / "data"
        self.port = 0
        self._names = count(1)

    @classmethod
    def start_new(cls, settings: Mapping[str, str]) -> PostgresServer:
        """initdb and start a cluster with these server settings (`-c name=value`)."""
        for tool in ("initdb", "pg_ctl", "postgres"):
            if shutil.which(tool) is None:
                raise PostgresUnavailable(f"{tool} is not on PATH")
        owner = Owner.pick()
        root = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
        if owner.uid is not None:
            os.chown(root, owner.uid, owner.gid or -1)
        server = cls(root, owner, settings)
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
                [
                    f"-p {port}",
                    f"-k {self.root}",
                    *(f"-c {k}={v}" for k, v in self.settings.items()),
                ]
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

    def postmaster_pid(self) -> int:
        """The running server's main process (the first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def url(self, database: str = "postgres", **query: str) -> str:
        params = "&".join(f"{key}={value}" for key, value in query.items())
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}" + (
            f"?{params}" if params else ""
        )

    def new_name(self, prefix: str) -> str:
        """A name no other database or schema of this server has."""
        return f"{prefix}_{os.getpid()}_{next(self._names)}"
