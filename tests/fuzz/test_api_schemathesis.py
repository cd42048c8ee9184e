"""Schemathesis against /openapi.json: every operation, with and without the admin token."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.app import create_app
from orchestrator.openapi import document
from orchestrator.serve import listening_socket
from orchestrator.settings import Settings
from tests.engine.conftest import H
from tests.fuzz.budget import budget

TOKEN = "fuzz-token"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
schema = schemathesis.openapi.from_dict(document())


def fuzz_settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'fuzz.db'}",
            "admin_token": TOKEN,
            "body_limit": 64 * 1024,
            "workflows": {"wf": {"steps": {"one": {"handler": H + "single"}}}},
            "triggers": {
                "open": {"workflow": "wf", "webhook": {"scheme": "none"}},
                "nightly": {"workflow": "wf", "cron": "0 3 * * *"},
            },
        }
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app under a real uvicorn in a thread of its own (schemathesis calls are blocking)."""
    app = create_app(fuzz_settings(tmp_path_factory.mktemp("fuzz")))
    sock = listening_socket("127.0.0.1", 0)  # listening already: requests queue until ready
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


STREAM = "/admin/events/stream"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
operations = schema.exclude(path=STREAM)
# Every stream case takes the read timeout (a second) to end: generated cases only, no
# coverage phase, which would make one per combination of parameter edge cases.
stream = schemathesis.openapi.from_dict(
    document(), config=SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}})
).include(path=STREAM)


def call(case: Any, server: str, headers: dict[str, str]) -> None:
    """Send the case as generated; a webhook case once more to the trigger that exists."""
    case.call_and_validate(base_url=server, headers=headers, checks=CHECKS, timeout=30)
    if case.path == "/hooks/{trigger}":
        case.path_parameters = {"trigger": "open"}
        case.call_and_validate(base_url=server, headers=headers, checks=CHECKS, timeout=30)


@operations.parametrize()
@budget(quick=25, long=500)
def test_no_operation_answers_5xx_or_off_its_schema_with_the_token(case: Any, server: str) -> None:
    """With a valid admin token, no generated request gets a 5xx or an undocumented answer."""
    call(case, server, AUTH)


@operations.parametrize()
@budget(quick=25, long=500)
def test_no_operation_answers_5xx_or_off_its_schema_without_it(case: Any, server: str) -> None:
    """Without a token (or with the schema's own guesses), no request gets a 5xx or undocumented answer."""
    call(case, server, {})


@stream.parametrize()
@budget(quick=5, long=100)
def test_the_event_stream_answers_no_5xx_with_the_token(case: Any, server: str) -> None:
    """The history stream answers a 200 stream or a 400 for any generated parameters."""
    # A stream never ends: the transport reads it until the read timeout passes.
    case.call_and_validate(base_url=server, headers=AUTH, checks=CHECKS, timeout=(30, 1))
