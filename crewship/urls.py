"""Outbound URLs: the one place that decides whether the daemon may send to a URL.

Kernel floor: stores (alert receivers) and services (webhooks, notify) both check here.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from crewship.errors import InvalidInputError

MAX_URL = 2048
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


def validate_url(url: object, what: str = "URL") -> str:
    """An absolute http(s) URL with a host, or InvalidInputError."""
    if not isinstance(url, str) or not url:
        raise InvalidInputError(f"{what} must be an http(s) URL string")
    if len(url) > MAX_URL or _BAD_CHARS.search(url):
        raise InvalidInputError(f"{what} is not a valid URL (too long or has spaces)")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[::1": not even parseable
        raise InvalidInputError(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"{what} must start with http:// or https:// and name a host")
    return url


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
