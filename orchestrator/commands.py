"""The client commands of `orchestrator`: they act on a running server through its admin API.

Each finds the server the same way (`--url`, else $ORCHESTRATOR_URL, else the config's host
and port, else 127.0.0.1:8000) and authenticates with the config's admin token
(ORCHESTRATOR_ADMIN_TOKEN). A server that cannot be reached is one line naming the URL
and how to point elsewhere, exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from orchestrator.client import (
    URL_VARIABLE,
    AdminClient,
    AdminError,
    ServerAddress,
    server_address,
)
from orchestrator.progress import Progress
from orchestrator.records import HistoryEntry
from orchestrator.settings import ConfigError, client_settings
from orchestrator.states import RunState
from orchestrator.timing_json import timing_from_json

EXIT_FAILED = 1
RUN_END = ("run_succeeded", "run_failed", "run_cancelled")

Command = Callable[[argparse.Namespace, AdminClient], Coroutine[Any, Any, int]]


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The parsers of fire, runs, show, events, retry, cancel and replay."""

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=summary, description=description
        )
        parser.add_argument(
            "--url",
            help=f"server URL (default: ${URL_VARIABLE}, else http://HOST:PORT of the config, "
            "else http://127.0.0.1:8000)",
        )
        parser.add_argument(
            "--config",
            metavar="FILE",
            help="config file the server's host, port and admin token come from "
            "(default: $ORCHESTRATOR_CONFIG or config/orchestrator.toml, if present)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        return parser

    fire = command(
        "fire",
        "fire a trigger or workflow on a running server",
        "Fire a trigger (or a workflow by name) on a running server through the admin API, "
        "with ORCHESTRATOR_ADMIN_TOKEN as the bearer token.",
    )
    fire.add_argument("name", metavar="NAME", help="trigger or workflow name")
    fire.add_argument(
        "--payload", metavar="FILE", help="JSON object to send as the event payload ('-' for stdin)"
    )
    fire.add_argument(
        "--idempotency-key", metavar="KEY", help="firing again with the same key starts nothing new"
    )
    fire.add_argument(
        "--wait", action="store_true", help="follow the run until it finishes and print its summary"
    )

    runs = command(
        "runs", "list runs, newest first", "List runs on a running server, newest first."
    )
    runs.add_argument("--workflow", help="only this workflow")
    runs.add_argument(
        "--status", choices=[state.value for state in RunState], help="only runs in this state"
    )
    runs.add_argument("--limit", type=int, default=20, help="how many (default 20)")

    show = command(
        "show",
        "a run: steps, barriers, tasks, timing",
        "Show one run: its barriers (k of n, policy), each task's wait (queued to started) "
        "apart from its run, and the run's timing: sums of run times and waits, speedup, "
        "critical path.",
    )
    show.add_argument("run", metavar="RUN", help="run id")

    events = command(
        "events",
        "the history, or --follow it live",
        "Print history entries, oldest first; --follow keeps streaming new ones "
        "(Server-Sent Events) until Ctrl-C.",
    )
    events.add_argument("--run", help="only this run's history")
    events.add_argument(
        "--type", metavar="TYPES", help="only these entry types, comma-separated (run_failed,...)"
    )
    events.add_argument(
        "--follow", action="store_true", help="keep printing entries as they happen"
    )

    retry = command(
        "retry",
        "re-run the failed tasks of a failed run",
        "Re-run the failed, timed-out and cancelled tasks of a failed or cancelled run; "
        "succeeded tasks are kept.",
    )
    retry.add_argument("run", metavar="RUN", help="run id")

    cancel = command(
        "cancel",
        "cancel a running run",
        "Cancel a running run: its unfinished tasks are cancelled and their handlers stopped; "
        "`orchestrator retry RUN` runs them again later.",
    )
    cancel.add_argument("run", metavar="RUN", help="run id")

    replay = command(
        "replay",
        "start a new run from a stored event",
        "Start a new run of an event's workflow, as configured now, with the event's stored "
        "payload. Refused while a run of that event is still running, unless --force.",
    )
    replay.add_argument("event", metavar="EVENT", help="event id (evt_...)")
    replay.add_argument(
        "--force", action="store_true", help="replay even while a run of the event is running"
    )


def run_client_command(args: argparse.Namespace) -> int:
    """Run one client command; connection problems and error answers become one line."""
    settings, source = client_settings(args.config)
    configured = None if source is None else (str(source), settings.host, settings.port)
    address = server_address(args.url, os.environ, configured)
    tokens = settings.admin_tokens()
    client = AdminClient(address.url, tokens[0] if tokens else None)
    return asyncio.run(_explained(CLIENT_COMMANDS[args.command](args, client), address))


async def _explained(command: Coroutine[Any, Any, int], address: ServerAddress) -> int:
    """The command's exit status; an error answer or an unreachable server is one line."""
    try:
        return await command
    except AdminError as error:
        hint = ""
        if error.status == 401:
            hint = "; set ORCHESTRATOR_ADMIN_TOKEN to the server's admin token"
        print(f"error: {error}{hint}", file=sys.stderr)
    except httpx.TransportError as error:
        print(
            f"error: cannot reach the orchestrator at {address.url} ({address.origin}): "
            f"{str(error) or type(error).__name__}; is it running? Point elsewhere with "
            f"--url URL or {URL_VARIABLE}=URL",
            file=sys.stderr,
        )
    return EXIT_FAILED


def read_payload(path: str | None) -> dict[str, Any]:
    """A JSON object from a file ('-': stdin); ConfigError if it is not one."""
    if path is None:
        return {}
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        value = json.loads(text)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError([f"{path}: cannot read a JSON payload: {error}"]) from None
    if not isinstance(value, dict):
        raise ConfigError(
            [f"{path}: the payload must be a JSON object, got {type(value).__name__}"]
        )
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _when(at: float | None) -> str:
    return (
        "-" if at is None else datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


async def fire_command(args: argparse.Namespace, client: AdminClient) -> int:
    payload = read_payload(args.payload)
    async with client:
        fired = await client.fire(args.name, payload, args.idempotency_key)
        if not args.json:
            note = " (duplicate: nothing new started)" if fired["duplicate"] else ""
            print(f"fired {args.name}: event {fired['event_id']} run {fired['run_id']}{note}")
        if not args.wait or fired["run_id"] is None:
            if args.json:
                _print_json(fired)
            return 0
        detail = await _follow_run(client, fired["run_id"], quiet=args.json)
    if args.json:
        _print_json({**fired, "run": detail})
    return 0 if detail["status"] == RunState.SUCCEEDED.value else EXIT_FAILED


async def _follow_run(client: AdminClient, run_id: str, quiet: bool) -> dict[str, Any]:
    """Follow a run's history to its end (printing progress unless quiet); its detail."""
    progress = Progress()
    async for entry in client.stream(after=0, run_id=run_id):
        line = progress.line(entry)
        if line is not None and not quiet:
            print(line, flush=True)
        if entry.type in RUN_END:
            break
    detail = await client.run(run_id)
    if not quiet:
        timing = timing_from_json(detail["timing"])
        for line in progress.summary(detail["workflow"], run_id, detail["status"], timing):
            print(line)
    return detail


async def runs_command(args: argparse.Namespace, client: AdminClient) -> int:
    async with client:
        page = await client.runs(workflow=args.workflow, status=args.status, limit=args.limit)
    if args.json:
        _print_json(page)
        return 0
    print(f"{'RUN':<32} {'WORKFLOW':<20} {'STATUS':<10} {'STARTED':<20} WALL")
    for run in page["runs"]:
        wall = None if run["finished_at"] is None else run["finished_at"] - run["created_at"]
        print(
            f"{run['id']:<32} {run['workflow']:<20} {run['status']:<10} {_when(run['created_at']):<20} {_seconds(wall)}"
        )
    if page["next_cursor"]:
        print(f"(more: --limit {args.limit * 2}, or the API's cursor {page['next_cursor']})")
    return 0


async def show_command(args: argparse.Namespace, client: AdminClient) -> int:
    async with client:
        detail = await client.run(args.run)
    if args.json:
        _print_json(detail)
        return 0
    print(
        f"{detail['id']}  {detail['workflow']}  {detail['status']}  started {_when(detail['created_at'])}"
    )
    print("steps:")
    for barrier in detail["barriers"]:
        policy = barrier["policy"]
        print(
            f"  {barrier['step']:<20} {barrier['status']:<8} {barrier['succeeded']}/{barrier['required']} "
            f"required of {barrier['expected']} ({policy['mode']}, {policy['on_failure']})"
            + (f"  {barrier['reason']}" if barrier["reason"] else "")
        )
    print(f"tasks:{'':<21}{'STATE':<11}{'ATTEMPT':<9}{'WAITED':>8}  {'RAN':>8}")
    for task in detail["tasks"]:
        print(_task_row(task))
    for line in Progress().summary(
        detail["workflow"], detail["id"], detail["status"], timing_from_json(detail["timing"])
    ):
        print(line)
    return 0


def _task_row(task: dict[str, Any]) -> str:
    """One task of `show`: the wait (queued -> started) apart from the run, and what its
    earlier attempts ran."""
    label = task["step"] + (f"[{task['item']}]" if task["item"] else "")
    row = (
        f"  {label:<24} {task['state']:<10} {task['attempt']:<8} "
        f"{_seconds(task['waited']):>8}  {_seconds(task['duration']):>8}"
    )
    earlier = task.get("earlier_attempts") or []
    if earlier:
        ran = sum(attempt["duration"] or 0.0 for attempt in earlier)
        row += f"  (+{len(earlier)} earlier attempt(s), ran {ran:.2f}s)"
    return row + (f"  {task['error']}" if task["error"] else "")


async def events_command(args: argparse.Namespace, client: AdminClient) -> int:
    types = tuple(part.strip() for part in (args.type or "").split(",") if part.strip())
    async with client:
        entries = (
            client.stream(after=0, run_id=args.run, types=types)
            if args.follow
            else _listed(client, args.run, types)
        )
        async for entry in entries:
            if args.json:
                print(json.dumps(entry.to_json()), flush=True)
                continue
            where = " ".join(part for part in (entry.run_id, entry.step) if part)
            data = " ".join(
                f"{key}={value}" for key, value in entry.data.items() if value is not None
            )
            print(f"{_when(entry.at)}  #{entry.id:<6} {entry.type:<24} {where}  {data}", flush=True)
    return 0


async def _listed(
    client: AdminClient, run_id: str | None, types: tuple[str, ...]
) -> AsyncIterator[HistoryEntry]:
    for entry in await client.history(run_id=run_id, types=types):
        yield entry


async def retry_command(args: argparse.Namespace, client: AdminClient) -> int:
    async with client:
        result = await client.retry(args.run)
    if args.json:
        _print_json(result)
    else:
        print(f"retrying {result['retried_tasks']} task(s) of {result['run_id']}")
    return 0


async def cancel_command(args: argparse.Namespace, client: AdminClient) -> int:
    async with client:
        result = await client.cancel(args.run)
    if args.json:
        _print_json(result)
    else:
        print(f"cancelled {result['run_id']} (orchestrator retry {result['run_id']} re-runs it)")
    return 0


async def replay_command(args: argparse.Namespace, client: AdminClient) -> int:
    async with client:
        try:
            result = await client.replay(args.event, force=args.force)
        except AdminError as error:
            if error.status != 409:
                raise
            again = f"orchestrator replay {args.event} --force"
            raise AdminError(f"{error}; to replay it anyway: {again}", 409) from None
    if args.json:
        _print_json(result)
    else:
        print(f"replayed {result['event_id']}: new run {result['run_id']}")
    return 0


CLIENT_COMMANDS: dict[str, Command] = {
    "fire": fire_command,
    "runs": runs_command,
    "show": show_command,
    "events": events_command,
    "retry": retry_command,
    "cancel": cancel_command,
    "replay": replay_command,
}
