"""``GET /metrics`` (Prometheus text format) and the HTTP side of the request metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crewship.service.metrics import CONTENT_TYPE, Metrics

UNMATCHED = "(unmatched)"


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.platform.metrics
    return metrics


async def metrics(request: Request) -> Response:
    return Response(_metrics(request).render(), media_type=CONTENT_TYPE)


def route_template(request: Request) -> str:
    """The matched route's path template (``/apps/{app}/kickoff``), never the raw path:
    raw paths would make a label per app and kickoff id."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def observe(request: Request, status: int, seconds: float) -> None:
    _metrics(request).http_request(request.method, route_template(request), status, seconds)


routes = [Route("/metrics", metrics, methods=["GET"])]
