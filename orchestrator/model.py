"""Workflow, step, trigger and join-policy specs: what the TOML config declares, validated."""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    model_validator,
)

from orchestrator.durations import Duration, parse_duration

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
HANDLER_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
MIN_SECRET_BYTES = 16


class Spec(BaseModel):
    """Base of every config model: frozen, and unknown keys are errors (they are usually typos)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Rate(Spec):
    """At most `count` task starts per `per` seconds."""

    count: int = Field(ge=1)
    per: float = Field(gt=0)


def _parse_rate(value: object) -> object:
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\S+)\s*", value)
    if match is None:
        raise ValueError(f"expected a rate such as '5/s', '100/m' or '10/30s', got {value!r}")
    count, per = match.groups()
    per_seconds = parse_duration("1" + per if per in {"ms", "s", "m", "h", "d"} else per)
    return {"count": int(count), "per": per_seconds}


class JoinPolicy(Spec):
    """When a step's barrier opens or fails; stored with the barrier so a config edit cannot
    change the rules of a run already in flight."""

    mode: Literal["all", "any", "quorum"] = "all"
    quorum_count: int | None = None
    quorum_percent: float | None = None
    on_failure: Literal["fail_fast", "collect"] = "fail_fast"
    on_deadline: Literal["fail", "proceed"] = "fail"

    def required(self, expected: int) -> int:
        """Successes needed to open a barrier of `expected` tasks (never more than exist)."""
        if self.mode == "all":
            wanted = expected
        elif self.mode == "any":
            wanted = 1
        elif self.quorum_count is not None:
            wanted = self.quorum_count
        else:
            # Exact decimal arithmetic: 64.4% of 250 is 161, not the 162 that floats give.
            share = Fraction(str(self.quorum_percent or 0.0)) * expected / 100
            wanted = math.ceil(share)
        return min(wanted, expected)


def _parse_quorum(value: object) -> object:
    """A whole count stays an int; a percentage string "80%" becomes a float of percent.

    A bare float is refused: in TOML, `quorum = 8.0` would silently mean 8% otherwise.
    """
    if isinstance(value, float):
        raise ValueError("a quorum is a whole count such as 8 or a percentage string such as '80%'")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1])
        except ValueError:
            raise ValueError(
                f"expected a count such as 8 or a percentage such as '80%', got {value!r}"
            ) from None
    return value


Quorum = Annotated[int | float, BeforeValidator(_parse_quorum)]


class StepSpec(Spec):
    """One step of a workflow: a handler, its dependencies, fan-out, limits and join policy."""

    handler: str = Field(
        pattern=HANDLER_PATTERN,
        description="module:callable; async handlers run as tasks, plain functions in a thread",
    )
    needs: tuple[str, ...] = Field(
        default=(), description="steps whose barriers must open before this one starts"
    )
    for_each: str | None = Field(
        default=None,
        description="one task per list item: 'event.path', or 'step[.path]' of a step it needs",
    )
    timeout: Duration | None = Field(
        default=None, description="per attempt; the timer heap times the attempt out"
    )
    retries: int = Field(default=0, ge=0, le=100, description="attempts after the first")
    backoff: Duration = Field(
        default=1.0, description="first retry delay; exponential backoff with full jitter"
    )
    backoff_max: Duration = Field(default=300.0, description="longest retry delay")
    concurrency: int | None = Field(
        default=None, ge=1, description="at most this many tasks of the step in flight, across runs"
    )
    exclusive: str | None = Field(
        default=None, description="a resource name: tasks of steps naming it never overlap"
    )
    rate: Annotated[Rate | None, BeforeValidator(_parse_rate)] = Field(
        default=None, description="at most this many starts per interval"
    )
    join: Literal["all", "any"] = Field(
        default="all", description="the barrier opens when all tasks, or any one, succeeded"
    )
    quorum: Quorum | None = Field(
        default=None, description="open after this many successes, or this share; not with join"
    )
    on_failure: Literal["fail_fast", "collect"] = Field(
        default="fail_fast",
        description="fail_fast: fail once the quorum is out of reach; collect: let all finish",
    )
    deadline: Duration | None = Field(
        default=None, description="a deadline for the whole step, from when it starts"
    )
    on_deadline: Literal["fail", "proceed"] = Field(
        default="fail", description="at the deadline: fail the step, or proceed with what arrived"
    )
    service: str | None = Field(
        default=None,
        description="a [services.NAME]: ctx.dispatch's default URL, and secrets for callbacks",
    )
    heartbeat: Duration | None = Field(
        default=None, description="a task awaiting a callback times out when heartbeats stop"
    )

    @model_validator(mode="after")
    def _check_quorum(self) -> Self:
        if self.quorum is None:
            return self
        if self.join == "any":
            raise ValueError("set either join = 'any' or quorum, not both")
        if isinstance(self.quorum, float) and not 0 < self.quorum <= 100:
            raise ValueError("a quorum percentage must be above 0% and at most 100%")
        if isinstance(self.quorum, int) and self.quorum < 1:
            raise ValueError("a quorum count must be at least 1")
        return self

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def policy(self) -> JoinPolicy:
        """The join policy this step's barrier is created with."""
        common: dict[str, Any] = {"on_failure": self.on_failure, "on_deadline": self.on_deadline}
        if self.quorum is None:
            return JoinPolicy(mode=self.join, **common)
        if isinstance(self.quorum, int):
            return JoinPolicy(mode="quorum", quorum_count=self.quorum, **common)
        return JoinPolicy(mode="quorum", quorum_percent=self.quorum, **common)

    def for_each_source(self) -> tuple[str, tuple[str, ...]] | None:
        """('event' or an upstream step, key path) that the fan-out list is read from."""
        if self.for_each is None:
            return None
        head, *path = self.for_each.split(".")
        return head, tuple(path)


