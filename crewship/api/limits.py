"""Bounds on what one request may cost: body size while it streams, requests per token.

``BodyLimit`` wraps the ASGI ``receive`` of every request: a declared ``Content-Length``
over the route's limit is refused before a byte is read, and a body without one (chunked)
is counted as it arrives and refused the moment it passes the limit. ``TokenLimit``
allows at most N requests in flight per bearer token and answers 429 beyond that.
Both answer with one line of JSON, never a 500. ``json_object`` reads a JSON object body
(bounded by ``BodyLimit``) and turns every way it can be malformed into a 400.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crewship import log
from crewship.api.errors import error_body
from crewship.errors import InvalidInputError, TooLargeError

logger = log.get("crewship.http")

PLUS_PREFIX = "/crewai_plus/"
SESSION_COOKIE = re.compile(r"(?:^|;)\s*crewship_session=([^;]+)")


def problem(path: str, status: int, message: str) -> JSONResponse:
    """The one-line JSON error in the shape of the API the path belongs to."""
    if path.startswith(PLUS_PREFIX):  # the crewai client prints "error"
        return JSONResponse({"error": message, "message": message}, status_code=status)
    return JSONResponse(error_body(status, message), status_code=status)


def _mib(limit: int) -> str:
    return f"{limit / (1024 * 1024):.1f} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


def too_large(limit: int) -> TooLargeError:
    return TooLargeError(f"request body too large (limit {_mib(limit)}); "
                         "an operator can raise it with CREWSHIP_MAX_BODY")


class BodyLimit:
    """ASGI middleware: the body of every request is bounded while it streams in."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = self.limit_for(path)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and not (declared.isascii() and declared.strip().isdigit()):
            await problem(path, 400, "Content-Length must be a whole number of bytes")(
                scope, receive, send)
            return
        if declared is not None and int(declared) > limit:
            await problem(path, 413, str(too_large(limit)))(scope, receive, send)
            return
        await self._bounded(scope, receive, send, path, limit)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, path: str,
                       limit: int) -> None:
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except TooLargeError as exc:
            if started:  # the route answered before reading it all: nothing left to say
                logger.info("request_body_refused", path=path, limit=limit)
                return
            await problem(path, 413, str(exc))(scope, receive, send)


def bearer(headers: Headers) -> str:
    """The token of an ``Authorization: Bearer`` header ('' when there is none)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def credential(scope: Scope) -> str:
    """What a request presents: its bearer token, else its dashboard session cookie."""
    headers = Headers(scope=scope)
    token = bearer(headers)
    if token:
        return token
    found = SESSION_COOKIE.search(headers.get("cookie", ""))
    return f"session:{found.group(1)}" if found else ""


class TokenLimit:
    """ASGI middleware: at most ``limit()`` requests in flight per bearer token (or
    dashboard session); 0 turns the limit off."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = credential(scope) if scope["type"] == "http" else ""
        if not token:
            await self.app(scope, receive, send)
            return
        key = hashlib.sha256(token.encode(errors="replace")).hexdigest()
        limit = self.limit()
        if self.in_flight.get(key, 0) >= limit > 0:
            logger.info("request_throttled", path=scope.get("path"), limit=limit)
            response = problem(str(scope.get("path", "")), 429,
                               f"too many requests in flight for this token (limit {limit}): "
                               "wait for one to finish and retry")
            response.headers["Retry-After"] = "1"
            await response(scope, receive, send)
            return
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[key] -= 1
            if not self.in_flight[key]:
                del self.in_flight[key]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def json_object(request: Request, *, example: str = '{"inputs": {...}}',
                      empty_ok: bool = True) -> dict[str, Any]:
    """The body as a JSON object (an empty body: ``{}`` if ``empty_ok``); else a 400."""
    raw = await request.body()
    if not raw.strip() and empty_ok:
        return {}
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise InvalidInputError("the body is not valid JSON (UTF-8, no NaN, nested at most "
                                "a few hundred levels)") from None
    if not isinstance(body, dict):
        raise InvalidInputError(f"the body must be a JSON object like {example}")
    return body
