"""A small async client for the admin API, used by the CLI and by end-to-end tests."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrator.records import HistoryEntry

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "ORCHESTRATOR_URL"


class AdminError(Exception):
    """The server answered with an error; the message carries its JSON detail."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where a client command sends its requests, and what said so (for error messages)."""

    url: str
    origin: str


def server_address(
    url: str | None, environ: Mapping[str, str], configured: tuple[str, str, int] | None
) -> ServerAddress:
    """The server to talk to: `--url`, else $ORCHESTRATOR_URL, else the host and port of
    the config (`configured` = (config file, host, port)), else 127.0.0.1:8000."""
    if url:
        return ServerAddress(url, "from --url")
    if environ.get(URL_VARIABLE):
        return ServerAddress(environ[URL_VARIABLE], f"from {URL_VARIABLE}")
    if configured is not None and configured[2] != 0:  # port 0: the server picked one
        source, host, port = configured
        return ServerAddress(f"http://{_connectable(host)}:{port}", f"host and port of {source}")
    return ServerAddress(DEFAULT_URL, "the default")


def _connectable(host: str) -> str:
    """A host to connect to for one a server binds: 0.0.0.0 binds all, so ask loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


class AdminClient:
    def __init__(self, base_url: str, token: str | None, http: httpx.AsyncClient | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = http or httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(10.0, read=None)
        )

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise AdminError(
                f"{method} {path}: {response.status_code} {detail}", response.status_code
            )
        return response.json()

    async def fire(
        self, name: str, payload: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = await self._json(
            "POST", f"/admin/triggers/{name}/fire", json=payload or {}, headers=headers
        )
        return result

    async def runs(self, **filters: Any) -> dict[str, Any]:
        params = {key: value for key, value in filters.items() if value is not None}
        result: dict[str, Any] = await self._json("GET", "/admin/runs", params=params)
        return result

    async def retry(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", f"/admin/runs/{run_id}/retry")
        return result

    async def cancel(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", f"/admin/runs/{run_id}/cancel")
        return result

    async def replay(self, event_id: str, force: bool = False) -> dict[str, Any]:
        """Start a new run from a stored event; refused (409) while one of its runs is active."""
        params = {"force": "true"} if force else {}
        result: dict[str, Any] = await self._json(
            "POST", f"/admin/events/{event_id}/replay", params=params
        )
        return result

    async def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/admin/runs/{run_id}")
        return result

    async def history(
        self, run_id: str | None = None, after: int = 0, types: Iterable[str] = ()
    ) -> list[HistoryEntry]:
        """Every history entry (of one run, of these types, if given) after `after`,
        following pages."""
        entries: list[HistoryEntry] = []
        listed = ",".join(types)
        while True:
            params: dict[str, Any] = {"after": after, "limit": 1000}
            if run_id is not None:
                params["run"] = run_id
            if listed:
                params["type"] = listed
            page = await self._json("GET", "/admin/events", params=params)
            entries.extend(_entry(item) for item in page["events"])
            if len(page["events"]) < 1000:
                return entries
            after = page["next_after"]

    async def stream(
        self, after: int | None = 0, run_id: str | None = None, types: Iterable[str] = ()
    ) -> AsyncIterator[HistoryEntry]:
        """History entries as the server streams them (Server-Sent Events), until cancelled."""
        params: dict[str, Any] = {}
        if after is not None:
            params["after"] = after
        if run_id is not None:
            params["run"] = run_id
        if types:
            params["type"] = ",".join(types)
        async with self._http.stream("GET", "/admin/events/stream", params=params) as response:
            if response.status_code != 200:
                await response.aread()
                raise AdminError(
                    f"event stream: {response.status_code} {response.text}", response.status_code
                )
            data: list[str] = []
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield _entry(json.loads("\n".join(data)))
                    data = []


def _entry(item: dict[str, Any]) -> HistoryEntry:
    return HistoryEntry(
        id=item["id"],
        type=item["type"],
        at=item["at"],
        run_id=item["run_id"],
        task_id=item["task_id"],
        step=item["step"],
        data=item["data"],
    )
