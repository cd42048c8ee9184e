"""The `orchestrator` command: serve, check a config, preview triggers, sign a callback;
the client commands that talk to a running server are in `orchestrator.commands`."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import SecretStr

from orchestrator import __version__
from orchestrator.commands import add_client_commands, read_payload, run_client_command
from orchestrator.model import WorkflowSpec
from orchestrator.settings import ConfigError, check_handlers, config_path, load_settings
from orchestrator.signing import new_secret, sign_headers
from orchestrator.store.postgres_url import redact

if TYPE_CHECKING:
    from orchestrator.engine import Engine

# The server's modules (Starlette, uvicorn, the engine, the outgoing client) load only in
# the commands that need them: the client commands and `check` start in a fraction of
# the time.

log = structlog.get_logger("orchestrator.cli")

EXIT_CONFIG = 2
EXIT_FAILED = 1

DESCRIPTION = """\
A webhook-driven event orchestrator that replaces polling loops.

Triggers start runs of workflows; every independent step starts at once, dependent steps
start the moment their join barrier opens, and nothing ever sleeps on a status check.
"""

EXAMPLES = """\
examples:
  orchestrator check                         validate config/orchestrator.toml, print its stages
  orchestrator serve --fire morning          serve, and fire the morning trigger once up
  orchestrator fire morning --wait           fire on a running server and follow the run
  orchestrator events --follow               watch the history live
  ORCHESTRATOR_URL=http://127.0.0.1:9000 orchestrator runs    a server on another address
  orchestrator sign --secret env:S --url URL done.json | sh    send a signed callback by hand
  ORCHESTRATOR_CONFIG=prod.toml orchestrator serve --host 0.0.0.0

