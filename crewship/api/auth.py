"""The one parser of ``Authorization: Bearer <token>`` for every HTTP door."""

from __future__ import annotations

from starlette.requests import Request


def bearer_token(request: Request) -> str:
    """The bearer token of ``request``, or "" when there is none (any other scheme)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
