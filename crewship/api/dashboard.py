"""The dashboard at ``/``: server-rendered pages over the platform service.

    GET  /                                   the user's apps (JSON for Accept: application/json)
    GET  /dashboard/login, POST              a form taking a user API token
    POST /dashboard/logout
    GET  /dashboard/apps/NAME                status, charts, kickoffs, log tail, releases
    GET  /dashboard/apps/NAME/kickoffs/ID    a kickoff: inputs, result, its trace as a timeline
    GET  /dashboard/apps/NAME/logs/stream    the log tail as server-sent events
    POST /dashboard/apps/NAME/{kickoff,restart,rollback,scale}   (dashboard_actions.py)
    GET  /dashboard/static/dashboard.{css,js}

The login form trades a user API token for a server-side session: the HttpOnly,
SameSite=Strict cookie (``Secure`` over TLS, also through a trusted proxy) holds only a
random session id, stored hashed and tied to the token, so revoking the token or
removing the user ends the session, and an open log stream within ``RECHECK`` seconds.
POSTs carry the session's CSRF token and must not come from another origin. Every read
goes through the platform with the user's access (no access reads as "not found"); the
pages are Jinja2 templates with autoescaping (``dashboard_html``). Every figure on the app
page is computed by SQLite over the whole window it names (crewship/store/stats.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from crewship import log
from crewship.api import dashboard_html as html
from crewship.api.sse import sse_events
from crewship.errors import CrewshipError
from crewship.model import AccessLevel, User
from crewship.service.lifecycle import MAX_SCALE
from crewship.service.platform import Platform
from crewship.store.sessions import csrf_token

logger = log.get("crewship.dashboard")

COOKIE = "crewship_session"
LOGIN = "/dashboard/login"
MAX_TOKEN = 256
MAX_FORM = 8192          # the login and logout forms, bytes (bounded while they stream)
TAIL_LINES = 100
RECENT_KICKOFFS = 20
DEPLOY_DAYS = 30          # the deploys chart's window
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}
PageHandler = Callable[[Request, "Visitor"], Awaitable[Response]]


# --------------------------------------------------------------------- pure parts
def _when(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text)) if text else None
    except ValueError:
        return None


def kickoff_duration(row: dict[str, Any]) -> float | None:
    """The crew's own execution time, else finished - started; None while unfinished."""
    if row.get("execution_time") is not None:
        return float(row["execution_time"])
    started, finished = _when(row.get("started_at")), _when(row.get("finished_at"))
    return (finished - started).total_seconds() if started and finished else None


# ------------------------------------------------------------------------ plumbing
def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


@dataclass(frozen=True)
class Visitor:
    """A logged-in browser: its user and its session id (from the cookie)."""

    user: User
    session: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.session)


def visitor_of(request: Request) -> Visitor | None:
    session = request.cookies.get(COOKIE, "")
    user = platform_of(request).users.session_user(session) if session else None
    return Visitor(user, session) if user is not None else None


def logged_in(request: Request) -> User | None:
    """The user of the browser's live dashboard session, if any."""
    visitor = visitor_of(request)
    return visitor.user if visitor is not None else None


def page(request: Request, name: str, context: dict[str, Any], visitor: Visitor | None = None,
         status: int = 200) -> Response:
    """``templates/dashboard/NAME`` with the visitor's name and CSRF token, autoescaped."""
    frame = {"user": visitor.user.name, "csrf": visitor.csrf} if visitor else {}
    return html.TEMPLATES.TemplateResponse(request, f"dashboard/{name}", {**context, **frame},
                                           status_code=status, headers=SECURITY_HEADERS)


def error_page(request: Request, exc: CrewshipError, visitor: Visitor | None,
               back: str | None = None) -> Response:
    context = {"title": f"Error {exc.http_status}", "status": exc.http_status,
               "message": str(exc), "back": back, "back_name": back.rsplit("/", 1)[-1] if back
               else None}
    return page(request, "error.html", context, visitor, exc.http_status)


def _forget_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def to_login(request: Request) -> Response:
    response = RedirectResponse(LOGIN, status_code=303)
    if COOKIE in request.cookies:  # unknown, ended or expired: forget it
        _forget_cookie(response)
    return response


