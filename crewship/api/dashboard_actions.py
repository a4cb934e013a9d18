"""The dashboard's buttons: start a kickoff, restart, roll back, scale.

    POST /dashboard/apps/NAME/kickoff    inputs from the form built from the crew's /inputs
    POST /dashboard/apps/NAME/restart
    POST /dashboard/apps/NAME/rollback   version=N
    POST /dashboard/apps/NAME/scale      scale=N

Each needs a live session, a same-origin request and the session's CSRF token in the
form (the cookie is also SameSite=Strict); then the use case runs through the platform
with the user's own access, exactly as the SSH commands do (``kickoff``, ``restart``,
``rollback``, ``ps:scale`` need DEPLOY; less reads as "not found" or "needs deploy").
A refused form changes nothing. Restart, rollback and scale answer once done, with the
progress lines the SSH command would have printed; they run shielded, so a browser
that goes away does not cancel a swap half-way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from crewship import log
from crewship.api.dashboard import (
    Visitor,
    error_page,
    page,
    platform_of,
    same_origin,
    to_login,
    visitor_of,
)
from crewship.errors import CrewshipError, InvalidInputError, PermissionDeniedError
from crewship.reporter import LineReporter

logger = log.get("crewship.dashboard")

INPUT_PREFIX = "input:"
MAX_FIELDS = 200
ACTION_PATHS = ("restart", "rollback", "scale")
_running: set[asyncio.Task[Any]] = set()   # shielded actions, kept until they finish
T = TypeVar("T")


def form_inputs(form: FormData) -> dict[str, Any]:
    """The kickoff's inputs: the ``input:NAME`` fields given a value (an empty optional
    one keeps the crew's default), or the ``inputs_json`` box's JSON object."""
    if "inputs_json" in form:
        text = form.get("inputs_json")
        try:
            inputs = json.loads(text if isinstance(text, str) and text.strip() else "{}")
        except ValueError:
            raise InvalidInputError("the inputs are not valid JSON: give an object such as "
                                    '{"topic": "AI"}') from None
        if not isinstance(inputs, dict):
            raise InvalidInputError('the inputs must be a JSON object such as {"topic": "AI"}')
        return inputs
    return {key.removeprefix(INPUT_PREFIX): value for key, value in form.multi_items()
            if key.startswith(INPUT_PREFIX) and isinstance(value, str) and value != ""}


def whole_number(form: FormData, field: str, what: str) -> int:
    value = form.get(field)
    try:
        return int(value) if isinstance(value, str) else int("x")
    except ValueError:
        raise InvalidInputError(f"{what} must be a whole number") from None


Action = Callable[[Request, Visitor, FormData, LineReporter], Awaitable[str]]


def form_action(title: str, act: Action) -> Callable[[Request], Awaitable[Response]]:
    """Log-in, same origin and CSRF first; then ``act`` (whose answer is the outcome
    line), its progress lines and any error shown on ``action.html``."""
    async def endpoint(request: Request) -> Response:
        visitor = visitor_of(request)
        if visitor is None:
            return to_login(request)
        name = request.path_params["app"]
        back = f"/dashboard/apps/{name}"
        report = LineReporter(lambda _line: None)
        try:
            async with request.form(max_files=0, max_fields=MAX_FIELDS) as form:
                if not same_origin(request):
                    raise PermissionDeniedError("that form came from another site")
                csrf = form.get("csrf")
                platform_of(request).users.check_csrf(visitor.session,
                                                    csrf if isinstance(csrf, str) else "")
                outcome = await act(request, visitor, form, report)
        except CrewshipError as exc:
            logger.info("dashboard_action_refused", app=name, user=visitor.user.name,
                        action=title, error=str(exc))
            if not report.lines:
                return error_page(request, exc, visitor, back)
            return page(request, "action.html", {"title": f"{title}: failed", "app": name,
                                                 "outcome": str(exc), "failed": True,
                                                 "lines": report.lines}, visitor,
                        exc.http_status)
        if outcome.startswith("/"):
            return RedirectResponse(outcome, status_code=303)
        return page(request, "action.html", {"title": title, "app": name, "outcome": outcome,
                                             "failed": False, "lines": report.lines}, visitor)
    return endpoint


async def _shielded(work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return await asyncio.shield(task)


async def _kickoff(request: Request, visitor: Visitor, form: FormData,
                   report: LineReporter) -> str:
    name = request.path_params["app"]
    kickoff_id = await platform_of(request).ops.user_kickoff(visitor.user, name, form_inputs(form))
    logger.info("dashboard_kickoff_started", app=name, user=visitor.user.name,
                kickoff_id=kickoff_id)
    return f"/dashboard/apps/{name}/kickoffs/{kickoff_id}"


async def _restart(request: Request, visitor: Visitor, form: FormData,
                   report: LineReporter) -> str:
    name = request.path_params["app"]
    release = await _shielded(platform_of(request).lifecycle.restart(visitor.user, name, report))
    return f"{name} restarted: v{release.version} is live"


async def _rollback(request: Request, visitor: Visitor, form: FormData,
                    report: LineReporter) -> str:
    name = request.path_params["app"]
    version = whole_number(form, "version", "the release to roll back to")
    release = await _shielded(platform_of(request).lifecycle.rollback(visitor.user, name, version,
                                                                     report))
    return f"{name} rolled back to v{version}: v{release.version} is live"


async def _scale(request: Request, visitor: Visitor, form: FormData,
                 report: LineReporter) -> str:
    name = request.path_params["app"]
    n = whole_number(form, "scale", "the scale")
    done = await _shielded(platform_of(request).lifecycle.scale(visitor.user, name, n, report))
    return f"{name} is scaled to {done}"


routes = [
    Route("/dashboard/apps/{app}/kickoff", form_action("Kickoff", _kickoff), methods=["POST"]),
    Route("/dashboard/apps/{app}/restart", form_action("Restart", _restart), methods=["POST"]),
    Route("/dashboard/apps/{app}/rollback", form_action("Rollback", _rollback),
          methods=["POST"]),
    Route("/dashboard/apps/{app}/scale", form_action("Scale", _scale), methods=["POST"]),
]


def small_form(path: str) -> bool:
    """The restart, rollback and scale forms (bounded like the login form)."""
    return path.startswith("/dashboard/apps/") and path.rsplit("/", 1)[-1] in ACTION_PATHS
