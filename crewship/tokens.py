"""Secrets handed to people and programs: made random, shown once, stored only hashed.

One way for every kind (per-app crew API tokens, user API tokens): ``new_token`` makes
one with a recognisable prefix, ``hash_token`` is what the database keeps, and
``token_matches`` compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token(prefix: str, nbytes: int = 32) -> str:
    return f"{prefix}{secrets.token_urlsafe(nbytes)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(stored_hash: str, token: str) -> bool:
    return hmac.compare_digest(stored_hash, hash_token(token))