def _via_trusted_proxy(request: Request) -> bool:
    client = request.client.host if request.client else ""
    return client in platform_of(request).settings.trusted_proxies


def came_over_tls(request: Request) -> bool:
    """HTTPS to us, or to a trusted proxy (``CREWSHIP_TRUSTED_PROXIES``) that says so."""
    if request.url.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https" and _via_trusted_proxy(request)


def same_origin(request: Request) -> bool:
    """A POST did not come from another site: the browser's ``Sec-Fetch-Site`` says
    same-origin, and an ``Origin`` (other than ``null``, which browsers send under our
    no-referrer policy) names this server. Neither header (a script): allowed, the
    session's CSRF token still guards what changes state."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    host = request.headers.get("host", "")
    if _via_trusted_proxy(request):
        host = request.headers.get("x-forwarded-host", host).split(",")[0].strip()
    try:
        return bool(host) and urlsplit(origin).netloc == host
    except ValueError:          # not a URL at all (e.g. "http://[::1")
        return False


def page_view(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """Log-in required; crewship errors become an HTML page with their status."""
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        visitor = visitor_of(request)
        if visitor is None:
            return to_login(request)
        try:
            return await handler(request, visitor)
        except CrewshipError as exc:
            return error_page(request, exc, visitor)
    return endpoint


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


# --------------------------------------------------------------------------- pages
async def root(request: Request) -> Response:
    if _wants_json(request):
        return JSONResponse({"service": "crewship", "apps": "/apps/NAME", "dashboard": "/"})
    return await apps_view(request)


def _app_row(platform: Platform, user: User, name: str) -> dict[str, Any]:
    try:
        return platform.ops.status(user, name)
    except CrewshipError:
        return {"app": name, "state": "unknown", "url": platform.settings.app_url(name)}


@page_view
async def apps_view(request: Request, visitor: Visitor) -> Response:
    platform, user = platform_of(request), visitor.user
    rows = [_app_row(platform, user, app.name) for app in platform.apps(user)]
    backups = None
    if user.is_admin and platform.backups is not None:
        backups = await asyncio.to_thread(platform.backups.status)
    return page(request, "apps.html", html.apps_context(rows, backups), visitor)


async def _kickoff_form(platform: Platform, user: User, name: str) -> dict[str, Any]:
    """The form's fields from the crew's ``/inputs``, or why there are none to show."""
    try:
        described = await platform.ops.user_inputs(user, name)
    except CrewshipError as exc:
        return html.kickoff_form(None, f"The crew's inputs are unknown right now ({exc}): "
                                       "give them as a JSON object.")
    return html.kickoff_form(described, None)


@page_view
async def app_view(request: Request, visitor: Visitor) -> Response:
    platform, user = platform_of(request), visitor.user
    name = request.path_params["app"]
    status = platform.ops.status(user, name)       # READ access, or "not found"
    releases = platform.lifecycle.release_history(user, name, limit=20)
    monitoring = platform.monitoring
    recent = [{**row, "duration": kickoff_duration(row)}
              for row in monitoring.kickoff_history(user, name, limit=RECENT_KICKOFFS)]
    can_deploy = platform.level(user, platform.app_for(user, name)) >= AccessLevel.DEPLOY
    form = await _kickoff_form(platform, user, name) if can_deploy else None
    context = html.app_context(
        status, releases, recent, monitoring.kickoff_window(user, name),
        monitoring.deploys_per_day(user, name, days=DEPLOY_DAYS),
        monitoring.usage_chart(user, name), can_deploy=can_deploy, form=form,
        max_scale=MAX_SCALE)
    return page(request, "app.html", context, visitor)


@page_view
async def kickoff_view(request: Request, visitor: Visitor) -> Response:
    platform, user = platform_of(request), visitor.user
    name, kickoff_id = request.path_params["app"], request.path_params["kickoff_id"]
    kickoff = await platform.monitoring.kickoff(user, name, kickoff_id)
    spans = await platform.monitoring.kickoff_trace(user, name, kickoff_id)
    context = html.kickoff_context(name, kickoff, spans, kickoff_duration(kickoff))
    return page(request, "kickoff.html", context, visitor)


async def login_form(request: Request) -> Response:
    if visitor_of(request) is not None:
        return RedirectResponse("/", status_code=303)
    return page(request, "login.html", {"title": "Log in"})


async def login(request: Request) -> Response:
    """Trade a user API token for a session: the cookie holds only the session's id."""
    if not same_origin(request):
        return page(request, "login.html", {"title": "Log in",
                                            "error": "That form came from another site."},
                    status=403)
    async with request.form(max_files=0, max_fields=4) as form:
        token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    opened = platform_of(request).users.open_session(token) if 0 < len(token) <= MAX_TOKEN else None
    if opened is None:
        logger.info("dashboard_login_failed", client=request.client.host if request.client else None)
        return page(request, "login.html", {"title": "Log in", "error": "That token is "
                                            "unknown, revoked or expired."}, status=401)
    user, session = opened
    logger.info("dashboard_login_succeeded", user=user.name)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, session, path="/", httponly=True, samesite="strict",
                        secure=came_over_tls(request))
    return response


