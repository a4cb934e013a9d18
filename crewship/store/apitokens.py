"""User API tokens for the HTTP side (the Plus API, the dashboard), stored hashed.

A token is shown once, when made; the table keeps its SHA-256, a short prefix to
recognise it by, and its dates. Revoking deletes the row. An expired token stays
listed (so its owner sees why it stopped working) but no longer authenticates.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass

from crewship.errors import InvalidInputError, NotFoundError
from crewship.model import User
from crewship.store.state import Database, now
from crewship.tokens import hash_token, new_token

TOKEN_PREFIX = "csu_"  # noqa: S105 (a public marker, not a secret)
SHOWN_PREFIX = 12
MAX_EXPIRES_DAYS = 3650
MAX_TOKEN = 256


@dataclass(frozen=True)
class ApiToken:
    id: int
    user_id: int
    prefix: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None

    def expired(self, at: str | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (at or now())


def expiry(days: int | None, start: dt.datetime | None = None) -> str | None:
    """The ``expires_at`` text for a lifetime of ``days`` (None: never expires)."""
    if days is None:
        return None
    if not 1 <= days <= MAX_EXPIRES_DAYS:
        raise InvalidInputError(f"--expires-days must be between 1 and {MAX_EXPIRES_DAYS}, "
                                f"not {days}")
    when = (start or dt.datetime.now(dt.UTC)) + dt.timedelta(days=days)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _token(row: sqlite3.Row) -> ApiToken:
    return ApiToken(id=row["id"], user_id=row["user_id"], prefix=row["prefix"],
                    created_at=row["created_at"], expires_at=row["expires_at"],
                    last_used_at=row["last_used_at"])


class ApiTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, user: User, expires_days: int | None = None) -> tuple[ApiToken, str]:
        """A new token for ``user``: (its record, the token itself, to show once)."""
        expires_at = expiry(expires_days)
        token = new_token(TOKEN_PREFIX)
        token_id = self.db.execute(
            "INSERT INTO api_tokens (user_id, hash, prefix, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)", user.id, hash_token(token), token[:SHOWN_PREFIX], now(),
            expires_at)
        row = self.db.one("SELECT * FROM api_tokens WHERE id = ?", token_id)
        assert row is not None
        return _token(row), token

    def list(self, user: User) -> list[ApiToken]:
        rows = self.db.all("SELECT * FROM api_tokens WHERE user_id = ? ORDER BY id", user.id)
        return [_token(r) for r in rows]

    def revoke(self, user: User, token_id: int) -> ApiToken:
        row = self.db.one("SELECT * FROM api_tokens WHERE id = ? AND user_id = ?",
                          token_id, user.id)
        if row is None:
            raise NotFoundError(f"{user.name} has no API token with id {token_id} "
                                "(see 'api-tokens')")
        self.db.execute("DELETE FROM api_tokens WHERE id = ?", token_id)
        return _token(row)

    def revoke_any(self, token_id: int) -> ApiToken:
        """Revoke a token whoever owns it (an admin's offboarding)."""
        row = self.db.one("SELECT * FROM api_tokens WHERE id = ?", token_id)
        if row is None:
            raise NotFoundError(f"no API token with id {token_id} (see 'api-tokens --user U')")
        self.db.execute("DELETE FROM api_tokens WHERE id = ?", token_id)
        return _token(row)

    def find(self, token: str) -> ApiToken | None:
        """A valid (known, unexpired) token's record; records the use."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN:
            return None
        at = now()
        row = self.db.one("SELECT * FROM api_tokens WHERE hash = ?", hash_token(token))
        if row is None or _token(row).expired(at):
            return None
        self.db.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", at, row["id"])
        return _token(row)

    def user_id_for(self, token: str) -> int | None:
        """The owner of a valid (known, unexpired) token; records the use."""
        record = self.find(token)
        return record.user_id if record is not None else None
