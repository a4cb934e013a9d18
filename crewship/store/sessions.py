"""Dashboard sessions: a random id in the browser's cookie, only its SHA-256 here.

A session is made from a user API token and tied to it: deleting the token (revoking it,
or removing its user) deletes the session by cascade, and an expired token ends it too.
The CSRF token of a session is derived from its id, so it needs no storage and is worth
nothing without the cookie.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from crewship.store.state import Database, now

SESSION_PREFIX = "css_"
LIFETIME = dt.timedelta(days=7)
MAX_SESSION = 128


@dataclass(frozen=True)
class Session:
    id: int
    user_id: int
    api_token_id: int
    expires_at: str


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    """The per-session token a state-changing dashboard request must carry."""
    return hmac.new(session_id.encode(), b"crewship dashboard csrf", hashlib.sha256).hexdigest()


def csrf_ok(session_id: str, given: str) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(session_id).encode(),
                                               given.encode(errors="replace"))


def _stamp(when: dt.datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, user_id: int, api_token_id: int, token_expires_at: str | None) -> str:
        """A new session; returns its id (for the cookie; only its hash is stored)."""
        session_id = f"{SESSION_PREFIX}{secrets.token_urlsafe(32)}"
        expires_at = _stamp(dt.datetime.now(dt.UTC) + LIFETIME)
        if token_expires_at is not None:
            expires_at = min(expires_at, token_expires_at)
        self.db.execute("INSERT INTO sessions (hash, user_id, api_token_id, created_at, "
                        "expires_at) VALUES (?, ?, ?, ?, ?)", _hash(session_id), user_id,
                        api_token_id, now(), expires_at)
        return session_id

    def get(self, session_id: str) -> Session | None:
        """The live session with this id: known, unexpired, its token unexpired."""
        if not session_id.startswith(SESSION_PREFIX) or len(session_id) > MAX_SESSION:
            return None
        at = now()
        row = self.db.one(
            "SELECT sessions.* FROM sessions JOIN api_tokens "
            "ON api_tokens.id = sessions.api_token_id WHERE sessions.hash = ? "
            "AND sessions.expires_at > ? "
            "AND (api_tokens.expires_at IS NULL OR api_tokens.expires_at > ?)",
            _hash(session_id), at, at)
        if row is None:
            return None
        return Session(id=row["id"], user_id=row["user_id"], api_token_id=row["api_token_id"],
                       expires_at=row["expires_at"])

    def delete(self, session_id: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE hash = ?", _hash(session_id))

    def count_for(self, user_id: int) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM sessions WHERE user_id = ?", user_id)
        return int(row["n"]) if row else 0

    def prune(self) -> int:
        """Forget expired sessions; returns how many."""
        with self.db.tx() as c:
            return c.execute("DELETE FROM sessions WHERE expires_at <= ?", (now(),)).rowcount