async def logout(request: Request) -> Response:
    """End the session; the form must carry the session's CSRF token."""
    visitor = visitor_of(request)
    if visitor is not None:
        async with request.form(max_files=0, max_fields=4) as form:
            given = form.get("csrf")
        csrf = given if isinstance(given, str) else request.headers.get("x-csrf-token", "")
        if not same_origin(request):
            csrf = ""
        try:
            platform_of(request).users.close_session(visitor.session, csrf)
        except CrewshipError as exc:
            return error_page(request, exc, visitor)
    response = RedirectResponse(LOGIN, status_code=303)
    _forget_cookie(response)
    return response


async def log_stream(request: Request) -> Response:
    """The app's log (last 100 lines, then follow) as ``text/event-stream``; it ends
    within ``RECHECK`` seconds of the session ending or the access going."""
    platform = platform_of(request)
    visitor = visitor_of(request)
    if visitor is None:
        return PlainTextResponse("log in first", status_code=401)
    name, session = request.path_params["app"], visitor.session
    try:
        platform.app_for(visitor.user, name)
    except CrewshipError as exc:
        return PlainTextResponse(str(exc), status_code=exc.http_status)

    def allowed() -> bool:   # a logged-out session, a revoked token, a removed user or access
        again = platform.users.session_user(session)
        try:
            return again is not None and platform.app_for(again, name) is not None
        except CrewshipError:
            return False

    lines = platform.ops.logs(visitor.user, name, lines=TAIL_LINES, follow=True)
    return StreamingResponse(_logged(sse_events(lines, allowed), name, visitor.user.name),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _logged(events: AsyncGenerator[str, None], app: str, user: str) -> AsyncIterator[str]:
    logger.info("log_stream_opened", app=app, user=user)
    sent = 0
    try:
        async for event in events:
            sent += event.startswith("data:")
            yield event
    finally:
        await events.aclose()
        logger.info("log_stream_closed", app=app, user=user, lines=sent)


def _static(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    body = html.static_file(name)

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type=media_type,
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
    return endpoint


async def dashboard_home(request: Request) -> Response:
    return RedirectResponse("/", status_code=303)


routes = [
    Route("/", root, methods=["GET"]),
    Route("/dashboard", dashboard_home, methods=["GET"]),
    Route(LOGIN, login_form, methods=["GET"]),
    Route(LOGIN, login, methods=["POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/apps/{app}", app_view, methods=["GET"]),
    Route("/dashboard/apps/{app}/kickoffs/{kickoff_id}", kickoff_view, methods=["GET"]),
    Route("/dashboard/apps/{app}/logs/stream", log_stream, methods=["GET"]),
    Route(f"{html.STATIC}/dashboard.css", _static("dashboard.css", "text/css"), methods=["GET"]),
    Route(f"{html.STATIC}/dashboard.js", _static("dashboard.js", "text/javascript"),
          methods=["GET"]),
]
