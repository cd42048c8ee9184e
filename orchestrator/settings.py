"""Settings: a TOML file in config/ declares server options, workflows and triggers;
ORCHESTRATOR_* environment variables override its top-level options.

Every problem is reported as `source: field.path: what was expected`, where the source is
the file or the environment variable the value came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orchestrator.durations import Duration
from orchestrator.invoke import HandlerImportError, add_import_roots, load_handler
from orchestrator.model import NAME_PATTERN, ServiceSpec, TriggerSpec, WorkflowSpec
from orchestrator.store import url_problem

ENV_PREFIX = "ORCHESTRATOR_"
DEFAULT_CONFIG = Path("config/orchestrator.toml")


class ConfigError(Exception):
    """A config that cannot be used; `problems` are one line each, ready for a terminal."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Settings(BaseSettings):
    """Everything the orchestrator is told; see config/orchestrator.toml for an example."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    database_url: str = Field(
        default="sqlite:///orchestrator.db",
        description="the store: sqlite:///PATH (relative), sqlite:////PATH (absolute), or "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (pip install 'orchestrator[postgres]')",
    )
    database_pool_min: int = Field(
        default=1,
        ge=0,
        description="PostgreSQL: connections the pool keeps open even when idle",
    )
    database_pool_max: int = Field(
        default=10,
        ge=1,
        description="PostgreSQL: connections at most; transactions beyond it wait their turn",
    )
    database_pool_timeout: Duration = Field(
        default=10.0,
        description="PostgreSQL: longest wait for a connection before a request is answered 503",
    )
    public_url: str | None = Field(
        default=None,
        description="how external services reach this server; default: the address it binds",
    )
    callback_key: SecretStr | None = Field(
        default=None,
        description="key callback tokens derive from; default: one made and kept in the store",
    )
    body_limit: int = Field(
        default=1024 * 1024, ge=1024, description="largest accepted body, bytes"
    )
    header_limit: int = Field(
        default=32 * 1024,
        ge=1024,
        description="largest accepted header block (all fields together), bytes; over it: 431",
    )
    signature_tolerance: Duration = Field(default=300.0, description="accepted webhook clock skew")
    retention_history: Duration = Field(
        default=30 * 86400.0,
        description="per-task history and payloads of finished runs are kept this long",
    )
    retention_runs: Duration = Field(
        default=365 * 86400.0, description="run summaries (and delivery ids) are kept this long"
    )
    admin_token: SecretStr | None = Field(
        default=None, description="bearer token(s) for /admin; several, comma-separated, rotate"
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="bearer token(s) for /metrics, comma-separated; unset: /metrics is open",
    )
    host: str = Field(default="127.0.0.1", description="address to bind; --host overrides it")
    port: int = Field(default=8000, ge=0, le=65535, description="port to bind; 0 picks a free one")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="least severe log line written"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: JSON lines unless stderr is a terminal"
    )
    shutdown_grace: Duration = Field(
        default=10.0,
        description="on SIGTERM, how long requests already received may take before they are cut off",
    )
    handler_threads: int = Field(default=32, ge=1, description="worker threads for sync handlers")
    max_running_handlers: int = Field(
        default=1024,
        ge=1,
        description="handler invocations running at once; more ready tasks wait their turn",
    )
    replica_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="this process's name among replicas sharing one PostgreSQL database; "
        "default host:port, which a restarted replica keeps (so it takes its own tasks back "
        "at once)",
    )
    replica_lease: Duration = Field(
        default=30.0,
        ge=3.0,
        description="on a shared database, how long a replica that stops renewing its lease "
        "(renewed every third of it) keeps its tasks before a peer takes them over",
    )
    store_busy_timeout: Duration = Field(
        default=2.0,
        gt=0,
        description="a request that needs a write and cannot get one this soon (another "
        "process holds the database) is answered 503 with Retry-After",
    )
    ready_probe_reuse: Duration = Field(
        default=1.0,
        ge=0,
        description="how long /readyz reuses a successful write probe: a flood of readiness "
        "checks costs at most one small write per this interval; 0 probes every time",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL: a commit survives power loss; NORMAL: it survives a process crash",
    )
    services: dict[str, ServiceSpec] = Field(
        default_factory=dict, description="[services.NAME] tables: external services"
    )
    workflows: dict[str, WorkflowSpec] = Field(
        default_factory=dict, description="[workflows.NAME] tables: named DAGs of steps"
    )
    triggers: dict[str, TriggerSpec] = Field(
        default_factory=dict, description="[triggers.NAME] tables: sources of events"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init values; the environment must win over it.
        return (env_settings, init_settings)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: str) -> str:
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return url

    @model_validator(mode="after")
    def _check_names(self) -> Self:
        kinds = (
            ("workflow", self.workflows),
            ("trigger", self.triggers),
            ("service", self.services),
        )
        for kind, names in kinds:
            for name in names:
                if not re.match(NAME_PATTERN, name):
                    raise ValueError(f"{kind} name {name!r} must be letters, digits, _ or -")
        for name, trigger in self.triggers.items():
            if trigger.workflow is not None and trigger.workflow not in self.workflows:
                known = ", ".join(sorted(self.workflows)) or "none"
                raise ValueError(
                    f"triggers.{name}.workflow: unknown workflow {trigger.workflow!r} (workflows: {known})"
                )
        if self.database_pool_max < self.database_pool_min:
            raise ValueError(
                f"database_pool_max: must be at least database_pool_min ({self.database_pool_min})"
            )
        if self.retention_runs < max(self.retention_history, 7 * 86400.0):
            raise ValueError(
                "retention_runs: must be at least retention_history and at least 7d "
                "(senders retry deliveries for days; their ids must still dedup)"
            )
        for workflow_name, workflow in self.workflows.items():
            for step_name, step in workflow.steps.items():
                if step.service is not None and step.service not in self.services:
                    known = ", ".join(sorted(self.services)) or "none"
                    raise ValueError(
                        f"workflows.{workflow_name}.steps.{step_name}.service: unknown service "
                        f"{step.service!r} (services: {known})"
                    )
        return self

    def admin_tokens(self) -> list[str]:
        return _tokens(self.admin_token)

    def metrics_tokens(self) -> list[str]:
        return _tokens(self.metrics_token)


def _tokens(secret: SecretStr | None) -> list[str]:
    """The comma-separated tokens of a setting (several, so they can be rotated)."""
    if secret is None:
        return []
    return [token.strip() for token in secret.get_secret_value().split(",") if token.strip()]


def config_path(path: str | Path | None = None) -> Path:
    """The config file: the argument, else $ORCHESTRATOR_CONFIG, else config/orchestrator.toml."""
    return Path(path or os.environ.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate the config file and environment; ConfigError lists every problem."""
    source = config_path(path)
    try:
        with source.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            [f"{source}: no such config file (pass --config or set {ENV_PREFIX}CONFIG)"]
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{source}: not valid TOML: {error}"]) from None
    try:
        return Settings(**data)
    except ValidationError as error:
        raise ConfigError(
            [_describe(source, problem, data) for problem in error.errors()]
        ) from None


