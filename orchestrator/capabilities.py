"""Callback capabilities: the per-attempt callback URL, its token and its secret.

All three derive from one server key (HMAC), so a restart hands the same URL to a
re-dispatched attempt; the store keeps only the token's hash. The key is given in the
settings or made once and kept in the store (so every replica over one database shares it).
"""

from __future__ import annotations

from orchestrator.records import Task
from orchestrator.store import CallbackToken, Store
from orchestrator.tokens import callback_token, task_secret, token_hash


class Capabilities:
    def __init__(self, store: Store, public_url: str, key: bytes | None = None) -> None:
        self._store = store
        self._public_url = public_url.rstrip("/")
        self._key = key

    async def load(self) -> bytes:
        """The key: given at construction, else made once and kept in the store."""
        if self._key is None:
            self._key = await self._store.server_key()
        return self._key

    @property
    def key(self) -> bytes:
        if self._key is None:
            raise RuntimeError("the callback key is not loaded yet: await load() first")
        return self._key

    def token(self, task: Task) -> str:
        return callback_token(self.key, task.id, task.attempt)

    def url(self, task: Task) -> str:
        """Where a service POSTs this attempt's completion."""
        return f"{self._public_url}/callbacks/{self.token(task)}"

    def secret(self, task: Task) -> str:
        """The per-attempt secret a service may sign this attempt's callback with."""
        return task_secret(self.key, task.id, task.attempt)

    def stored_tokens(self, tasks: list[Task]) -> list[CallbackToken]:
        """The rows that make these attempts' callback URLs resolve."""
        return [CallbackToken(token_hash(self.token(t)), t.id, t.attempt) for t in tasks]
