"""Specs of the orchestrator's edges: the services it hands work to, how their callbacks
authenticate and read, and the triggers (cron, webhook) whose events start runs or
complete tasks waiting on a key."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from orchestrator.durations import Duration
from orchestrator.spec_base import (
    HANDLER_PATTERN,
    PlainSecret,
    SignedBy,
    Spec,
    _resolve_secret,
)

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
    on_gap: Literal["shift", "skip"] | None = Field(
        default=None,
        description="a local time that does not exist (spring forward): shift to the change, "
        "or skip; unset: shift for a fixed time of day, skip for a `*` minute or hour",
    )
    on_overlap: Literal["first", "last", "both"] | None = Field(
        default=None,
        description="a local time that happens twice (fall back): which fires; unset: first "
        "for a fixed time of day, both for a `*` minute or hour",
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