settings come from the config file; ORCHESTRATOR_* environment variables override it
(ORCHESTRATOR_DATABASE_URL, ORCHESTRATOR_ADMIN_TOKEN, ORCHESTRATOR_PUBLIC_URL, ...).
Handler modules are imported from the config file's directory and the working directory
(then PYTHONPATH and installed packages). Client commands (fire, runs, show, events, retry,
cancel, replay) find the server from --url, $ORCHESTRATOR_URL, or the config's host and port.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the server (hooks, callbacks, admin API)",
        description="Run the orchestrator server until Ctrl-C. Runs left unfinished by an "
        "earlier process are picked up again: nothing is lost on restart. Exits 2 if the "
        "config is invalid, 1 if the store cannot be opened (unreachable, refused, or "
        "migrated by a newer orchestrator), each with one line saying why.",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $ORCHESTRATOR_CONFIG or config/orchestrator.toml)",
    )
    serve.add_argument("--host", help="address to bind (default from settings: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 8000)")
    serve.add_argument(
        "--fire",
        action="append",
        default=[],
        metavar="NAME",
        help="fire this trigger or workflow once the server is up (repeatable)",
    )
    serve.add_argument("--payload", metavar="FILE", help="JSON payload for --fire ('-' for stdin)")
    serve.add_argument(
        "--sidecar",
        action="append",
        default=[],
        metavar="SERVICE=MODULE:FACTORY",
        help="also serve the ASGI app FACTORY() makes at SERVICE's configured url "
        "(the demo's simulated services; local development)",
    )
    serve.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print a line per finished task and a summary per run "
        "(default: on when stdout is a terminal or --fire is given)",
    )

    check = commands.add_parser(
        "check",
        help="validate a config file and import every handler it names",
        description="Validate a config: syntax, fields, the needs graph (no cycle, no unknown "
        "step), that every handler imports and that the database URL can be used. Exits 2 "
        "and names each problem if any; with --connect, exits 1 if the database does not "
        "answer or was migrated by a newer orchestrator.",
    )
    check.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="config file to check (default: $ORCHESTRATOR_CONFIG or config/orchestrator.toml)",
    )
    check.add_argument(
        "--config", dest="config_option", metavar="FILE", help="the same, as an option"
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the database and report its schema version (changes nothing)",
    )

    triggers = commands.add_parser(
        "triggers",
        help="list triggers with their next fire times (local and UTC)",
        description="List every trigger; for cron triggers, the next N fire times in the "
        "trigger's timezone and in UTC, so daylight-saving behaviour is visible in advance.",
    )
    triggers.add_argument(
        "--next", type=int, default=5, metavar="N", help="fire times to show (default 5)"
    )
    triggers.add_argument("--config", metavar="FILE", help="config file")
    triggers.add_argument("--json", action="store_true", help="print JSON for scripts")

    add_client_commands(commands)

    sign = commands.add_parser(
        "sign",
        help="sign a body the way a service signs its callback (for curl)",
        description="Sign a request body with the Standard Webhooks scheme and print the "
        "headers, or a whole curl command with --url. The secret may be written env:NAME.",
        epilog='example:\n  echo \'{"status": "succeeded", "output": {}}\' > done.json\n'
        "  orchestrator sign --secret env:RESEARCH_WEBHOOK_SECRET --url "
        "http://127.0.0.1:8000/callbacks/TOKEN done.json | sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sign.add_argument(
        "body", nargs="?", metavar="FILE", help="the exact bytes to send ('-' or none: stdin)"
    )
    sign.add_argument(
        "--secret", help="whsec_... secret, or env:NAME to read it from the environment"
    )
    sign.add_argument("--id", dest="message_id", help="webhook-id (default: a random one)")
    sign.add_argument("--timestamp", type=int, help="Unix seconds (default: now)")
    sign.add_argument("--url", help="print a curl command that POSTs the body to this URL")
    sign.add_argument(
        "--new-secret", action="store_true", help="print a fresh whsec_ secret and exit"
    )

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return check_command(_check_target(args.config, args.config_option), args.connect)
        if args.command == "serve":
            return serve_command(args)
        if args.command == "sign":
            return sign_command(args)
        if args.command == "triggers":
            return triggers_command(args)
        return run_client_command(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `orchestrator events | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _check_target(positional: str | None, option: str | None) -> str | None:
    if positional is not None and option is not None and positional != option:
        raise ConfigError([f"check: two config files given ({positional}, {option}); give one"])
    return positional or option


def check_command(path: str | None, connect: bool = False) -> int:
    from orchestrator.preflight import check_database_driver, connection_report

    source = config_path(path)
    settings = load_settings(source)
    check_handlers(settings, source)
    check_database_driver(settings, source)
    steps = sum(len(workflow.steps) for workflow in settings.workflows.values())
    print(
        f"{source}: OK: {len(settings.workflows)} workflow(s) with {steps} step(s), "
        f"{len(settings.triggers)} trigger(s)"
    )
    for name, workflow in settings.workflows.items():
        lines = stage_lines(workflow)
        print(
            f"  {name}: {len(workflow.steps)} step(s) in {len(lines)} stage(s); "
            "the steps of a stage run side by side"
        )
        for line in lines:
            print(f"    {line}")
    if not connect:
        print(f"  database: {redact(settings.database_url)} (--connect to try it)")
        return 0
    usable, line = connection_report(settings, source)
    if not usable:
        print(f"error: {line}", file=sys.stderr)
        return EXIT_FAILED
    print(f"  database: {line}")
    return 0


def stage_lines(workflow: WorkflowSpec) -> list[str]:
    """One line per stage: the steps that run side by side, with what each fans out over."""

    def label(name: str) -> str:
        fan_out = workflow.steps[name].for_each
        return f"{name} (one task per {fan_out})" if fan_out else name

    return [
        f"stage {number}: {', '.join(map(label, stage))}"
        for number, stage in enumerate(workflow.stages(), start=1)
    ]


def triggers_command(args: argparse.Namespace) -> int:
    from orchestrator.admin import trigger_preview

    source = config_path(args.config)
    settings = load_settings(source)
    now = datetime.now(UTC)
    previews = [
        trigger_preview(name, t, max(0, args.next), now) for name, t in settings.triggers.items()
    ]
    if args.json:
        print(json.dumps({"triggers": previews}, indent=2))
        return 0
    if not previews:
        print(f"{source}: no triggers (every workflow can still be fired by name)")
    for preview in previews:
        target = preview["workflow"] or "no runs"
        print(f"{preview['name']}  ({preview['kind']} -> {target})")
        if preview["kind"] == "cron":
            print(
                f"  cron {preview['cron']!r} in {preview['timezone']}; gap: {preview['on_gap']}, "
                f"overlap: {preview['on_overlap']}, misfire: {preview['misfire']}"
            )
            for fire in preview["next"]:
                print(f"    {fire['local']:<28}  {fire['utc']}")
        elif preview["kind"] == "webhook":
            print(f"  POST {preview['path']}  ({preview['scheme']} signatures)")
            if preview.get("completes"):
                print(f"  completes tasks awaiting the key at {', '.join(preview['completes'])}")
    return 0


def sign_command(args: argparse.Namespace) -> int:
    if args.new_secret:
        print(new_secret())
        return 0
    if not args.secret:
        raise ConfigError(["sign: --secret is required (a whsec_ secret, or env:NAME)"])
    secret = args.secret
    if secret.startswith("env:"):
        name = secret.removeprefix("env:")
        if name not in os.environ:
            raise ConfigError([f"sign: environment variable {name} is not set"])
        secret = os.environ[name]
    body = sys.stdin.buffer.read() if args.body in (None, "-") else Path(args.body).read_bytes()
    try:
        headers = sign_headers(secret, body, args.message_id, args.timestamp)
    except ValueError as error:
        raise ConfigError([f"sign: --secret: {error}"]) from None
    flags = " ".join(f"-H {shlex.quote(f'{name}: {value}')}" for name, value in headers.items())
    if args.url is None:
        print(flags)
        return 0
    data = f"@{args.body}" if args.body not in (None, "-") else _shell_text(body)
    print(
        f"curl -sS -X POST {shlex.quote(args.url)} -H 'content-type: application/json' {flags} "
        f"--data-binary {shlex.quote(data)}"
    )
    return 0


def _shell_text(body: bytes) -> str:
    """A body from stdin, to be written into the curl command: only text survives a shell
    line byte for byte, so anything else must come from a file curl reads itself."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise ConfigError(
            ["sign: the body on stdin is not UTF-8 text; give it as a file (sign --url URL FILE) "
             "so that curl sends the bytes that were signed"]
        )  # fmt: skip
    return text


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(args: argparse.Namespace) -> int:
    from orchestrator import serve as serving
    from orchestrator.app import create_app
    from orchestrator.logs import configure_logging
    from orchestrator.preflight import check_database_driver, open_store_once
    from orchestrator.progress import Progress
    from orchestrator.serve import MainServer, listening_socket, sidecar, uvicorn_config

    source = config_path(args.config)
    settings = load_settings(source)
    configure_logging(settings.log_level, settings.log_format)  # before handler modules load
    check_handlers(settings, source)
    updates: dict[str, Any] = {}
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    settings = settings.model_copy(update=updates)
    payload = read_payload(args.payload)
    check_database_driver(settings, source)
    problem = open_store_once(settings)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED

    ephemeral_token = None
    if not settings.admin_tokens():
        if not _is_loopback(settings.host):
            raise ConfigError(
                [
                    f"refusing to serve on {settings.host} without an admin token: "
                    "set ORCHESTRATOR_ADMIN_TOKEN (or bind 127.0.0.1)"
                ]
            )
        ephemeral_token = secrets.token_urlsafe(24)
        settings = settings.model_copy(update={"admin_token": SecretStr(ephemeral_token)})

    show_progress = (
        args.progress if args.progress is not None else (sys.stdout.isatty() or bool(args.fire))
    )
    progress = Progress()

    async def follow(engine: Engine) -> None:
        await progress.follow(engine)

    sock = listening_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"port": port})
    url = f"http://{settings.host}:{port}"
    sidecars = [sidecar(spec, settings) for spec in args.sidecar]
    app = create_app(settings, background=[follow] if show_progress else [])

    async def on_ready() -> None:
        announce()
        engine: Engine = app.state.engine
        for name in args.fire:
            await engine.fire(name, payload, source="cli")

    def announce() -> None:
        log.info("server_ready", url=url, database=redact(settings.database_url), pid=os.getpid())
        for car in sidecars:
            log.info("sidecar_ready", service=car.service, url=car.url)
        # For people, so on stderr: stdout carries only the progress lines, and the token
        # shows even when stdout goes to a file. Never logged: logs are often shipped.
        if show_progress or ephemeral_token is not None or sys.stderr.isatty():
            first = next(iter(settings.triggers or settings.workflows), "NAME")
            services = [(car.service, car.url) for car in sidecars]
            for line in banner(url, services, ephemeral_token, first):
                print(line, file=sys.stderr)
            sys.stderr.flush()

    main = MainServer(uvicorn_config(app), on_ready)
    serving.run(main, sock, sidecars)
    return 0 if main.started else EXIT_FAILED  # the lifespan failed: uvicorn said why


def banner(url: str, sidecars: list[tuple[str, str]], token: str | None, example: str) -> list[str]:
    """What `serve` tells the person who started it: where things are, and the token."""
    lines = [
        f"orchestrator {__version__} listening on {url}  (Ctrl-C to stop)",
        f"  admin API   {url}/admin/runs",
        f"  dashboard   {url}/admin/",
    ]
    lines += [f"  sidecar     {service} at {where}" for service, where in sidecars]
    if token is not None:
        lines += [
            f"  admin token {token}  (generated for this process; "
            "set ORCHESTRATOR_ADMIN_TOKEN to choose one)",
            f"  try: ORCHESTRATOR_ADMIN_TOKEN={token} orchestrator fire {example} "
            f"--url {url} --wait",
        ]
    return lines
