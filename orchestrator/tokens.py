"""Callback capabilities: the unguessable token in a task's callback URL, and its per-task secret.

Both are derived with HMAC-SHA256 from a server key and (task id, attempt): a re-dispatch of
the same attempt after a restart hands out the same URL and secret, so a service that
registered before the crash can still call back. Only the token's SHA-256 is stored; the
token itself never touches the database, and it is not the task id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from orchestrator.signing import secret_from_key


def _derive(key: bytes, purpose: str, task_id: str, attempt: int) -> bytes:
    return hmac.new(key, f"{purpose}:{task_id}:{attempt}".encode(), hashlib.sha256).digest()


def callback_token(key: bytes, task_id: str, attempt: int) -> str:
    """The URL-safe token (256 bits) that lets one attempt of one task be completed."""
    raw = _derive(key, "token", task_id, attempt)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    """What the store keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def task_secret(key: bytes, task_id: str, attempt: int) -> str:
    """A `whsec_` secret for one attempt, for services that sign with what they were handed."""
    return secret_from_key(_derive(key, "secret", task_id, attempt))
