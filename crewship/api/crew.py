"""The deployed-crew API, per app at ``/apps/NAME`` (reference section C).

``GET /`` health (text ``Healthy`` as CrewAI answers; with ``Accept: application/json``
the healthy instances, queued and running kickoffs; 503 with the reason when kickoffs
would be refused), ``GET /inputs``, ``POST /kickoff``, ``GET /status/{id}``,
``POST /stop/{id}``, and the execution history ``GET /kickoffs?limit=&state=``; every
route needs ``Authorization: Bearer <app token>``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from crewship.api.errors import error_response
from crewship.errors import InvalidInputError
from crewship.model import App
from crewship.service.platform import Platform
from crewship.urls import validate_url

MAX_BODY = 1024 * 1024 + 4096
WEBHOOK_FIELDS = {"taskWebhookUrl": "task", "stepWebhookUrl": "step", "crewWebhookUrl": "crew"}


def webhook_urls(body: dict[str, Any]) -> dict[str, str]:
    """``{"task"|"step"|"crew": url}`` from a kickoff body's ``*WebhookUrl`` fields (C.3)."""
    return {kind: validate_url(body[field], field) for field, kind in WEBHOOK_FIELDS.items()
            if body.get(field) is not None}


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _authorized(request: Request) -> App | None:
    return _platform(request).ops.app_by_token(request.path_params["app"], _bearer(request))


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": "Unauthorized", "message": "Invalid or missing bearer token"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidInputError("request body too large (limit 1 MiB)")
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise InvalidInputError("malformed JSON body") from None
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object like {\"inputs\": {...}}")
    return body


async def health(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    ops = _platform(request).ops
    problem = ops.serving_error(app)
    if problem is not None:
        return error_response(503, problem)
    facts = ops.serving(app)
    headers = {"X-Crewship-Healthy-Instances": str(facts["healthy_instances"]),
               "X-Crewship-Queued": str(facts["queued"])}
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(facts, headers=headers)
    return PlainTextResponse("Healthy", headers=headers)


async def inputs(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    return JSONResponse({"inputs": await _platform(request).ops.crew_inputs(app)})


async def kickoff(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    body = await _json_body(request)
    if "inputs" not in body:
        body["inputs"] = {}
    kickoff_id = await _platform(request).ops.kickoff(app, body["inputs"], body.get("meta"),
                                                  webhook_urls(body))
    return JSONResponse({"kickoff_id": kickoff_id})


async def history(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    query = request.query_params
    rows = _platform(request).monitoring.app_kickoff_history(app, limit=query.get("limit"),
                                                  state=query.get("state"))
    return JSONResponse({"app": app.name, "kickoffs": rows})


async def status(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    body = await _platform(request).ops.kickoff_status(app, request.path_params["kickoff_id"])
    return JSONResponse(body)


async def stop(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    try:
        body = await _platform(request).ops.kickoff_stop(app, request.path_params["kickoff_id"])
    except InvalidInputError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    return JSONResponse(body)


routes = [
    Route("/apps/{app}", health, methods=["GET"]),
    Route("/apps/{app}/", health, methods=["GET"]),
    Route("/apps/{app}/inputs", inputs, methods=["GET"]),
    Route("/apps/{app}/kickoff", kickoff, methods=["POST"]),
    Route("/apps/{app}/status/{kickoff_id}", status, methods=["GET"]),
    Route("/apps/{app}/stop/{kickoff_id}", stop, methods=["POST"]),
    Route("/apps/{app}/kickoffs", history, methods=["GET"]),
]
