"""The OpenAPI document of the HTTP surface, written by hand and tested against the routes."""

from __future__ import annotations

from typing import Any

from orchestrator import __version__
from orchestrator.openapi_runs import ATTEMPT, RUN_DETAIL, SEGMENT, TASK, TIMING, ref
from orchestrator.openapi_waits import KEPT_EVENTS, WAITS

ERROR = {"$ref": "#/components/schemas/Error"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ERROR, description)


def _query(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": kind},
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


SIGNED = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"}},
    {"name": "webhook-timestamp", "in": "header", "required": True, "schema": {"type": "string"}},
    {"name": "webhook-signature", "in": "header", "required": True, "schema": {"type": "string"}},
]
OBJECT = {"type": "object"}
FIRED = {
    "type": "object",
    "properties": {
        "event_id": {"type": "string"},
        "run_id": {"type": ["string", "null"]},
        "duplicate": {"type": "boolean"},
        "completed": {"type": "integer", "description": "tasks waiting on its key it completed"},
        "kept": {"type": "integer", "description": "keys it was kept under for later waits"},
    },
}
CALLBACK = {
    "type": "object",
    "required": ["status"],
    "additionalProperties": False,
    "properties": {
        "status": {"enum": ["succeeded", "failed"]},
        "output": {},
        "error": {"type": ["string", "null"]},
    },
}


MALFORMED = _error(
    "not strict JSON within the limits: malformed_json, invalid_utf8, json_too_deep, "
    "json_number_too_large, json_lone_surrogate or json_duplicate_key"
)
BUSY = _error("store busy: no write within store_busy_timeout; retry after Retry-After")
READINESS = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["ready", "draining", "store_unavailable"]},
        "error": {"type": "string"},
        "detail": {"type": "string"},
    },
}
REJECTIONS = {
    "type": "object",
    "required": ["since", "counts", "totals", "truncated"],
    "properties": {
        "since": {"type": "integer"},
        "counts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["minute", "route", "reason", "count", "sample"],
                "properties": {
                    "minute": {"type": "integer"},
                    "minute_utc": {"type": "string"},
                    "route": {"type": "string"},
                    "reason": {"type": "string"},
                    "count": {"type": "integer"},
                    "first_at": {"type": "number"},
                    "last_at": {"type": "number"},
                    "sample": {"type": "object"},
                },
            },
        },
        "totals": {"type": "array", "items": {"type": "object"}},
        "truncated": {"type": "boolean"},
    },
}
BAD_PARAMETER = _error("bad parameter")


def _admin(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": BEARER,
        "responses": {**responses, "401": _error("missing or wrong bearer token"), "503": BUSY},
        **extra,
    }


PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(OBJECT, "alive")}}},
    "/readyz": {
        "get": {
            "summary": "Readiness: the store can commit a write, and no graceful shutdown has begun",
            "responses": {
                "200": _json(READINESS, "ready"),
                "503": _json(READINESS, "the store cannot write now, or draining for shutdown"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text format); a bearer token if metrics_token is set",
            "responses": {
                "200": {"description": "text/plain", "content": {"text/plain": {}}},
                "401": _error("metrics_token is set and the request does not carry it"),
            },
        }
    },
    "/admin": {
        "get": {
            "summary": "The dashboard's address without its slash",
            "responses": {
                "308": {"description": "redirect to /admin/"},
            },
        }
    },
    "/admin/": {
        "get": {
            "summary": "The live dashboard (HTML; asks for the admin token in the page)",
            "responses": {"200": {"description": "text/html", "content": {"text/html": {}}}},
        }
    },
    "/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": _json(OBJECT, "OpenAPI")}}
    },
    "/hooks/{trigger}": {
        "post": {
            "summary": "Inbound webhook: verify, persist as an event, start a run, and complete "
            "the tasks waiting on its key (or keep it for waits registered later)",
            "parameters": [_path("trigger")],
            "requestBody": {"content": {"application/json": {"schema": OBJECT}}},
            "responses": {
                "202": _json(FIRED, "event persisted, run started"),
                "200": _json(FIRED, "a redelivery: the same event, nothing started"),
                "400": MALFORMED,
                "401": _error("bad signature"),
                "404": _error("no webhook trigger of that name"),
                "413": _error("body over the limit"),
                "422": _error("payload is not an object or fails the payload model"),
                "503": BUSY,
            },
        }
    },
    "/callbacks/{token}": {
        "post": {
            "summary": "A service completes one task attempt, authenticated by its service's "
            "scheme (Standard Webhooks by default; a secret header, Twilio's signature, or the "
            "URL alone)",
            "parameters": [_path("token"), *SIGNED],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": CALLBACK},
                    "application/x-www-form-urlencoded": {"schema": OBJECT},
                },
            },
            "responses": {
                "200": _json(
                    OBJECT, "accepted, a duplicate counted once, or progress (still waiting)"
                ),
                "400": MALFORMED,
                "401": _error("bad, missing or stale signature (or secret header)"),
                "415": _error("a Twilio-signed callback that is not form-encoded"),
                "404": _error("unknown token"),
                "409": _error("webhook-id reused with another body, or a different result"),
                "410": _error("task timed out, was cancelled, or its attempt was replaced"),
                "413": _error("body over the limit"),
                "422": _error("body or output fails its schema"),
                "503": BUSY,
            },
        }
    },
    "/callbacks/{token}/heartbeat": {
        "post": {
            "summary": "Extend the deadline of a task awaiting its callback (signed)",
            "parameters": [_path("token"), *SIGNED],
            "responses": {
                "200": _json(OBJECT, "deadline extended"),
                "400": MALFORMED,
                "401": _error("bad signature"),
                "404": _error("unknown token"),
                "410": _error("the task is no longer waiting"),
                "415": _error("a Twilio-signed heartbeat that is not form-encoded"),
                "413": _error("body over the limit"),
                "503": BUSY,
            },
        }
    },
    "/admin/triggers": {
        "get": _admin(
            "Triggers with their next fire times",
            {"200": _json(OBJECT, "triggers"), "400": BAD_PARAMETER},
            parameters=[_query("next", "fire times per cron trigger", "integer")],
        )
    },
    "/admin/triggers/{name}/fire": {
        "post": _admin(
            "Fire a trigger or a workflow by hand; the JSON body is the payload",
            {
                "202": _json(FIRED, "fired"),
                "200": _json(FIRED, "Idempotency-Key seen before"),
                "400": MALFORMED,
                "404": _error("unknown trigger"),
                "413": _error("body over the limit"),
                "422": _error("the payload is not a JSON object"),
            },
            parameters=[_path("name")],
            requestBody={"required": False, "content": {"application/json": {"schema": OBJECT}}},
        )
    },
    "/admin/runs": {
        "get": _admin(
            "Runs, newest first, cursor-paginated",
            {
                "200": _json(OBJECT, "a page of runs and next_cursor"),
                "400": BAD_PARAMETER,
            },
            parameters=[
                _query("workflow", "only this workflow"),
                _query("status", "running, succeeded, failed or cancelled"),
                _query("since", "created at or after (epoch seconds or ISO 8601)"),
                _query("until", "created before (epoch seconds or ISO 8601)"),
                _query("cursor", "next_cursor of the previous page"),
                _query("limit", "page size, 1-500", "integer"),
            ],
        )
    },
    "/admin/runs/{run_id}": {
        "get": _admin(
            "A run: barriers, tasks (each one's wait apart from its run), timing, critical path",
            {"200": _json(ref("RunDetail"), "the run"), "404": _error("unknown run")},
            parameters=[_path("run_id")],
        )
    },
    "/admin/runs/{run_id}/cancel": {
        "post": _admin(
            "Cancel a running run",
            {
                "200": _json(OBJECT, "cancelled"),
                "404": _error("unknown run"),
                "409": _error("not running"),
            },
            parameters=[_path("run_id")],
        )
    },
    "/admin/runs/{run_id}/retry": {
        "post": _admin(
            "Re-run the failed, timed-out and cancelled tasks of a failed or cancelled run",
            {
                "200": _json(OBJECT, "retrying"),
                "404": _error("unknown run"),
                "409": _error("not retryable"),
            },
            parameters=[_path("run_id")],
        )
    },
    "/admin/events": {
        "get": _admin(
            "History, oldest first, paged by id",
            {"200": _json(OBJECT, "entries and next_cursor"), "400": BAD_PARAMETER},
            parameters=[
                _query("run", "only this run"),
                _query("task", "only this task"),
                _query("type", "only these entry types, comma-separated (400 if unknown)"),
                _query("since", "at or after (epoch seconds or ISO 8601)"),
                _query("cursor", "next_cursor of the previous page", "integer"),
                _query("after", "entries after this id (the same as cursor)", "integer"),
                _query("limit", "page size, 1-1000", "integer"),
            ],
        )
    },
    "/admin/events/stream": {
        "get": _admin(
            "History live as Server-Sent Events; Last-Event-ID (or after=) resumes",
            {
                "200": {"description": "text/event-stream", "content": {"text/event-stream": {}}},
                "400": BAD_PARAMETER,
            },
            parameters=[
                _query("run", "only this run"),
                _query("type", "only these entry types, comma-separated (400 if unknown)"),
                _query("after", "resume after this id", "integer"),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "the id of the last event received: resume after it",
                    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                },
            ],
        )
    },
    "/admin/rejections": {
        "get": _admin(
            "Requests the inbound routes refused, counted per minute, route and reason",
            {"200": _json(REJECTIONS, "counts, totals per route and reason"), "400": BAD_PARAMETER},
            parameters=[
                _query(
                    "since",
                    "minutes from this one on (epoch seconds or ISO 8601; default: the last hour)",
                ),
                _query("limit", "at most this many counts, 1-10000", "integer"),
            ],
        )
    },
    "/admin/waits": {
        "get": _admin(
            "Tasks waiting on an event's key (ctx.await_event), by task id",
            {"200": _json(WAITS, "a page of waits and next_cursor"), "400": BAD_PARAMETER},
            parameters=[
                _query("trigger", "only waits on this trigger's events"),
                _query("cursor", "next_cursor of the previous page"),
                _query("limit", "page size, 1-1000", "integer"),
            ],
        )
    },
    "/admin/kept-events": {
        "get": _admin(
            "Events no task waited on yet, kept for waits registered before they expire",
            {
                "200": _json(KEPT_EVENTS, "a page of kept events and next_cursor"),
                "400": BAD_PARAMETER,
            },
            parameters=[
                _query("trigger", "only this trigger's events"),
                _query("cursor", "next_cursor of the previous page"),
                _query("limit", "page size, 1-1000", "integer"),
            ],
        )
    },
    "/admin/events/{event_id}/replay": {
        "post": _admin(
            "Start a new run from a stored event",
            {
                "202": _json(OBJECT, "replayed"),
                "404": _error("unknown event"),
                "409": _error("a run of it is active"),
            },
            parameters=[
                _path("event_id"),
                _query("force", "replay even while a run is active", "boolean"),
            ],
        )
    },
}


HEADERS_TOO_LARGE = _error("the header fields add up to more than header_limit bytes")


def _operations(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every operation with an operationId made from its method and path (stable, unique),
    and the 431 that any request with oversized headers gets."""
    named: dict[str, dict[str, Any]] = {}
    for path, methods in paths.items():
        named[path] = {}
        for method, operation in methods.items():
            words = [
                part.strip("{}").replace("-", "_").replace(".", "_") for part in path.split("/")
            ]
            operation_id = "_".join([method, *(word for word in words if word)])
            responses = {**operation["responses"], "431": HEADERS_TOO_LARGE}
            named[path][method] = {**operation, "operationId": operation_id, "responses": responses}
    return named


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at /openapi.json."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orchestrator",
            "version": __version__,
            "description": "A webhook-driven event orchestrator that replaces polling loops.",
        },
        "paths": _operations(PATHS),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
                "RunDetail": RUN_DETAIL,
                "Task": TASK,
                "Attempt": ATTEMPT,
                "Timing": TIMING,
                "Segment": SEGMENT,
            },
        },
    }
