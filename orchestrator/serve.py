"""Running the server process: the listening socket, uvicorn, and sidecar apps beside it.

The socket is bound before uvicorn starts, so `--port 0` works and the real address is
known (and logged in `server_ready`) before the first request. A sidecar is another ASGI
app served in the same process at the address of a configured service: how the demo runs
its simulated research service, and handy for local development. SIGTERM drains the main
server (`orchestrator.drain`) before uvicorn shuts it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
import uvicorn

from orchestrator.drain import Drain
from orchestrator.settings import ConfigError, Settings

log = structlog.get_logger("orchestrator.serve")

# uvicorn's own wait for connections to close, after the drain has done the real waiting.
UVICORN_GRACE = 1


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening socket: clients may connect before uvicorn accepts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(
            [f"cannot listen on {host}:{port}: {error.strerror} (pick another --port)"]
        ) from None
    sock.listen(2048)
    return sock


@dataclass(frozen=True, slots=True)
class Sidecar:
    service: str
    app: Any
    sock: socket.socket

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"


def sidecar(spec: str, settings: Settings) -> Sidecar:
    """`SERVICE=module:factory`: the app the factory makes, at the service's configured URL."""
    service, _, target = spec.partition("=")
    module_name, _, factory_name = target.partition(":")
    known = settings.services.get(service)
    if known is None or not known.url or not factory_name:
        raise ConfigError(
            [f"--sidecar {spec!r}: expected SERVICE=module:factory, SERVICE a service with a url"]
        )
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError([f"--sidecar {spec!r}: cannot load {target}: {error}"]) from None
    address = urlsplit(known.url)
    if address.hostname is None or address.port is None:
        raise ConfigError([f"services.{service}.url: a sidecar needs a host and port in the URL"])
    return Sidecar(service, factory(), listening_socket(address.hostname, address.port))


class SidecarServer(uvicorn.Server):
    """A server that leaves signals to `run`, which stops it with the main server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MainServer(SidecarServer):
    """uvicorn's server for the app `create_app` made: calls `on_ready` once it accepts
    connections, and drains before it shuts down. `run` owns the signals."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_ready: Callable[[], Awaitable[None]],
        drain: Drain | None = None,
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._drain = drain if drain is not None else _drain_of(config.app)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            await self._on_ready()

    async def drain(self) -> None:
        """Readiness 503, stop accepting, let requests already received finish (at most the
        grace period), cut off the rest. uvicorn's shutdown follows."""
        self._drain.begin()
        for server in getattr(self, "servers", ()):  # set by startup; absent before it
            server.close()
        await self._drain.finish()


def _drain_of(app: Any) -> Drain:
    drain = getattr(getattr(app, "state", None), "drain", None)
    if not isinstance(drain, Drain):
        raise TypeError("MainServer serves an app made by orchestrator.app.create_app")
    return drain


def uvicorn_config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=UVICORN_GRACE,
    )


def run(main: MainServer, sock: socket.socket, sidecars: list[Sidecar]) -> None:
    """Serve until SIGINT or SIGTERM, then drain, shut every server down and return.

    The signals are handled here rather than by each uvicorn server, so that Ctrl-C stops
    the sidecars too and ends in a clean exit instead of a re-raised KeyboardInterrupt. The
    first signal starts the drain; a second one forces the exit at once.
    """

    async def serve() -> None:
        side = [SidecarServer(uvicorn_config(car.app)) for car in sidecars]
        servers: list[uvicorn.Server] = [main, *side]
        draining: list[asyncio.Future[None]] = []

        async def drain_then_stop() -> None:
            try:
                await main.drain()
            finally:
                for server in servers:
                    server.should_exit = True

        def stop() -> None:
            if not draining:
                draining.append(asyncio.ensure_future(drain_then_stop()))
                return
            log.warning("shutdown_forced")
            draining[0].cancel()
            for server in servers:
                server.should_exit = server.force_exit = True

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop)
        running = [
            asyncio.ensure_future(server.serve(sockets=[car.sock]))
            for server, car in zip(side, sidecars, strict=True)
        ]
        try:
            await main.serve(sockets=[sock])
        finally:
            for server in side:
                server.should_exit = True
            await asyncio.gather(*running, return_exceptions=True)

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve())


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): the loop's own overhead is about halved."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on the platforms it supports
        return None
    return uvloop.new_event_loop