class WorkflowSpec(Spec):
    """A named DAG of steps."""

    description: str = Field(default="", description="what the workflow is for")
    steps: dict[Annotated[str, Field(pattern=NAME_PATTERN)], StepSpec] = Field(
        min_length=1, description="[workflows.NAME.steps.STEP] tables, at least one"
    )

    @model_validator(mode="after")
    def _check_graph(self) -> Self:
        for name, step in self.steps.items():
            for need in step.needs:
                if need not in self.steps:
                    known = ", ".join(sorted(self.steps))
                    raise ValueError(f"step {name!r} needs unknown step {need!r} (steps: {known})")
            source = step.for_each_source()
            if source is not None and source[0] != "event" and source[0] not in step.needs:
                raise ValueError(
                    f"step {name!r}: for_each = {step.for_each!r} must start with 'event.' "
                    f"or name a step it needs ({', '.join(step.needs) or 'none'})"
                )
        cycle = find_cycle({name: step.needs for name, step in self.steps.items()})
        if cycle:
            raise ValueError(f"the needs graph has a cycle: {' -> '.join(cycle)}")
        return self

    def dependents(self, step: str) -> list[str]:
        return [name for name, spec in self.steps.items() if step in spec.needs]

    def roots(self) -> list[str]:
        return [name for name, spec in self.steps.items() if not spec.needs]

    def stages(self) -> list[list[str]]:
        """The steps grouped by what runs side by side; see `stages_of`."""
        return stages_of({name: step.needs for name, step in self.steps.items()})


