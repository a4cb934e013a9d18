"""Outbound URLs: the one place that decides whether the daemon may send to a URL.

Kernel floor: stores (alert receivers), services (webhooks, notify, clone URLs) all check here.

* ``validate_url``: the syntax of an http(s) URL (no network).
* ``check_target``: resolve the host ONCE (through an injectable resolver) and refuse
  loopback, link-local, private, CGNAT, multicast, reserved and unspecified addresses
  and the server's own ports, unless the operator allows private targets
  (``CREWSHIP_ALLOW_PRIVATE_URLS=1``). The ``Target`` it returns carries the checked
  address: callers connect to that address, never resolve the name again (no DNS
  rebinding between the check and the connection).
* ``PinnedTransport``: an httpx transport that checks every request's URL this way and
  connects to the checked address, sending the original name as Host header and TLS SNI
  (so certificates are still verified against the name).
* ``classify_clone_url``: which git URLs a deploy may fetch from (``https://``, ``http://``,
  ``ssh://``, scp-style ``user@host:path``; local paths and ``file://`` only with
  ``CREWSHIP_ALLOW_LOCAL_CLONE=1``), with messages that never depend on the file system.

    URLRefusedError(InvalidInputError)   a URL the policy refuses; the message says why
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from crewship.errors import InvalidInputError

MAX_URL = 2048
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
_SCP = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):"
                  r"(?P<path>[^/:][^:]*|/[^:]*)$")
ALLOW_PRIVATE_HINT = "the operator can allow private targets with CREWSHIP_ALLOW_PRIVATE_URLS=1"
ALLOW_LOCAL_HINT = "the operator can allow them with CREWSHIP_ALLOW_LOCAL_CLONE=1"
CGNAT = ipaddress.ip_network("100.64.0.0/10")

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class URLRefusedError(InvalidInputError):
    """A URL the outbound policy refuses (a one-line reason)."""


def validate_url(url: object, what: str = "URL") -> str:
    """An absolute http(s) URL with a host, or InvalidInputError."""
    if not isinstance(url, str) or not url:
        raise InvalidInputError(f"{what} must be an http(s) URL string")
    if len(url) > MAX_URL or _BAD_CHARS.search(url):
        raise InvalidInputError(f"{what} is not a valid URL (too long or has spaces)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:  # e.g. "http://[::1" or a port that is not a number
        raise InvalidInputError(f"{what} is not a valid URL (bad host or port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"{what} must start with http:// or https:// and name a host")
    return url


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def masked(url: str) -> str:
    """``scheme://host[:port]/...``: what non-admins see of a URL (its path may hold a secret)."""
    parts = urlsplit(url)
    rest = "/..." if (parts.path not in ("", "/") or parts.query) else "/"
    return host_of(url) + rest


# ------------------------------------------------------------------- addresses
def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (an IP literal is returned as is, no lookup)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def refusal(address: IPAddress) -> str | None:
    """Why the daemon must not connect to ``address`` (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    checks: list[tuple[bool, str]] = [
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in CGNAT,
         "a shared (CGNAT) address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "a non-public address"),
    ]
    return next((reason for hit, reason in checks if hit), None)


@dataclass(frozen=True)
class Policy:
    """What the operator allows (``Settings.url_policy()``); the resolver is injectable."""

    allow_private: bool = False
    allow_local_clone: bool = False
    own_ports: frozenset[int] = frozenset()
    own_hosts: frozenset[str] = frozenset()
    resolver: Resolver = field(default=system_resolver, compare=False)

    def is_own(self, address: IPAddress, port: int) -> bool:
        if port not in self.own_ports:
            return False
        return (address.is_loopback or address.is_unspecified
                or str(address) in self.own_hosts or "0.0.0.0" in self.own_hosts)


@dataclass(frozen=True)
class Target:
    host: str       # the name in the URL
    port: int
    address: str    # the checked address to connect to


def check_target(host: str, port: int, what: str, policy: Policy) -> Target:
    """Resolve ``host`` once and check every address; the first one is the one to use."""
    addresses = policy.resolver(host, port)
    if not addresses:
        raise URLRefusedError(f"{what}: cannot resolve host {host[:100]!r}")
    for text in addresses:
        address = ipaddress.ip_address(text)
        if policy.is_own(address, port):
            raise URLRefusedError(f"{what} points at this crewship server itself "
                                  f"({host}:{port}): use another receiver")
        reason = None if policy.allow_private else refusal(address)
        if reason is not None:
            shown = host if host == text else f"{host} ({text})"
            raise URLRefusedError(f"{what} resolves to {reason}: {shown} is refused; "
                                  f"{ALLOW_PRIVATE_HINT}")
    return Target(host, port, addresses[0])


def check_url(url: object, what: str, policy: Policy) -> Target:
    """``validate_url`` then ``check_target`` of its host and port (blocking: DNS)."""
    text = validate_url(url, what)
    parts = urlsplit(text)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return check_target(parts.hostname or "", port, what, policy)


async def check_urls(urls: Iterable[tuple[str, str]], policy: Policy) -> list[Target]:
    """``check_url`` of each ``(what, url)`` off the event loop."""
    return [await asyncio.to_thread(check_url, url, what, policy) for what, url in urls]


# ------------------------------------------------------------- pinned transport
class PinnedTransport(httpx.AsyncBaseTransport):
    """Checks each request's target and connects to the checked address only.

    The URL's host is replaced by the checked address; the Host header keeps the name
    and the TLS SNI (``sni_hostname``) carries it, so certificates are verified against
    the name that was checked.
    """

    def __init__(self, policy: Policy, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        target = await asyncio.to_thread(check_target, url.host, port, "the URL", self.policy)
        address = ipaddress.ip_address(target.address)
        request.url = url.copy_with(host=str(address))
        request.headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": url.host}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# ------------------------------------------------------------------ clone URLs
@dataclass(frozen=True)
class CloneURL:
    kind: str                  # "remote" | "local"
    url: str                   # as given (stripped)
    scheme: str = ""           # https | http | ssh (scp-style is ssh)
    host: str = ""
    port: int = 0
    path: str = ""


def parse_clone_url(url: str, allow_local: bool) -> CloneURL:
    """The kind of git URL ``url`` is, by syntax alone (nothing is resolved or read)."""
    text = url.strip()
    if not text:
        raise URLRefusedError("is empty")
    if len(text) > MAX_URL or _BAD_CHARS.search(text):
        raise URLRefusedError("is not a valid git URL (too long or has spaces)")
    parts = urlsplit(text)
    if parts.scheme in ("https", "http", "ssh"):
        try:
            port = parts.port or {"https": 443, "http": 80, "ssh": 22}[parts.scheme]
        except ValueError:
            raise URLRefusedError(f"{text[:100]!r} has an invalid port") from None
        if not parts.hostname:
            raise URLRefusedError(f"{text[:100]!r} names no host")
        return CloneURL("remote", text, parts.scheme, parts.hostname, port, parts.path)
    scp = _SCP.match(text) if "://" not in text else None
    if scp is not None:
        return CloneURL("remote", text, "ssh", scp.group("host").strip("[]"), 22,
                        scp.group("path"))
    if parts.scheme in ("", "file") and "://" not in text.removeprefix("file://"):
        if not allow_local:
            raise URLRefusedError(f"{text[:100]!r}: local paths and file:// URLs are not "
                                  f"accepted ({ALLOW_LOCAL_HINT})")
        return CloneURL("local", text, "file", path=parts.path if parts.scheme else text)
    raise URLRefusedError(f"{text[:100]!r} is not a git URL crewship fetches: use https://, "
                          "http://, ssh:// or user@host:path")
