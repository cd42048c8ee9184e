"""The `orchestrator` command as a user runs it: check, serve the demo, fire and follow."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.signing import new_secret, verify
from tests.e2e.as_user import run_script, user_env, user_server
from tests.e2e.conftest import REPO, TOKEN, Orchestrator, bound_socket

pytestmark = pytest.mark.e2e

DEMO_CONFIG = REPO / "config" / "orchestrator.toml"
SIDECAR = "research=handlers.fake_research:create_app"


def demo_config(tmp_path: Path) -> Path:
    """The shipped config with the simulated research service moved to a free port."""
    with bound_socket() as sock:
        port = sock.getsockname()[1]
    text = DEMO_CONFIG.read_text().replace("127.0.0.1:8001", f"127.0.0.1:{port}")
    assert str(port) in text
    config = tmp_path / "demo.toml"
    config.write_text(text)
    return config


async def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", *args,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_check_accepts_the_shipped_config_and_prints_its_stages() -> None:
    """`orchestrator check` validates the example config, imports its handlers and prints
    what runs side by side: the reply triage starts with fetch_leads, not after the summary."""
    code, out, _ = await run_cli("check", str(DEMO_CONFIG))
    assert code == 0
    assert "OK" in out
    assert "morning_outreach: 7 step(s) in 6 stage(s)" in out
    stages = [line.strip() for line in out.splitlines() if line.strip().startswith("stage ")]
    assert stages == [
        "stage 1: fetch_leads, triage_replies",
        "stage 2: research (one task per fetch_leads.leads)",
        "stage 3: pick_top",
        "stage 4: draft (one task per pick_top.top)",
        "stage 5: update_crm",
        "stage 6: summary",
    ]


async def test_check_takes_the_config_as_an_argument_or_with_config(tmp_path: Path) -> None:
    """`check FILE` and `check --config FILE` do the same; two different files are refused."""
    config = tmp_path / "two.toml"
    config.write_text(
        '[workflows.w.steps.a]\nhandler = "handlers.outreach:fetch_leads"\n'
        '[workflows.w.steps.b]\nhandler = "handlers.outreach:fetch_leads"\n'
        '[workflows.w.steps.c]\nhandler = "handlers.outreach:fetch_leads"\nneeds = ["a", "b"]\n'
    )
    as_argument = await run_cli("check", str(config))
    as_option = await run_cli("check", "--config", str(config))
    assert as_argument == as_option
    code, out, _ = as_option
    assert code == 0
    assert "    stage 1: a, b\n    stage 2: c\n" in out
    code, _, err = await run_cli("check", str(config), "--config", str(DEMO_CONFIG))
    assert code == 2
    assert "two config files given" in err


async def test_check_names_file_field_and_expectation_without_a_traceback(tmp_path: Path) -> None:
    """A broken config exits 2 with one line per problem naming file and field."""
    config = tmp_path / "broken.toml"
    config.write_text(
        '[workflows.w.steps.a]\nhandler = "handlers.outreach:fetch_leads"\nretries = "many"\n'
        '[workflows.v.steps.b]\nhandler = "no.such.module:thing"\n'
    )
    code, _, err = await run_cli("check", str(config))
    assert code == 2
    assert "Traceback" not in err
    assert f"{config}: workflows.w.steps.a.retries:" in err
    assert "integer" in err

    config.write_text('[workflows.v.steps.b]\nhandler = "no.such.module:thing"\n')
    code, _, err = await run_cli("check", str(config))
    assert code == 2
    assert f"{config}: workflows.v.steps.b.handler: cannot import module 'no.such.module'" in err


async def test_serve_refuses_a_public_address_without_an_admin_token(tmp_path: Path) -> None:
    """Binding beyond loopback with no admin token is refused before anything listens."""
    env = {key: value for key, value in os.environ.items() if key != "ORCHESTRATOR_ADMIN_TOKEN"}
    env["ORCHESTRATOR_DATABASE_URL"] = f"sqlite:///{tmp_path / 'x.db'}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "serve", "--config", str(DEMO_CONFIG),
        "--host", "0.0.0.0", cwd=REPO,  # noqa: S104 - the test checks this is refused env={**env, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, err = await process.communicate()
    assert process.returncode == 2
    assert "ORCHESTRATOR_ADMIN_TOKEN" in err.decode()


async def test_demo_morning_run_prints_progress_and_a_summary(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """What `make run` does: the demo goes through the simulated service's signed callbacks."""
    server = orchestrators(demo_config(tmp_path), OUTREACH_DELAY_SCALE="0.01")
    await server.start("--fire", "morning", "--progress", "--sidecar", SIDECAR)
    headline = await server.printed("■ morning_outreach")
    assert headline.endswith("succeeded")
    await server.printed("critical path")
    text = "\n".join(server.stdout)
    assert "research: 30 task(s) started at once" in text
    assert "draft: 10 task(s) started at once" in text
    assert "speedup" in text
    assert text.index("triage_replies: 1 task(s) started at once") < text.index("research: 30")
    banner = [str(record["line"]) for record in server.logs if record.get("event") == "stderr"]
    assert any("admin API" in line for line in banner), "the banner is on stderr"
    assert not [line for line in server.stdout if line.lstrip().startswith("{")], (
        "no log line among the progress lines"
    )
    async with server.client() as client:
        accepted = await client.history(after=0)
    by_callback = [
        entry
        for entry in accepted
        if entry.type == "task_succeeded" and entry.data["source"] == "callback"
    ]
    assert len(by_callback) == 30
    assert all(entry.data["webhook_id"] for entry in by_callback)
    assert sum(entry.type == "task_awaiting_callback" for entry in accepted) == 30
    async with server.client() as client:
        (run,) = (await client.runs())["runs"]
        detail = await client.run(run["id"])
    outputs = {task["step"]: task["output"] for task in detail["tasks"]}
    assert outputs["triage_replies"]["counts"] == {
        "auto_reply": 1, "interested": 2, "later": 1, "unsubscribe": 1,
    }  # fmt: skip
    assert outputs["summary"]["summary"] == (
        "10 personalised emails drafted and logged in the CRM; "
        "5 replies triaged (1 auto_reply, 2 interested, 1 later, 1 unsubscribe)"
    )
    assert await server.stop(), "the server shuts down cleanly on SIGTERM"


