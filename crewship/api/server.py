"""The daemon's one HTTP server: starlette app served by uvicorn in the daemon's loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from crewship import log
from crewship.api import crew, dashboard, dashboard_actions, plus, telemetry
from crewship.api.errors import from_exception
from crewship.api.limits import BodyLimit, TokenLimit
from crewship.errors import CrewshipError
from crewship.service.platform import Platform

logger = log.get("crewship.http")


def create_app(platform: Platform) -> Starlette:
    settings = platform.settings

    def body_limit(path: str) -> int:
        if path == dashboard.LOGIN or dashboard_actions.small_form(path):
            return dashboard.MAX_FORM
        if plus.is_upload(path):
            return plus.MAX_UPLOAD
        return settings.max_body

    middleware = [Middleware(BaseHTTPMiddleware, dispatch=access_log),
                  Middleware(TokenLimit, limit=lambda: settings.max_requests_per_token),
                  Middleware(BodyLimit, limit_for=body_limit)]
    # CrewshipError is answered inside (no traceback); anything else is a logged 500.
    app = Starlette(routes=[*dashboard.routes, *dashboard_actions.routes, *crew.routes,
                            *plus.routes, *telemetry.routes],
                    middleware=middleware,
                    exception_handlers={CrewshipError: from_exception, Exception: from_exception})
    app.state.platform = platform
    return app


async def access_log(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """One canonical line per request."""
    started = time.monotonic()
    response = await call_next(request)
    elapsed = time.monotonic() - started
    telemetry.observe(request, response.status_code, elapsed)
    logger.info("http_request", method=request.method, path=request.url.path,
                status=response.status_code, duration_ms=round(elapsed * 1000, 1))
    return response


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns signal handling.
        yield


class HTTPServer:
    def __init__(self, platform: Platform, host: str, port: int) -> None:
        config = uvicorn.Config(create_app(platform), host=host, port=port, log_config=None,
                                access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                                # X-Forwarded-* are believed only from CREWSHIP_TRUSTED_PROXIES
                                # (crewship/api/dashboard.py), never by uvicorn on its own
                                proxy_headers=False)
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the HTTP server stopped during start")
            await asyncio.sleep(0.02)

    @property
    def port(self) -> int:
        sock = self.server.servers[0].sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
