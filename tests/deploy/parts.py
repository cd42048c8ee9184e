"""What the deploy files are checked against: the real app, the real settings, the Dockerfile."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from starlette.routing import Route

from orchestrator.app import create_app
from orchestrator.settings import ENV_PREFIX, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLE_CONFIG = DEPLOY / "orchestrator.toml"


@cache
def routes() -> frozenset[str]:
    """The paths the app serves at its top level (probes and /metrics among them)."""
    app = create_app(Settings())
    return frozenset(route.path for route in app.routes if isinstance(route, Route))


@cache
def env_names() -> frozenset[str]:
    """Every environment variable Settings reads."""
    return frozenset(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)


def example_grace() -> float:
    """shutdown_grace of the example config the images and units run with."""
    return load_settings(EXAMPLE_CONFIG).shutdown_grace


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kind, args in self.instructions if kind == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


@cache
def dockerfile() -> list[Stage]:
    """deploy/Dockerfile as build stages of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    """An instruction's exec form (a JSON array); the shell form is refused."""
    value = json.loads(args)
    assert isinstance(value, list), f"expected the exec form (a JSON array), got {args}"
    return [str(part) for part in value]


def entry_command() -> list[str]:
    """ENTRYPOINT + CMD of the final stage: what the container runs."""
    final = dockerfile()[-1]
    return exec_form(final.last("ENTRYPOINT")) + exec_form(final.last("CMD"))


def config_path_in_image() -> str:
    command = entry_command()
    return command[command.index("--config") + 1]


def unit_command(exec_start: str) -> list[str]:
    return shlex.split(exec_start)
