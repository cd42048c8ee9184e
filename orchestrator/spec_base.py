"""What every config model shares: frozen specs that refuse unknown keys, the patterns of
names and handler paths, and secrets (inline or `env:NAME`, long enough to be keys)."""

from __future__ import annotations

import base64
import binascii
import os
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, model_validator

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
HANDLER_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
MIN_SECRET_BYTES = 16


class Spec(BaseModel):
    """Base of every config model: frozen, and unknown keys are errors (they are usually typos)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