def client_settings(path: str | Path | None = None) -> tuple[Settings, Path | None]:
    """The settings a client command takes the server's address and admin token from, and
    the config file they came from.

    A file named by `path` must load. $ORCHESTRATOR_CONFIG or the default file is used when
    it exists and loads (a client needs only the address and token, not a valid workflow);
    otherwise the environment alone.
    """
    if path is not None:
        return load_settings(path), Path(path)
    source = config_path()
    if source.exists():
        try:
            return load_settings(source), source
        except ConfigError:
            pass
    try:
        return Settings(), None
    except ValidationError as error:
        raise ConfigError(
            [_describe(Path("environment"), problem) for problem in error.errors()]
        ) from None


def as_written(location: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """The field path as the file spells it: `secret = ...` is validated as `secrets[0]`,
    so a problem there is named `secret`, not `secrets.0`."""
    if len(location) < 2 or location[-2:] != ("secrets", 0):
        return location
    table: Any = data
    for part in location[:-2]:
        if not isinstance(table, dict) or part not in table:
            return location
        table = table[part]
    if isinstance(table, dict) and "secret" in table and "secrets" not in table:
        return (*location[:-2], "secret")
    return location


def _describe(source: Path, problem: Any, data: Any = None) -> str:
    location = as_written(tuple(problem["loc"]), data)
    origin = str(source)
    if location and isinstance(location[0], str):
        variable = f"{ENV_PREFIX}{location[0]}".upper()
        if any(name.upper() == variable for name in os.environ):
            origin = f"environment variable {variable}"
    message = str(problem["msg"]).removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        message = "unknown field (check the spelling)"
    elif problem["type"] == "missing":
        message = "required field is missing"
    if not location:  # whole-model checks name their own field path in the message
        return f"{origin}: {message}"
    return f"{origin}: {'.'.join(str(part) for part in location)}: {message}"


def check_handlers(settings: Settings, source: Path) -> None:
    """Import every handler the config names; ConfigError lists the ones that do not import.

    The config file's directory and the working directory go first on the import path, so
    a user's handler modules beside the config (or where the command runs) are found.
    """
    add_import_roots(source)
    problems = []
    for workflow_name, workflow in settings.workflows.items():
        for step_name, step in workflow.steps.items():
            try:
                load_handler(step.handler)
            except HandlerImportError as error:
                field = f"workflows.{workflow_name}.steps.{step_name}.handler"
                problems.append(f"{source}: {field}: {error}")
    for trigger_name, trigger in settings.triggers.items():
        model = trigger.webhook.payload_model if trigger.webhook else None
        if model is not None:
            try:
                load_handler(model)
            except HandlerImportError as error:
                field = f"triggers.{trigger_name}.webhook.payload_model"
                problems.append(f"{source}: {field}: {error}")
    if problems:
        raise ConfigError(problems)
