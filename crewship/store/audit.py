"""The audit trail: one row per state-changing action (never a secret value)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crewship.store.state import Database, now


@dataclass(frozen=True)
class Entry:
    id: int
    at: str
    user: str | None
    credential: str | None     # "key SHA256:..." or "token 12": which one, never its value
    app: str | None
    action: str                # the command's name: config:set, rollback, auth_failed, ...
    outcome: str               # ok | failed
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "user": self.user, "credential": self.credential,
                "app": self.app, "action": self.action, "outcome": self.outcome,
                "summary": self.summary}


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, user: str | None, credential: str | None, app: str | None, action: str,
            outcome: str, summary: str) -> None:
        self.db.execute("INSERT INTO audit (at, user, credential, app, action, outcome, summary) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", now(), user, credential, app, action,
                        outcome, summary[:500])

    def list(self, limit: int, app: str | None = None, user: str | None = None,
             apps: list[str] | None = None) -> list[Entry]:
        """Newest first; ``apps``: only entries of these apps (an app admin's view)."""
        where, args = [], []
        if app is not None:
            where.append("app = ?")
            args.append(app)
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if apps is not None:
            where.append(f"app IN ({','.join('?' * len(apps)) or 'NULL'})")
            args.extend(apps)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.all(f"SELECT * FROM audit {clause} ORDER BY id DESC LIMIT ?",
                           *args, limit)
        return [Entry(r["id"], r["at"], r["user"], r["credential"], r["app"], r["action"],
                      r["outcome"], r["summary"]) for r in rows]

    def prune(self, before: str, keep: int) -> None:
        """Entries older than ``before`` (an ISO time) or beyond the newest ``keep`` go."""
        self.db.execute("DELETE FROM audit WHERE at < ?", before)
        self.db.execute("DELETE FROM audit WHERE id <= (SELECT id FROM audit "
                        "ORDER BY id DESC LIMIT 1 OFFSET ?)", keep)
