"""The dashboard at ``/``: server-rendered pages over the platform service.

    GET  /                                   the user's apps (JSON for Accept: application/json)
    GET  /dashboard/login, POST              a form taking a user API token
    POST /dashboard/logout
    GET  /dashboard/apps/NAME                status, log tail, kickoffs, restarts, releases
    GET  /dashboard/apps/NAME/logs/stream    the log tail as server-sent events
    GET  /dashboard/static/dashboard.{css,js}

The login form checks the token with ``user_by_api_token`` and keeps it in an
HttpOnly, SameSite=Strict cookie; every request checks it again, so a revoked or
expired token logs the browser out. Every read goes through the platform with the
user's access (no access reads as "not found"); the HTML is in ``dashboard_html``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from crewship import log
from crewship.api import dashboard_html as html
from crewship.errors import CrewshipError
from crewship.model import User
from crewship.service.platform import Platform

logger = log.get("crewship.dashboard")

COOKIE = "crewship_session"
LOGIN = "/dashboard/login"
MAX_TOKEN = 256
MAX_FORM = 8192
TAIL_LINES = 100
RECENT_KICKOFFS = 20
STATS_WINDOW = dt.timedelta(hours=24)
STATS_LIMIT = 1000        # the newest kickoffs the p50/p95 are computed over (history's max)
HEARTBEAT = 15.0          # seconds between SSE keep-alive comments (and access re-checks)
FINISHED = ("SUCCESS", "FAILURE", "REVOKED")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}
PageHandler = Callable[[Request, User], Awaitable[Response]]


# --------------------------------------------------------------------- pure parts
def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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


def kickoff_stats(rows: list[dict[str, Any]], now: dt.datetime) -> dict[str, Any]:
    """Count, failures and p50/p95 duration of the finished kickoffs of the last 24 h."""
    cutoff = now - STATS_WINDOW
    recent = [r for r in rows if (at := _when(r.get("created_at"))) is not None and at >= cutoff]
    durations = [d for r in recent if r.get("state") in FINISHED
                 and (d := kickoff_duration(r)) is not None]
    return {"count": len(recent), "failed": sum(r.get("state") == "FAILURE" for r in recent),
            "p50": percentile(durations, 0.5), "p95": percentile(durations, 0.95)}


def sse_message(line: str) -> str:
    """One server-sent event carrying ``line`` (a newline in it becomes a second data line)."""
    return "".join(f"data: {part}\n" for part in line.replace("\r", "").split("\n")) + "\n"


async def _pump(lines: AsyncIterator[str], queue: asyncio.Queue[str | None]) -> None:
    try:
        async for line in lines:
            await queue.put(line)
    except CrewshipError as exc:
        logger.warning("log_stream_failed", error=str(exc))
    await queue.put(None)


async def sse_events(lines: AsyncIterator[str], allowed: Callable[[], bool],
                     heartbeat: float = HEARTBEAT) -> AsyncGenerator[str, None]:
    """``lines`` as server-sent events, with a keep-alive comment every ``heartbeat``
    seconds; ends when ``lines`` does or ``allowed()`` turns False. Closing this
    generator (the client went away) cancels the reader, which closes the log."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)
    reader = asyncio.create_task(_pump(lines, queue))
    try:
        yield "retry: 3000\n\n"
        while True:
            try:
                line = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                if not allowed():
                    return
                yield ": keep-alive\n\n"
                continue
            if line is None:
                return
            yield sse_message(line)
    finally:
        reader.cancel()
        await asyncio.wait([reader])


# ------------------------------------------------------------------------ plumbing
def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def _user(request: Request) -> User | None:
    token = request.cookies.get(COOKIE, "")
    return _platform(request).user_by_api_token(token) if token else None


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _to_login(request: Request) -> Response:
    response = RedirectResponse(LOGIN, status_code=303)
    if COOKIE in request.cookies:  # unknown, revoked or expired: forget it
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def page_view(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """Log-in required; crewship errors become an HTML page with their status."""
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        user = _user(request)
        if user is None:
            return _to_login(request)
        try:
            return await handler(request, user)
        except CrewshipError as exc:
            return _html(html.error_page(exc.http_status, str(exc), user.name), exc.http_status)
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
async def apps_view(request: Request, user: User) -> Response:
    platform = _platform(request)
    rows = [_app_row(platform, user, app.name) for app in platform.apps(user)]
    backups = None
    if user.is_admin and platform.backups is not None:
        backups = await asyncio.to_thread(platform.backups.status)
    return _html(html.apps_page(user.name, rows, backups))


@page_view
async def app_view(request: Request, user: User) -> Response:
    platform = _platform(request)
    name = request.path_params["app"]
    status = platform.ops.status(user, name)       # READ access, or "not found"
    releases = platform.lifecycle.release_history(user, name, limit=20)
    history = platform.monitoring.kickoff_history(user, name, limit=STATS_LIMIT)
    stats = kickoff_stats(history, dt.datetime.now(dt.UTC))
    recent = [{**row, "duration": kickoff_duration(row)} for row in history[:RECENT_KICKOFFS]]
    return _html(html.app_page(user.name, status, releases, recent, stats))


async def login_form(request: Request) -> Response:
    if _user(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _html(html.login_page())


async def login(request: Request) -> Response:
    if int(request.headers.get("content-length") or 0) > MAX_FORM:
        return _html(html.login_page("That form is too large."), 413)
    async with request.form(max_files=0, max_fields=4) as form:
        token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    user = _platform(request).user_by_api_token(token) if 0 < len(token) <= MAX_TOKEN else None
    if user is None:
        logger.info("dashboard_login_failed", client=request.client.host if request.client else None)
        return _html(html.login_page("That token is unknown, revoked or expired."), 401)
    logger.info("dashboard_login_succeeded", user=user.name)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, token, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def log_stream(request: Request) -> Response:
    """The app's log (last 100 lines, then follow) as ``text/event-stream``."""
    platform = _platform(request)
    token = request.cookies.get(COOKIE, "")
    user = _user(request)
    if user is None:
        return PlainTextResponse("log in first", status_code=401)
    name = request.path_params["app"]
    try:
        platform.app_for(user, name)
    except CrewshipError as exc:
        return PlainTextResponse(str(exc), status_code=exc.http_status)

    def allowed() -> bool:   # a revoked token or access ends the stream
        again = platform.user_by_api_token(token)
        try:
            return again is not None and platform.app_for(again, name) is not None
        except CrewshipError:
            return False

    lines = platform.ops.logs(user, name, lines=TAIL_LINES, follow=True)
    return StreamingResponse(_logged(sse_events(lines, allowed), name, user.name),
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


def _static(body: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
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
    Route("/dashboard/apps/{app}/logs/stream", log_stream, methods=["GET"]),
    Route(f"{html.STATIC}/dashboard.css", _static(html.CSS, "text/css"), methods=["GET"]),
    Route(f"{html.STATIC}/dashboard.js", _static(html.SCRIPT, "text/javascript"),
          methods=["GET"]),
]
