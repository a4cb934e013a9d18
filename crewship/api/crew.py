"""The deployed-crew API, per app at ``/apps/NAME`` (reference section C).

``GET /`` health (text ``Healthy`` as CrewAI answers; with ``Accept: application/json``
the healthy instances, queued and running kickoffs; 503 with the reason when kickoffs
would be refused), ``GET /inputs``, ``POST /kickoff``, ``GET /status/{id}``,
``POST /stop/{id}``, ``POST /resume`` (human in the loop, C.5: the answer to a kickoff in
``PENDING_HUMAN_INPUT``), the execution history ``GET /kickoffs?limit=&state=`` and a
kickoff's execution trace ``GET /kickoffs/{id}/trace``; every route needs
``Authorization: Bearer <app token>``. ``GET /inputs`` lists the required
inputs and, beside them, ``optional_inputs`` with their defaults; ``POST /kickoff`` takes
``restoreFromStateId`` (a ``@persist`` flow's past kickoff id) and ``crewai_trigger_payload``
(passed to the crew as the input of that name, as CrewAI's triggers do) and ``webhooks``
(event streaming: ``crewship/service/streaming.py``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from crewship.api.errors import error_response
from crewship.api.limits import bearer, json_object
from crewship.errors import InvalidInputError, NotFoundError
from crewship.model import App
from crewship.service.human import human_webhook
from crewship.service.platform import Platform
from crewship.service.streaming import parse_webhooks
from crewship.urls import validate_url

WEBHOOK_FIELDS = {"taskWebhookUrl": "task", "stepWebhookUrl": "step", "crewWebhookUrl": "crew"}


def webhook_urls(body: dict[str, Any]) -> dict[str, str]:
    """``{"task"|"step"|"crew": url}`` from a kickoff body's ``*WebhookUrl`` fields (C.3)."""
    urls = {}
    for field, kind in WEBHOOK_FIELDS.items():
        if body.get(field) is None:
            continue
        try:
            urls[kind] = validate_url(body[field], field)
        except ValueError:  # urlsplit refuses it outright (e.g. "http://[::1")
            raise InvalidInputError(f"{field} is not a valid http(s) URL") from None
    return urls


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def _authorized(request: Request) -> App | None:
    return _platform(request).ops.app_by_token(request.path_params["app"],
                                               bearer(request.headers))


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": "Unauthorized", "message": "Invalid or missing bearer token"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


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
    described = await _platform(request).ops.crew_inputs_described(app)
    return JSONResponse({"inputs": described["inputs"],
                         "optional_inputs": described["optional_inputs"]})


async def kickoff(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    body = await json_object(request, empty_ok=False)
    stream = None if body.get("webhooks") is None else parse_webhooks(body["webhooks"])
    inputs = body.get("inputs", {})
    if "crewai_trigger_payload" in body and isinstance(inputs, dict):  # a trigger's kickoff
        inputs = {**inputs, "crewai_trigger_payload": body["crewai_trigger_payload"]}
    kickoff_id = await _platform(request).ops.kickoff(
        app, inputs, body.get("meta"), webhook_urls(body),
        restore_from=body.get("restoreFromStateId"),
        human_webhook=human_webhook(body.get("humanInputWebhook")), stream=stream)
    return JSONResponse({"kickoff_id": kickoff_id})


async def resume(request: Request) -> Response:
    """C.5: 200 ``{"status": "resumed" | "retrying", "message"}``; 400 ``Invalid Request``
    (a bad body, or the kickoff does not wait for a human); 404 ``Not Found`` (unknown
    execution or task id)."""
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    body = await json_object(request, empty_ok=False)
    try:
        answer = await _platform(request).ops.kickoff_resume(app, body, webhook_urls(body))
    except InvalidInputError as exc:
        return JSONResponse({"error": "Invalid Request", "message": str(exc)}, status_code=400)
    except NotFoundError as exc:
        return JSONResponse({"error": "Not Found", "message": str(exc)}, status_code=404)
    return JSONResponse(answer)


async def history(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    query = request.query_params
    rows = _platform(request).monitoring.app_kickoff_history(app, limit=query.get("limit"),
                                                  state=query.get("state"))
    return JSONResponse({"app": app.name, "kickoffs": rows})


async def trace(request: Request) -> Response:
    app = _authorized(request)
    if app is None:
        return _unauthorized()
    monitoring = _platform(request).monitoring
    body = await monitoring.app_kickoff_trace(app, request.path_params["kickoff_id"])
    return JSONResponse(body)


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
    Route("/apps/{app}/resume", resume, methods=["POST"]),
    Route("/apps/{app}/kickoffs", history, methods=["GET"]),
    Route("/apps/{app}/kickoffs/{kickoff_id}/trace", trace, methods=["GET"]),
]
