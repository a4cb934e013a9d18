"""``GET /metrics`` (Prometheus text format) and the HTTP side of the request metrics.

The scrape needs ``Authorization: Bearer``: the operator's scrape token
(``CREWSHIP_METRICS_TOKEN``, Prometheus' ``authorization`` setting) sees every series; a
user API token sees only the series of the apps its user can see.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from crewship.api.errors import error_body
from crewship.api.limits import bearer
from crewship.service.metrics import CONTENT_TYPE, Metrics

UNMATCHED = "(unmatched)"


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.platform.metrics
    return metrics


async def metrics(request: Request) -> Response:
    platform = request.app.state.platform
    token = bearer(request.headers)
    scrape = platform.settings.metrics_token
    if scrape and token and hmac.compare_digest(token.encode(), scrape.encode()):
        return Response(_metrics(request).render(), media_type=CONTENT_TYPE)
    user = platform.user_by_api_token(token) if token else None
    if user is None:
        return JSONResponse(error_body(401, "GET /metrics needs 'Authorization: Bearer' with "
                                            "the scrape token (CREWSHIP_METRICS_TOKEN) or a "
                                            "user API token"),
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    visible = {app.name for app in platform.apps(user)}
    return Response(_metrics(request).render(visible), media_type=CONTENT_TYPE)


def route_template(request: Request) -> str:
    """The matched route's path template (``/apps/{app}/kickoff``), never the raw path:
    raw paths would make a label per app and kickoff id."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def observe(request: Request, status: int, seconds: float) -> None:
    _metrics(request).http_request(request.method, route_template(request), status, seconds)


routes = [Route("/metrics", metrics, methods=["GET"])]
