"""Callback capabilities: the URL token and per-attempt secret derived from the server key."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from orchestrator.signing import SECRET_PREFIX, SignatureError, sign_headers, verify
from orchestrator.tokens import callback_token, task_secret, token_hash

KEY = b"k" * 32
OTHER_KEY = b"K" * 32
TASK = "tsk_01hf3j6r2xq7v9c8m4n5p0w1yz"
OTHER_TASK = "tsk_01hf3j6r2xq7v9c8m4n5p0w1z0"
T = 1_700_000_000


def decoded(token: str) -> bytes:
    """The bytes behind an unpadded URL-safe base64 token."""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


# The URL token.


def test_callback_token_is_deterministic() -> None:
    """The same key, task and attempt give the same token, so a re-dispatch keeps its URL."""
    assert callback_token(KEY, TASK, 1) == callback_token(KEY, TASK, 1)


@pytest.mark.parametrize(
    ("key", "task_id", "attempt"),
    [(KEY, TASK, 2), (KEY, OTHER_TASK, 1), (OTHER_KEY, TASK, 1)],
    ids=["another-attempt", "another-task", "another-key"],
)
def test_callback_token_differs_when_any_input_differs(
    key: bytes, task_id: str, attempt: int
) -> None:
    """Another attempt, task or server key gives another token."""
    assert callback_token(key, task_id, attempt) != callback_token(KEY, TASK, 1)


def test_callback_token_is_url_safe() -> None:
    """The token is unpadded URL-safe base64, fit for a path segment as it is."""
    for attempt in range(1, 50):
        assert re.fullmatch(r"[A-Za-z0-9_-]+", callback_token(KEY, TASK, attempt))


def test_callback_token_carries_at_least_128_bits() -> None:
    """The token decodes to at least 16 bytes (it is a 256-bit MAC)."""
    assert len(decoded(callback_token(KEY, TASK, 1))) >= 16


def test_callback_token_does_not_contain_the_task_id() -> None:
    """The token reveals nothing of the task id, in its text or its bytes."""
    token = callback_token(KEY, TASK, 1)
    assert TASK not in token
    assert TASK.encode() not in decoded(token)
    assert TASK.removeprefix("tsk_") not in token


# What the store keeps.


def test_token_hash_is_sha256_hex_of_the_token() -> None:
    """token_hash is the SHA-256 of the token, in lowercase hex, and not the token itself."""
    token = callback_token(KEY, TASK, 1)
    digest = token_hash(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert digest != token
    assert token not in digest


def test_token_hash_differs_per_token() -> None:
    """Tokens of two attempts hash to two different store keys."""
    assert token_hash(callback_token(KEY, TASK, 1)) != token_hash(callback_token(KEY, TASK, 2))


# The per-attempt secret.


def test_task_secret_is_a_usable_whsec_secret() -> None:
    """task_secret is a whsec_ secret with which sign_headers and verify round-trip."""
    secret = task_secret(KEY, TASK, 1)
    assert secret.startswith(SECRET_PREFIX)
    assert len(base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)) == 32
    headers = sign_headers(secret, b'{"status":"succeeded"}', "msg_1", T)
    assert verify([secret], headers, b'{"status":"succeeded"}', now=T).message_id == "msg_1"


def test_task_secret_is_deterministic_and_differs_per_attempt() -> None:
    """One attempt always gets the same secret; another attempt's does not verify its messages."""
    first, second = task_secret(KEY, TASK, 1), task_secret(KEY, TASK, 2)
    assert task_secret(KEY, TASK, 1) == first
    assert first != second
    headers = sign_headers(second, b"{}", "msg_1", T)
    with pytest.raises(SignatureError):
        verify([first], headers, b"{}", now=T)


def test_task_secret_is_not_the_token() -> None:
    """The secret and the token of one attempt are derived apart: one does not give the other."""
    secret_key = base64.b64decode(task_secret(KEY, TASK, 1).removeprefix(SECRET_PREFIX))
    assert secret_key != decoded(callback_token(KEY, TASK, 1))
