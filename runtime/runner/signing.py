"""The daemon channel: the instance's secret, signed requests, proven replies."""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time
from pathlib import Path

SIGNATURE_HEADER = "X-Crewship-Signature"
PROOF_HEADER = "X-Crewship-Proof"
SIGNATURE_MAX_AGE = 300.0  # seconds a signed request stays valid (clock skew between nodes)
MIN_SECRET_BYTES = 16


def read_secret(source: str) -> bytes:
    """The instance's secret: one line on stdin (``-``, then stdin is closed) or a file."""
    if source == "-":
        line = sys.stdin.buffer.readline() if sys.stdin is not None else b""
        with open(os.devnull, "rb") as null:
            os.dup2(null.fileno(), 0)  # nothing else ever reads the pipe
    else:
        line = Path(source).read_bytes()
    secret = line.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"no instance secret on {'stdin' if source == '-' else source}")
    return secret


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def request_mac(secret: bytes, stamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    """What a signed request carries: binds time, nonce, method, path (with query) and body."""
    return _mac(secret, "request", stamp, nonce, method.upper(), path, hashlib.sha256(body).hexdigest())


def response_mac(secret: bytes, signature: str, status: int, body: bytes) -> str:
    """What a reply carries: proves the runner holds the secret, for this request and body."""
    return _mac(secret, "response", signature, str(status), hashlib.sha256(body).hexdigest())


def sign(secret: bytes, method: str, path: str, body: bytes, now: float | None = None) -> str:
    """The ``X-Crewship-Signature`` value for one request (the daemon's side, and tests')."""
    stamp, nonce = f"{time.time() if now is None else now:.3f}", os.urandom(8).hex()
    return f"{stamp}:{nonce}:{request_mac(secret, stamp, nonce, method, path, body)}"


def signature_valid(secret: bytes, header: str, method: str, path: str, body: bytes) -> bool:
    stamp, nonce, mac = [*header.split(":", 2), "", ""][:3]
    try:
        fresh = abs(time.time() - float(stamp)) <= SIGNATURE_MAX_AGE
    except ValueError:
        return False
    expected = request_mac(secret, stamp, nonce, method, path, body)
    return hmac.compare_digest(mac.encode(), expected.encode()) and fresh
