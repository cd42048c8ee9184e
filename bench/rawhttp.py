"""A lean HTTP/1.1 keep-alive client for load generation, so the load is not the bottleneck.

httpx spends about 0.7 ms of CPU per request on this machine; a fake service sending 1,000
callbacks through it would measure itself, not the orchestrator. This client writes
pre-built request bytes on pooled keep-alive connections and reads back the status line,
headers and a Content-Length body: about 30 us per request. It speaks only what the
benchmark's servers answer (no chunked bodies, no TLS); it is test equipment, not product.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


def request_bytes(method: str, url: str, headers: dict[str, str], body: bytes) -> bytes:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


class RawClient:
    """Up to `size` keep-alive connections to one host; requests wait for a free one."""

    def __init__(self, url: str, size: int = 32) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._free: asyncio.Queue[Connection | None] = asyncio.Queue()
        for _ in range(size):
            self._free.put_nowait(None)  # a slot without a connection yet

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one pre-built request; a connection the server closed is replaced once."""
        conn = await self._free.get()
        try:
            for attempt in (1, 2):
                if conn is None:
                    conn = Connection(*await asyncio.open_connection(self._host, self._port))
                try:
                    return await conn.exchange(raw)
                except (ConnectionError, asyncio.IncompleteReadError):
                    conn.close()
                    conn = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        finally:
            self._free.put_nowait(conn)

    def close(self) -> None:
        while not self._free.empty():
            conn = self._free.get_nowait()
            if conn is not None:
                conn.close()
