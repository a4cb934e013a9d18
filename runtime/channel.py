"""The daemon's side of the runner channel: per-instance secrets and signed calls.

Every instance gets a fresh random secret when the supervisor starts it. The backend
hands it over out of band (the process backend writes it once to the runner's stdin
and closes the pipe; the docker backend mounts it as a read-only file), so it never
appears in argv, the environment, ``ps``, a log or build output. The daemon keeps it
in ``DATA_DIR/secrets/<instance id>`` (mode 0600, directory 0700) so that a restarted
daemon can still talk to the instances it adopts.

Nothing secret crosses the wire: each request is HMAC-signed (time, nonce, method, path,
body) and each reply must carry the runner's proof (an HMAC of the request's signature,
the status and the body). A process that took an instance's port cannot answer a health
check or a kickoff with a valid proof, so it is never marked healthy and its replies are
never believed. The MAC functions are the runner's own (``runtime/runner.py``), so both
sides cannot drift.

    CrewshipError
    └── ChannelError           the runner could not be reached (transport error, timeout)
        └── UnprovenReplyError something answered without proving it holds the secret
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio._backends._asyncio  # noqa: F401  # loaded lazily, it stalled the loop ~0.25 s
import httpx
import sniffio  # noqa: F401  # httpcore imports it at every connection: once, here, not racing

from crewship.errors import CrewshipError
from runtime.runner.signing import PROOF_HEADER, SIGNATURE_HEADER, response_mac, sign

SECRET_BYTES = 32


class ChannelError(CrewshipError):
    """The runner did not answer (connection refused or reset, timeout).

    ``delivered`` is False when the connection was never made (nothing was sent).
    """

    def __init__(self, message: str, *, delivered: bool = True) -> None:
        super().__init__(message)
        self.delivered = delivered


class UnprovenReplyError(ChannelError):
    """A reply without a valid proof: whoever answered does not hold the instance's secret."""


def new_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


@dataclass(frozen=True)
class Peer:
    """Where one instance's runner listens, and the secret it holds."""

    host: str
    port: int
    secret: str = field(repr=False, compare=False)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


class SecretStore:
    """Instance secrets on disk, readable by the daemon's user only (and cached in memory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, str] = {}

    def _path(self, instance_id: str) -> Path:
        if not instance_id or "/" in instance_id or instance_id.startswith("."):
            raise ValueError(f"bad instance id {instance_id!r}")
        return self.root / instance_id

    def put(self, instance_id: str, secret: str) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        path = self._path(instance_id)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secret.encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._cache[instance_id] = secret

    def get(self, instance_id: str) -> str | None:
        if instance_id in self._cache:
            return self._cache[instance_id]
        try:
            secret = self._path(instance_id).read_text().strip()
        except (FileNotFoundError, ValueError):
            return None
        if secret:
            self._cache[instance_id] = secret
        return secret or None

    def remove(self, instance_id: str) -> None:
        self._cache.pop(instance_id, None)
        with contextlib.suppress(ValueError):
            self._path(instance_id).unlink(missing_ok=True)


class RunnerClient:
    """Signed calls to runners; a reply counts only with the runner's proof."""

    def __init__(self, timeout: float = 10.0) -> None:
        # One request per connection (the runner speaks HTTP/1.0): nothing goes stale.
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        self._client = httpx.AsyncClient(timeout=timeout, trust_env=False, limits=limits)

    async def call(self, peer: Peer, method: str, path: str, body: Any = None,
                   timeout: float | None = None) -> Reply:
        data = b"" if body is None else json.dumps(body).encode()
        key = peer.secret.encode()
        signature = sign(key, method, path, data)
        headers = {SIGNATURE_HEADER: signature, "Content-Type": "application/json"}
        try:
            resp = await self._client.request(
                method, peer.base + path, content=data, headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise ChannelError(f"{peer.host}:{peer.port} did not answer "
                               f"({type(exc).__name__})",
                               delivered=not isinstance(exc, httpx.ConnectError)) from exc
        proof = resp.headers.get(PROOF_HEADER, "")
        expected = response_mac(key, signature, resp.status_code, resp.content)
        if not hmac.compare_digest(proof.encode(), expected.encode()):
            raise UnprovenReplyError(f"{peer.host}:{peer.port} answered without proving it "
                                     "is the instance (another process holds the port?)")
        try:
            parsed = resp.json() if resp.content else {}
        except ValueError:
            parsed = {}
        return Reply(resp.status_code, parsed if isinstance(parsed, dict) else {})

    async def aclose(self) -> None:
        await self._client.aclose()
