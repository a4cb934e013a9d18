"""The audit trail's one helper: every state-changing use case records itself here.

``Audit.action`` wraps a use case: the row says who (user, and the key fingerprint or
API token id the front door bound for this connection), which app, what (a one-line
summary the caller writes without any secret value: config keys, never values) and
whether it worked. ``audit`` shows the trail to admins, ``audit APP`` to that app's
admins. Old rows are pruned with the kickoff history's retention.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from crewship import log
from crewship.errors import InvalidInputError, PermissionDeniedError
from crewship.model import AccessLevel, User
from crewship.service.access import AppAccess
from crewship.store.audit import AuditStore
from crewship.store.history import Retention

logger = log.get("crewship.service.audit")

# "token 12" while a request authenticated by a user API token runs (set by Users.by_token).
TOKEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("audit_token", default=None)
PRUNE_EVERY = 200


def credential() -> str | None:
    """Which key or token the current caller used, if the front door said so."""
    key_fp = structlog.contextvars.get_contextvars().get("key_fp")
    return f"key {key_fp}" if key_fp else TOKEN.get()


def printable(text: str | None) -> str | None:
    """One line: what came from the caller (names of refused input) can break no table."""
    if text is None:
        return None
    return "".join(ch if ch.isprintable() else "?" for ch in text)


class Audit:
    def __init__(self, store: AuditStore, access: AppAccess, retention: Retention) -> None:
        self.store = store
        self.access = access
        self.retention = retention
        self._since_prune = 0

    def record(self, user: str | None, action: str, summary: str, *, app: str | None = None,
               outcome: str = "ok", cred: str | None = None) -> None:
        try:
            self.store.add(user, cred or credential(), printable(app), action, outcome,
                           printable(summary) or action)
        except Exception:  # the trail must never break the action it records
            logger.exception("audit_record_failed", action=action, app=app)
            return
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            self.prune()

    @contextmanager
    def action(self, caller: User, action: str, summary: str,
               app: str | None = None) -> Iterator[None]:
        """Record ``action`` as ok when the block finishes, as failed when it raises."""
        try:
            yield
        except BaseException as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            self.record(caller.name, action, f"{summary}: {reason}", app=app, outcome="failed")
            raise
        self.record(caller.name, action, summary, app=app)

    def prune(self) -> None:
        self.store.prune(self.retention.cutoff(dt.datetime.now(dt.UTC)),
                         self.retention.max_per_app * 10)

    def trail(self, caller: User, *, limit: int = 50, app: str | None = None,
              user: str | None = None) -> list[dict[str, Any]]:
        """``audit``: everything for admins; with an app, that app's admins see its rows."""
        if not 1 <= limit <= 10_000:
            raise InvalidInputError("-n must be between 1 and 10000")
        if not caller.is_admin:
            if app is None:
                raise PermissionDeniedError("only an admin can read the whole audit trail: "
                                            "an app's admins can use 'audit APP'")
            self.access.app_for(caller, app, AccessLevel.ADMIN)   # else "not found"
        return [e.as_dict() for e in self.store.list(limit, app=app, user=user)]
