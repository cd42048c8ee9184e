"""The `orchestrator` command and the database, with real processes: `check --connect`
reports the schema version, `serve` with a database it cannot use exits with one line
(password hidden, no traceback), and /readyz answers 503 while PostgreSQL is down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from orchestrator.store.postgres_schema import MIGRATIONS
from orchestrator.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests import pg
from tests.e2e.conftest import Orchestrator
from tests.e2e.test_cli import run_cli
from tests.pg import PostgresServer

pytestmark = pytest.mark.e2e

CONFIG = '[workflows.w.steps.a]\nhandler = "tests.e2e.handlers:echo"\n'
EXIT_CONFIG, EXIT_FAILED = 2, 1


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "orchestrator.toml"
    path.write_text(CONFIG)
    return path


async def check(config: Path, url: str, *args: str) -> tuple[int, str, str]:
    return await run_cli("check", str(config), *args, env={"ORCHESTRATOR_DATABASE_URL": url})


async def serve(config: Path, url: str) -> tuple[int, str, str]:
    """`serve` to its end: it is expected to refuse to start."""
    env = {"ORCHESTRATOR_DATABASE_URL": url, "ORCHESTRATOR_ADMIN_TOKEN": "t"}
    return await run_cli("serve", "--config", str(config), "--port", "0", env=env)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


async def set_version(url: str, version: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE schema_version SET version = $1", version)
    finally:
        await conn.close()


async def test_check_connect_reports_the_version_and_what_serve_will_do(
    config: Path, postgres_url: str, orchestrators: Callable[..., Orchestrator]
) -> None:
    """check --connect changes nothing and says: older (serve migrates), current after serve
    migrated, newer (exit 1) after a newer orchestrator did, which serve then refuses in one
    line."""
    known = len(MIGRATIONS)
    code, out, _ = await check(config, postgres_url, "--connect")
    assert code == 0
    assert f"schema version 0 of {known} (older: serve migrates it forward)" in out
    conn = await asyncpg.connect(postgres_url)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        )
    finally:
        await conn.close()

    server = await orchestrators(config, ORCHESTRATOR_DATABASE_URL=postgres_url).start()
    assert await server.stop()
    code, out, _ = await check(config, postgres_url, "--connect")
    assert code == 0
    assert f"{postgres_url}: connected, schema version {known} of {known} (current)" in out

    await set_version(postgres_url, known + 1)
    code, _, err = await check(config, postgres_url, "--connect")
    assert code == EXIT_FAILED
    assert "(newer: serve refuses it; upgrade the orchestrator)" in one_line(err)
    code, _, err = await serve(config, postgres_url)
    assert code == EXIT_FAILED
    assert one_line(err) == (
        f"error: {postgres_url} has schema version {known + 1}; this orchestrator knows up to "
        f"{known}: upgrade the orchestrator"
    )


async def test_an_unreachable_database_is_one_line_without_the_password(config: Path) -> None:
    """serve and check --connect on a port nothing listens on exit 1 with one line naming the
    server, the password shown as ***, and the cause; plain check does not connect."""
    port = pg.free_port()
    url = f"postgresql://orch:hunter2@127.0.0.1:{port}/orch"
    shown = f"postgresql://orch:***@127.0.0.1:{port}/orch"
    code, _, err = await serve(config, url)
    assert code == EXIT_FAILED
    line = one_line(err)
    assert line.startswith(f"error: cannot connect to {shown}: ConnectionRefusedError")
    code, _, err = await check(config, url, "--connect")
    assert code == EXIT_FAILED
    line = one_line(err)
    assert line.startswith("error: environment variable ORCHESTRATOR_DATABASE_URL: database_url:")
    assert f"cannot connect to {shown}" in line
    code, out, err = await check(config, url)
    assert (code, err) == (0, "")
    assert f"database: {shown} (--connect to try it)" in out
    assert "hunter2" not in out


async def test_a_misconfigured_database_url_names_its_source_field_and_expectation(
    config: Path,
) -> None:
    """A postgresql:// URL with no server exits 2 from check and from serve, naming the
    variable, the field and what was expected."""
    url = "postgresql://orch:hunter2@/orch"
    for code, _, err in [await check(config, url), await serve(config, url)]:
        assert code == EXIT_CONFIG
        line = one_line(err)
        assert line.startswith(
            "error: environment variable ORCHESTRATOR_DATABASE_URL: database_url: "
            "postgresql://orch:***@/orch names no server: expected postgresql://USER:PASSWORD@HOST"
        )


async def test_sqlite_in_a_directory_that_cannot_be_made_is_one_line(
    config: Path, tmp_path: Path
) -> None:
    """serve on a SQLite path under a regular file exits 1 with one line naming the store."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    url = f"sqlite:///{blocker / 'orchestrator.db'}"
    code, _, err = await serve(config, url)
    assert code == EXIT_FAILED
    assert one_line(err).startswith(f"error: cannot open the store at {url}: ")
    code, out, _ = await check(config, f"sqlite:///{tmp_path / 'new.db'}", "--connect")
    assert code == 0
    assert f"no database yet; serve creates it at schema version {len(SQLITE_MIGRATIONS)}" in out


async def test_readyz_answers_503_while_postgres_is_down(
    config: Path,
    postgres_url: str,
    postgres: PostgresServer,
    orchestrators: Callable[..., Orchestrator],
) -> None:
    """/readyz is 200 while PostgreSQL answers, 503 while it is stopped, and 200 again once
    it is back, from the same running server (probing at every ask: no reuse of a success)."""
    server = await orchestrators(
        config, ORCHESTRATOR_DATABASE_URL=postgres_url, ORCHESTRATOR_READY_PROBE_REUSE="0"
    ).start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/readyz")).status_code == 200
        postgres.stop()
        try:
            down = await http.get("/readyz")
        finally:
            postgres.start()
        assert down.status_code == 503
        assert down.json()["error"] == "store_unavailable"
        assert (await http.get("/readyz")).status_code == 200
    assert await server.stop()
