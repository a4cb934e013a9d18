"""Mapping crewship errors to JSON responses at the HTTP boundary."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from crewship import log
from crewship.errors import CrewshipError, MissingInputsError, NotFoundError, QueueFullError

logger = log.get("crewship.http")

TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          409: "Conflict", 413: "Payload Too Large", 422: "Validation Error",
          429: "Too Many Requests",
          500: "Internal Server Error", 503: "Service Unavailable"}


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": TITLES.get(status, "Error"), "message": message, **extra}


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, **extra), status_code=status)


def from_exception(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, MissingInputsError):
        return error_response(422, "Missing required inputs",
                              details={"missing_inputs": exc.missing})
    if isinstance(exc, NotFoundError) and "/status/" in request.url.path:
        return JSONResponse({"state": "NOT FOUND", "error": "Execution not found",
                             "message": str(exc)}, status_code=404)
    if isinstance(exc, QueueFullError):
        response = error_response(429, str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, CrewshipError):
        return error_response(exc.http_status, str(exc))
    ref = secrets.token_hex(4)
    logger.exception("request_crashed", path=request.url.path, ref=ref)
    return error_response(500, f"An unexpected error occurred (ref {ref})")
