"""The ceiling for callback ingest: a Starlette endpoint that only answers 200.

Served with the orchestrator's own uvicorn settings and event loop, on the same core, so
that the only difference wrk sees is the work the orchestrator does per callback.

    python -m bench.bare --fd N
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.serve import event_loop_factory, uvicorn_config


async def accept(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "accepted", "detail": "bare endpoint"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def app() -> Starlette:
    return Starlette(
        routes=[
            Route("/callbacks/{token}", accept, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="serve on this listening socket")
    args = parser.parse_args()
    sock = socket.socket(fileno=args.fd)
    server = uvicorn.Server(uvicorn_config(app()))
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