async def test_fire_wait_follows_a_run_on_a_running_server(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """`orchestrator fire NAME --wait` fires over HTTP, streams progress and exits 0."""
    server = orchestrators(demo_config(tmp_path), OUTREACH_DELAY_SCALE="0")
    await server.start("--no-progress", "--sidecar", SIDECAR)
    code, out, err = await run_cli(
        "fire", "morning", "--url", server.url, "--wait", env={"ORCHESTRATOR_ADMIN_TOKEN": TOKEN}
    )
    assert code == 0, err
    assert out.startswith("fired morning: event evt_")
    assert "■ morning_outreach" in out
    assert "succeeded" in out
    assert "wall-clock" in out
    assert await server.stop()


async def test_sign_prints_headers_that_verify(tmp_path: Path) -> None:
    """`orchestrator sign` signs a file's exact bytes with a secret read from the environment."""
    secret = new_secret()
    body = tmp_path / "done.json"
    body.write_bytes(b'{"status": "succeeded"}\n')
    code, out, err = await run_cli(
        "sign", "--secret", "env:TEST_SECRET", "--id", "msg-7", str(body),
        env={"TEST_SECRET": secret},
    )  # fmt: skip
    assert code == 0, err
    headers = dict(part.split(": ", 1) for part in shlex.split(out) if part != "-H")
    verified = verify([secret], headers, body.read_bytes(), time.time())
    assert verified.message_id == "msg-7"
    assert secret not in out


async def test_sign_url_writes_a_text_body_from_stdin_into_the_curl_command() -> None:
    """`sign --url URL -` prints a curl command whose --data-binary is the signed text."""
    secret = new_secret()
    body = b'{"status": "succeeded", "output": "caf\xc3\xa9"}'
    code, out, err = await run_cli(
        "sign", "--secret", "env:TEST_SECRET", "--url", "http://127.0.0.1:1/callbacks/t", "-",
        env={"TEST_SECRET": secret}, stdin=body,
    )  # fmt: skip
    assert code == 0, err
    words = shlex.split(out)
    assert words[words.index("--data-binary") + 1].encode() == body


async def test_sign_url_refuses_a_stdin_body_a_shell_line_cannot_carry() -> None:
    """A body on stdin that is not UTF-8 text would be sent with other bytes than were signed:
    `sign --url` says to pass it as a file instead, exit 2, and prints no command."""
    code, out, err = await run_cli(
        "sign", "--secret", "env:TEST_SECRET", "--url", "http://127.0.0.1:1/callbacks/t", "-",
        env={"TEST_SECRET": new_secret()}, stdin=b'{"blob": "\xff\xfe"}',
    )  # fmt: skip
    assert code == 2
    assert "not UTF-8 text" in err
    assert "give it as a file" in err
    assert out == ""


async def test_sign_without_a_usable_secret_explains_itself() -> None:
    """A missing environment variable is named, with exit status 2 and no traceback."""
    code, _, err = await run_cli("sign", "--secret", "env:NOT_SET_ANYWHERE", "-")
    assert code == 2
    assert "NOT_SET_ANYWHERE is not set" in err
    assert "Traceback" not in err


async def test_triggers_previews_fire_times_across_dst(tmp_path: Path) -> None:
    """`orchestrator triggers --json` shows next fires in local time and UTC, DST included."""
    config = tmp_path / "cron.toml"
    config.write_text(
        '[workflows.w.steps.a]\nhandler = "handlers.outreach:fetch_leads"\n'
        '[triggers.nightly]\nworkflow = "w"\ncron = "30 2 * * *"\n'
        'timezone = "America/New_York"\non_gap = "skip"\n'
    )
    code, out, err = await run_cli("triggers", "--config", str(config), "--next", "400", "--json")
    assert code == 0, err
    (nightly,) = json.loads(out)["triggers"]
    local_days = [fire["local"][:10] for fire in nightly["next"]]
    assert {"2027-03-13", "2027-03-15"} <= set(local_days)
    assert "2027-03-14" not in local_days, "02:30 does not exist that day and is skipped"
    assert all(fire["local"][11:16] == "02:30" for fire in nightly["next"])
    code, out, _ = await run_cli("triggers", "--config", str(config), "--next", "2")
    assert code == 0
    assert "cron '30 2 * * *' in America/New_York" in out


async def test_operator_commands_list_show_and_follow_runs(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """`runs`, `show`, `events` and `retry` read and act on a running server over HTTP."""
    server = orchestrators(demo_config(tmp_path), OUTREACH_DELAY_SCALE="0")
    await server.start("--no-progress", "--sidecar", SIDECAR)
    env = {"ORCHESTRATOR_ADMIN_TOKEN": TOKEN}
    code, out, err = await run_cli("fire", "morning", "--url", server.url, "--wait", env=env)
    assert code == 0, err
    code, out, _ = await run_cli("runs", "--url", server.url, "--json", env=env)
    (run,) = json.loads(out)["runs"]
    assert run["status"] == "succeeded"
    code, out, _ = await run_cli("show", run["id"], "--url", server.url, env=env)
    assert code == 0
    assert "research" in out
    assert "30/30 required of 30" in out
    assert "critical path" in out
    code, out, _ = await run_cli("events", "--run", run["id"], "--url", server.url, env=env)
    lines = out.splitlines()
    assert "event_received" in lines[0]
    assert "run_succeeded" in lines[-1]
    code, _, err = await run_cli("retry", run["id"], "--url", server.url, env=env)
    assert code == 1
    assert "only a failed or cancelled run can be retried" in err
    assert await server.stop()


HELLO = "def hello(ctx):\n    return {'hello': 'world'}\n"


def user_settings(tmp_path: Path) -> dict[str, str]:
    return user_env(
        ORCHESTRATOR_DATABASE_URL=f"sqlite:///{tmp_path / 'user.db'}",
        ORCHESTRATOR_LOG_FORMAT="json",
    )


async def test_handler_modules_of_the_users_own_directory_import_without_pythonpath(
    tmp_path: Path,
) -> None:
    """The installed script imports handlers beside the config and in the working directory;
    a module found in neither is reported with both directories named."""
    flow, elsewhere, work = tmp_path / "flow", tmp_path / "elsewhere", tmp_path / "work"
    for directory in (flow, elsewhere, work / "conf"):
        directory.mkdir(parents=True)
    (flow / "flow_steps.py").write_text(HELLO)
    (flow / "orchestrator.toml").write_text('[workflows.w.steps.a]\nhandler = "flow_steps:hello"\n')
    env = user_settings(tmp_path)
    code, out, err = await run_script(
        "check", "--config", str(flow / "orchestrator.toml"), cwd=elsewhere, env=env
    )
    assert (code, err) == (0, "")
    assert "stage 1: a" in out

    (work / "work_steps.py").write_text(HELLO)
    (work / "conf" / "w.toml").write_text('[workflows.w.steps.a]\nhandler = "work_steps:hello"\n')
    code, _, err = await run_script("check", "conf/w.toml", cwd=work, env=env)
    assert (code, err) == (0, "")

    (work / "conf" / "bad.toml").write_text('[workflows.w.steps.a]\nhandler = "nowhere:hello"\n')
    code, _, err = await run_script("check", "conf/bad.toml", cwd=work, env=env)
    assert code == 2
    assert "conf/bad.toml: workflows.w.steps.a.handler: cannot import module 'nowhere'" in err
    assert f"the config file's directory ({(work / 'conf').resolve()})" in err
    assert f"the working directory ({work.resolve()})" in err


async def test_serve_runs_a_handler_from_beside_the_config(tmp_path: Path) -> None:
    """`serve` finds the handler module beside the config, and the run it fires succeeds."""
    flow, elsewhere = tmp_path / "flow", tmp_path / "elsewhere"
    flow.mkdir()
    elsewhere.mkdir()
    (flow / "flow_steps.py").write_text(HELLO)
    config = flow / "orchestrator.toml"
    config.write_text('[workflows.w.steps.a]\nhandler = "flow_steps:hello"\n')
    args = ("--config", str(config), "--port", "0", "--fire", "w")
    async with user_server(*args, cwd=elsewhere, env=user_settings(tmp_path)) as server:
        headline = await server.line("stdout", "■ w run_")
        assert headline.endswith("succeeded")
        assert await server.stop() == 0


async def test_serve_shows_its_generated_token_on_stderr_and_never_logs_it(tmp_path: Path) -> None:
    """With stdout not a terminal and no --fire, the banner with the generated admin token is
    on stderr; the token works, and no JSON log record holds it."""
    config = tmp_path / "one.toml"
    config.write_text('[workflows.w.steps.a]\nhandler = "handlers.outreach:fetch_leads"\n')
    env = user_settings(tmp_path)
    async with user_server("--config", str(config), "--port", "0", cwd=tmp_path, env=env) as server:
        line = await server.line("stderr", "admin token ")
        token = line.split("admin token ", 1)[1].split()[0]
        assert len(token) >= 24
        assert f"listening on {server.url}" in "\n".join(server.lines["stderr"])
        fired = await run_script(
            "fire", "w", "--wait", "--url", server.url, cwd=tmp_path,
            env={**env, "ORCHESTRATOR_ADMIN_TOKEN": token},
        )  # fmt: skip
        assert fired[0] == 0, fired
        assert await server.stop() == 0
    assert server.lines["stdout"] == [], "nothing on stdout without progress"
    records = server.logs()
    assert {"server_ready", "run_started", "run_succeeded", "shutdown_complete"} <= {
        record["event"] for record in records
    }
    assert [record for record in records if token in json.dumps(record)] == []