def stages_of(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Steps of `graph` (step -> steps it needs) grouped into stages that run side by side.

    Stage 0 holds the steps that need nothing; each later stage holds the steps whose needs
    all lie in earlier stages, so a step sits one past the latest of its needs and nothing in
    a stage needs anything in it. Steps keep their declaration order within a stage. A cycle
    or an unknown need is a ValueError (WorkflowSpec rejects both before this is asked).
    """
    grouped: list[list[str]] = []
    placed: set[str] = set()
    remaining = list(graph)
    while remaining:  # each round places at least one step, or stops
        stage = [name for name in remaining if placed.issuperset(graph[name])]
        if not stage:
            raise ValueError(f"no stage order: a cycle or unknown need among {remaining}")
        grouped.append(stage)
        placed.update(stage)
        remaining = [name for name in remaining if name not in placed]
    return grouped


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str]:
    """One cycle of `graph` (node -> nodes it needs) as a closed path, or [] if it is a DAG."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                if node in on_path:
                    return [*path[path.index(node) :], node]
                if node in done:
                    continue
                path.append(node)
                on_path.add(node)
            needs = graph.get(node, ())
            if index < len(needs):
                stack.append((node, index + 1))
                stack.append((needs[index], 0))
            else:
                done.add(node)
                on_path.discard(node)
                path.pop()
    return []


def _from_env(value: object) -> object:
    """`env:NAME` is the value of environment variable NAME, so config files hold no secrets."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value.removeprefix("env:")
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return value


def _resolve_secret(value: object) -> object:
    """A base64 (`whsec_`) secret with enough key, given inline or as `env:NAME`."""
    value = _from_env(value)
    if isinstance(value, str):
        try:
            key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "a webhook secret must be base64, optionally prefixed whsec_"
            ) from None
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"a webhook secret must hold at least {MIN_SECRET_BYTES} bytes of key")
    return value


class SignedBy(Spec):
    """Base of specs that hold signing secrets: `secret` is shorthand for one-item `secrets`."""

    secrets: tuple[SecretStr, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _one_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "secret" in data:
            data = dict(data)
            if "secrets" in data:
                raise ValueError("set either secret or secrets, not both")
            data["secrets"] = [data.pop("secret")]
        return data

    def secret_values(self) -> list[str]:
        return [secret.get_secret_value() for secret in self.secrets]


def _resolve_plain_secret(value: object) -> object:
    """A plain-text secret (GitHub, Stripe, a header's value, a Twilio auth token) long
    enough, given inline or as `env:NAME`."""
    value = _from_env(value)
    if isinstance(value, str) and len(value) < MIN_SECRET_BYTES:
        # An empty key would let anyone sign; a short one can be guessed.
        raise ValueError(f"a webhook secret must be at least {MIN_SECRET_BYTES} characters")
    return value


PlainSecret = Annotated[SecretStr, BeforeValidator(_resolve_plain_secret)]

# A field of a JSON or form body: dot-separated names, a digit segment indexing a list.
FIELD_PATH_PATTERN = r"^[^.\s]{1,64}(\.[^.\s]{1,64}){0,15}$"
FieldPath = Annotated[str, StringConstraints(pattern=FIELD_PATH_PATTERN)]
# A value a status or an event type is compared with (exactly: 1 is not true, "1" is not 1).
Scalar = str | bool | int


def _listed(value: object) -> object:
    """One value where a list is expected is a list of one."""
    return [value] if isinstance(value, str | int | bool) else value


Scalars = Annotated[tuple[Scalar, ...], BeforeValidator(_listed)]
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"


class ResultMapping(Spec):
    """How a provider's own callback body completes the task, without an adapter service.

    Without `status_field`, every authenticated callback succeeds. With it, the value at that
    field decides: one of `succeeded_when` succeeds, one of `failed_when` fails, any other
    (a provider's "queued", "sent") is progress: answered 200, written to the task's
    history, and the task keeps waiting.
    """

    status_field: FieldPath | None = Field(
        default=None, description="the body field whose value says how the work went"
    )
    succeeded_when: Scalars = Field(
        default=(), description="values of status_field that complete the task as succeeded"
    )
    failed_when: Scalars = Field(
        default=(), description="values of status_field that fail the task"
    )
    output_field: FieldPath | None = Field(
        default=None, description="the body field that is the task's output; unset: the whole body"
    )
    error_field: FieldPath | None = Field(
        default=None, description="the body field holding a failure's message"
    )

    @model_validator(mode="after")
    def _check_statuses(self) -> Self:
        if self.status_field is None and (self.succeeded_when or self.failed_when):
            raise ValueError("succeeded_when and failed_when need a status_field")
        if self.status_field is not None and not self.succeeded_when:
            raise ValueError("status_field needs succeeded_when (the values that mean success)")
        both = [v for v in self.succeeded_when if any(_same(v, f) for f in self.failed_when)]
        if both:
            raise ValueError(f"{both[0]!r} is in both succeeded_when and failed_when")
        return self


def _same(a: object, b: object) -> bool:
    """Equal and of the same type: a status of true is not the status 1."""
    return type(a) is type(b) and a == b


class ServiceSpec(SignedBy):
    """An external service: where to reach it, how its callbacks prove who sent them, and how
    their bodies complete a task.

    `auth` names the callback scheme: `standard` (Standard Webhooks, signed with one of
    `secrets` or the attempt's `ctx.callback_secret`), `header` (the header named `header`
    must equal one of `secrets` or the attempt's `ctx.callback_secret`), `twilio` (Twilio's
    X-Twilio-Signature, keyed with the account's auth token in `secret`) or `capability`
    (the unguessable callback URL alone; warned about at start-up). `secret` takes one
    secret, `secrets` several (during a rotation, old and new); either may be written
    `env:NAME` to read it from the environment.
    """

    url: str | None = Field(
        default=None, description="where ctx.dispatch sends, for steps naming this service"
    )
    description: str = Field(default="", description="what the service does")
    auth: Literal["standard", "header", "twilio", "capability"] = Field(
        default="standard",
        description="how callbacks authenticate: standard, header, twilio, or capability "
        "(the URL alone, warned about at start-up)",
    )
    header: Annotated[str, StringConstraints(pattern=HEADER_NAME_PATTERN)] | None = Field(
        default=None, description="auth = header: the header whose value must equal a secret"
    )
    secrets: tuple[PlainSecret, ...] = Field(
        default=(),
        description="secrets its callbacks may be signed with (standard: whsec_ base64; "
        "twilio: the auth token; header: the expected value); rotation: several",
    )
    result: ResultMapping | None = Field(
        default=None,
        description="the provider's own callback body: a [services.NAME.result] table; "
        'unset: {"status": "succeeded" or "failed", "output": ..., "error": ...}',
    )

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        if self.auth == "standard":
            for secret in self.secrets:
                _resolve_secret(secret.get_secret_value())
        if self.auth == "header" and self.header is None:
            raise ValueError('auth = "header" needs header = "NAME" (the header to check)')
        if self.auth != "header" and self.header is not None:
            raise ValueError('header is only read with auth = "header"')
        if self.auth == "twilio" and not self.secrets:
            raise ValueError('auth = "twilio" needs the auth token: secret = "env:NAME"')
        if self.auth == "capability" and self.secrets:
            raise ValueError('auth = "capability" checks no secret: remove secret(s)')
        return self


KEY_PATHS_MAX = 8


def _paths(value: object) -> object:
    """`completes = "data.object.id"` is a list of one path."""
    return [value] if isinstance(value, str) else value


class WebhookSpec(SignedBy):
    """How an inbound webhook trigger checks who sent it, and whether its events complete
    tasks waiting on a key (`ctx.await_event`).

    `standard` (Standard Webhooks), `github` (X-Hub-Signature-256) or `stripe`
    (Stripe-Signature); `none` only when chosen explicitly, and warned about at start-up.
    With `completes`, each event's key (read at those fields) completes every task awaiting
    it; an event no task awaits yet is kept for `keep_unmatched`, so a wait registered
    after the event arrived still completes.
    """

    scheme: Literal["standard", "github", "stripe", "none"] = Field(
        description="how deliveries are signed; none: unsigned, warned about at start-up"
    )
    secrets: tuple[PlainSecret, ...] = Field(
        default=(), description="secrets that may sign a delivery (rotation: several)"
    )
    tolerance: Duration = Field(default=300.0, description="accepted clock skew of a signature")
    payload_model: str | None = Field(
        default=None,
        pattern=HANDLER_PATTERN,
        description="module:Model that validates the payload (422 otherwise)",
    )
    completes: Annotated[tuple[FieldPath, ...], BeforeValidator(_paths)] = Field(
        default=(),
        max_length=KEY_PATHS_MAX,
        description="the payload field(s) holding the key that ctx.await_event(key=...) waits "
        'on, e.g. "data.object.id"; each event completes every task awaiting its key',
    )
    completes_when: dict[FieldPath, Scalars] = Field(
        default_factory=dict,
        description="only events whose fields hold one of these values complete or are kept, "
        'e.g. { type = ["payment_intent.succeeded", "payment_intent.payment_failed"] }',
    )
    fails_when: dict[FieldPath, Scalars] = Field(
        default_factory=dict,
        description="events that fail the tasks they complete instead, e.g. "
        '{ type = ["payment_intent.payment_failed"] }',
    )
    error_field: FieldPath | None = Field(
        default=None, description="the payload field holding a failure's message"
    )
    starts_runs: bool = Field(
        default=True,
        description="whether each event also starts a run of the trigger's workflow; "
        "false: it only completes tasks (the trigger then names no workflow)",
    )
    keep_unmatched: Duration = Field(
        default=3600.0,
        description="how long an event whose key no task awaits yet is kept for a wait "
        "registered later; 0 keeps none",
    )
    keep_unmatched_max: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="events kept for early arrival at most, per trigger; the oldest go first",
    )

    @model_validator(mode="after")
    def _needs_a_secret(self) -> Self:
        if self.scheme != "none" and not self.secrets:
            raise ValueError(f'scheme {self.scheme!r} needs a secret (write secret = "env:NAME")')
        if self.scheme == "standard":
            for secret in self.secrets:
                _resolve_secret(secret.get_secret_value())
        return self

    @model_validator(mode="after")
    def _check_completion(self) -> Self:
        if self.completes:
            if self.scheme == "none":
                raise ValueError(
                    "completes needs a signed scheme: on a scheme = 'none' hook anyone could "
                    "complete tasks"
                )
            return self
        given = {"completes_when", "fails_when", "error_field"} & self.model_fields_set
        if given:
            raise ValueError(f'{sorted(given)[0]} is only read with completes = "PATH"')
        if not self.starts_runs:
            raise ValueError("starts_runs = false needs completes: the events would do nothing")
        return self


def _zone(value: object) -> object:
    if isinstance(value, str):
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown IANA timezone {value!r} (e.g. 'Europe/Berlin', 'UTC')"
            ) from None
    return value


class TriggerSpec(Spec):
    """A named source of events: a cron schedule, an inbound webhook, or neither (fired by
    hand). Every trigger can also be fired by hand."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    workflow: str | None = Field(
        default=None,
        description="the workflow each event starts; required unless the webhook has "
        "starts_runs = false",
    )
    description: str = Field(default="", description="what the trigger is for")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="default event payload, merged under what is fired"
    )
    cron: Annotated[str, StringConstraints(strip_whitespace=True)] | None = Field(
        default=None, description="five fields or @daily, @hourly, ..."
    )
    timezone: Annotated[ZoneInfo, BeforeValidator(_zone)] = Field(
        default=ZoneInfo("UTC"), description="the zone the cron expression is read in"
    )
    on_gap: Literal["shift", "skip"] = Field(
        default="shift",
        description="a local time that does not exist (spring forward): shift to the change, or skip",
    )
    on_overlap: Literal["first", "last", "both"] = Field(
        default="first", description="a local time that happens twice (fall back): which fires"
    )
    misfire: Literal["skip", "latest", "all"] = Field(
        default="latest", description="after downtime: which missed fires (within the grace) fire"
    )
    misfire_grace: Duration = Field(default=3600.0, description="how far back a missed fire counts")
    webhook: WebhookSpec | None = Field(
        default=None, description="fire by signed POST /hooks/NAME: a [triggers.NAME.webhook] table"
    )

    @model_validator(mode="after")
    def _check_kind(self) -> Self:
        from orchestrator.cron import valid_expression

        if self.cron is not None and self.webhook is not None:
            raise ValueError("a trigger is a cron schedule or a webhook, not both")
        starts_runs = self.webhook is None or self.webhook.starts_runs
        if starts_runs and self.workflow is None:
            raise ValueError("workflow: required field is missing (the workflow it starts)")
        if not starts_runs and self.workflow is not None:
            raise ValueError("workflow: a webhook with starts_runs = false starts no workflow")
        if self.cron is not None and not valid_expression(self.cron):
            raise ValueError(
                f"cron = {self.cron!r} is not a cron expression that can fire: five fields "
                "(minute hour day month weekday, e.g. '42 7 * * MON-FRI') or @daily, @hourly, ..."
            )
        return self

    @property
    def kind(self) -> str:
        return "cron" if self.cron else "webhook" if self.webhook else "manual"
