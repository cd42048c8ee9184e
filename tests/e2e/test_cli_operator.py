"""The client commands against a real server on a non-default port: finding the server,
failing to, and acting on runs and events (fire, cancel, replay)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.as_user import run_script, user_env
from tests.e2e.conftest import TOKEN, Gate, Orchestrator, bound_socket

pytestmark = pytest.mark.e2e

STUCK = """
[workflows.stuck.steps.wait]
handler = "tests.e2e.handlers:never"
for_each = "event.items"
"""
ONE_STEP = '[workflows.w.steps.a]\nhandler = "handlers.outreach:fetch_leads"\n'


async def started(tmp_path: Path, make: Callable[..., Orchestrator], config: str) -> Orchestrator:
    path = tmp_path / "server.toml"
    path.write_text(config)
    return await make(path).start()


def client_env(**settings: str) -> dict[str, str]:
    """A user's shell that knows the admin token; where the server is comes from `settings`."""
    return user_env(ORCHESTRATOR_ADMIN_TOKEN=TOKEN, **settings)


async def test_client_commands_find_the_server_from_the_environment_or_the_config(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """Without --url, `runs` reaches a server on another port through ORCHESTRATOR_URL, or
    through the host and port of --config or $ORCHESTRATOR_CONFIG; --url wins over both."""
    server = await started(tmp_path, orchestrators, ONE_STEP)
    assert server.port != 8000
    client_config = tmp_path / "client.toml"
    client_config.write_text(f'host = "127.0.0.1"\nport = {server.port}\n')

    by_env = await run_script(
        "runs", "--json", cwd=tmp_path, env=client_env(ORCHESTRATOR_URL=server.url)
    )
    by_option = await run_script(
        "runs", "--json", "--config", str(client_config), cwd=tmp_path, env=client_env()
    )
    by_config_env = await run_script(
        "runs", "--json", cwd=tmp_path, env=client_env(ORCHESTRATOR_CONFIG=str(client_config))
    )
    flag_wins = await run_script(
        "runs", "--json", "--url", server.url, cwd=tmp_path,
        env=client_env(ORCHESTRATOR_URL="http://127.0.0.1:9", ORCHESTRATOR_CONFIG=str(client_config)),
    )  # fmt: skip
    for code, out, err in (by_env, by_option, by_config_env, flag_wins):
        assert (code, err) == (0, "")
        assert json.loads(out) == {"runs": [], "next_cursor": None}
    assert await server.stop()


@pytest.mark.parametrize(
    ("command", "where", "origin"),
    [
        (("replay", "evt_x"), "flag", "from --url"),
        (("cancel", "run_x"), "env", "from ORCHESTRATOR_URL"),
        (("runs",), "config", "host and port of"),
        (("events", "--follow"), "config", "host and port of"),
    ],
    ids=["replay-flag", "cancel-env", "runs-config", "events-config"],
)
async def test_an_unreachable_server_is_one_line_naming_the_url_and_how_to_point_elsewhere(
    tmp_path: Path, command: tuple[str, ...], where: str, origin: str
) -> None:
    """No traceback, exit status 1, and the line says which URL was tried and why that one."""
    with bound_socket() as sock:  # a port that was free a moment ago, now closed
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = tmp_path / "client.toml"
    config.write_text(f"port = {url.rsplit(':', 1)[1]}\n")
    args = {"flag": ("--url", url), "env": (), "config": ("--config", str(config))}[where]
    env = client_env(ORCHESTRATOR_URL=url) if where == "env" else client_env()
    code, out, err = await run_script(*command, *args, cwd=tmp_path, env=env)
    assert (code, out) == (1, "")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert f"error: cannot reach the orchestrator at {url} ({origin}" in err
    assert "--url URL or ORCHESTRATOR_URL" in err


async def test_cancel_and_replay_act_on_a_running_server(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """`fire --json` starts a run and a repeated key answers the same run; `replay` is refused
    while the run is active; `cancel` stops it; then `replay` and `replay --force` start new runs."""
    server = await started(tmp_path, orchestrators, STUCK)
    env = client_env(ORCHESTRATOR_URL=server.url)
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"items": [1], "gate": gate.url}))
    fire = ("fire", "stuck", "--payload", str(payload), "--idempotency-key", "k-1", "--json")
    code, out, err = await run_script(*fire, cwd=tmp_path, env=env)
    assert code == 0, err
    fired = json.loads(out)
    assert fired["duplicate"] is False
    code, out, _ = await run_script(*fire, cwd=tmp_path, env=env)
    assert json.loads(out) == {**fired, "duplicate": True}, "a duplicate answers the first run"
    await gate.arrived("never", 1)

    code, _, err = await run_script("replay", fired["event_id"], cwd=tmp_path, env=env)
    assert code == 1
    assert "409" in err
    assert f"orchestrator replay {fired['event_id']} --force" in err

    code, out, err = await run_script("cancel", fired["run_id"], "--json", cwd=tmp_path, env=env)
    assert code == 0, err
    assert json.loads(out) == {"run_id": fired["run_id"], "status": "cancelled"}
    code, _, err = await run_script("cancel", fired["run_id"], cwd=tmp_path, env=env)
    assert code == 1
    assert "only a running run can be cancelled" in err

    code, out, err = await run_script("replay", fired["event_id"], cwd=tmp_path, env=env)
    assert code == 0, err
    assert out.startswith(f"replayed {fired['event_id']}: new run run_")
    replayed = out.split()[-1]
    await gate.arrived("never", 2)
    code, out, err = await run_script(
        "replay", fired["event_id"], "--force", "--json", cwd=tmp_path, env=env
    )
    assert code == 0, err
    forced = json.loads(out)
    assert forced["event_id"] == fired["event_id"]
    assert len({fired["run_id"], replayed, forced["run_id"]}) == 3

    async with server.client() as client:
        statuses = {run["id"]: run["status"] for run in (await client.runs())["runs"]}
    assert statuses == {
        fired["run_id"]: "cancelled", replayed: "running", forced["run_id"]: "running",
    }  # fmt: skip
    assert await server.stop()


async def test_cancel_and_replay_explain_themselves_in_help() -> None:
    """`cancel --help` and `replay --help` describe the command and its options."""
    for command, words in (("cancel", "Cancel a running run"), ("replay", "--force")):
        code, out, _ = await run_script(command, "--help", cwd=Path.cwd(), env=user_env())
        assert code == 0
        assert words in out
        assert "--json" in out
        assert "ORCHESTRATOR_URL" in out
