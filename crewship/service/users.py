"""The platform's use cases for who gets in: users, API tokens, dashboard sessions.

Composed into ``Platform`` (crewship/service/platform.py) as ``platform.users``.
Offboarding is one step: ``remove`` deletes a user's keys, API tokens, access grants and
dashboard sessions in one transaction (their apps go to another user first), so nothing
they held keeps working on any front door. Admins see and revoke everyone's tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crewship import log
from crewship.errors import ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError
from crewship.model import User
from crewship.service.audit import TOKEN, Audit
from crewship.store.sessions import csrf_ok

if TYPE_CHECKING:
    from crewship.config import Settings
    from crewship.store.accounts import Accounts
    from crewship.store.apitokens import ApiToken, ApiTokenStore
    from crewship.store.sessions import SessionStore

logger = log.get("crewship.service.users")


def _admin_only(caller: User, what: str) -> None:
    if not caller.is_admin:
        raise PermissionDeniedError(f"only an admin can {what}")


class Users:
    def __init__(self, settings: Settings, accounts: Accounts, api_tokens: ApiTokenStore,
                 sessions: SessionStore) -> None:
        self.settings = settings
        self.accounts = accounts
        self.api_tokens = api_tokens
        self.sessions = sessions
        self.audit: Audit | None = None   # the platform's audit trail

    # -------------------------------------------------------------------- users
    def overview(self, caller: User) -> list[dict[str, Any]]:
        """Every user: admin flag, keys, token count, apps owned, last seen (admins)."""
        _admin_only(caller, "list users")
        return self.accounts.summaries()

    def _named(self, name: str) -> User:
        user = self.accounts.user(name)
        if user is None:
            raise NotFoundError(f"no user named {name[:60]!r} (see 'users')")
        return user

    def remove(self, caller: User, name: str, transfer_to: str | None = None) -> dict[str, Any]:
        """``_remove``, recorded in the audit trail."""
        if self.audit is None:
            return self._remove(caller, name, transfer_to)
        moved = f", apps to {transfer_to}" if transfer_to else ""
        with self.audit.action(caller, "users:remove", f"removed user {name}{moved}"):
            return self._remove(caller, name, transfer_to)

    def _remove(self, caller: User, name: str, transfer_to: str | None = None) -> dict[str, Any]:
        """Offboard ``name``: keys, API tokens, grants and sessions go at once."""
        _admin_only(caller, "remove users")
        user = self._named(name)
        heir = self._named(transfer_to) if transfer_to is not None else None
        if heir is not None and heir.id == user.id:
            raise InvalidInputError("--transfer-to must name another user")
        if user.id == caller.id:
            raise ConflictError("you cannot remove yourself: ask another admin")
        if user.is_admin and not self._other_admins(user):
            raise ConflictError("refusing to remove the last admin with a key: add another "
                                "admin first, or the server could no longer be managed")
        keys = len(self.accounts.list_keys(user.name))
        tokens = len(self.api_tokens.list(user))
        sessions = self.sessions.count_for(user.id)
        moved = self.accounts.remove_user(user, heir)
        logger.info("user_removed", target=user.name, by=caller.name, keys=keys, tokens=tokens,
                    sessions=sessions, apps_transferred=moved,
                    transfer_to=heir.name if heir else None)
        return {"user": user.name, "keys": keys, "tokens": tokens, "sessions": sessions,
                "apps_transferred": moved, "transfer_to": heir.name if heir else None}

    def _other_admins(self, user: User) -> bool:
        return any(u["admin"] and u["keys"] and u["name"] != user.name
                   for u in self.accounts.summaries())

    # --------------------------------------------------------------- API tokens
    def create_token(self, caller: User, expires_days: int | None = None) -> tuple[ApiToken, str]:
        """A new API token for ``caller`` (shown once); ``CREWSHIP_API_TOKEN_DAYS`` by
        default (0 there: tokens never expire unless asked to)."""
        days = expires_days if expires_days is not None else (self.settings.api_token_days or None)
        record, token = self.api_tokens.create(caller, days)
        logger.info("api_token_created", token_id=record.id, prefix=record.prefix,
                    expires_at=record.expires_at)
        return record, token

    def tokens(self, caller: User, user_name: str | None = None) -> list[ApiToken]:
        if user_name is None or user_name == caller.name:
            return self.api_tokens.list(caller)
        _admin_only(caller, "see another user's API tokens")
        return self.api_tokens.list(self._named(user_name))

    def revoke_token(self, caller: User, token_id: int) -> ApiToken:
        """Revoke one of the caller's tokens (an admin: anyone's); its sessions end too."""
        if caller.is_admin:
            record = self.api_tokens.revoke_any(token_id)
        else:
            record = self.api_tokens.revoke(caller, token_id)
        logger.info("api_token_revoked", token_id=record.id, prefix=record.prefix,
                    owner_id=record.user_id)
        return record

    def by_token(self, token: str) -> User | None:
        """The user a (known, unexpired) API token belongs to; records the use."""
        record = self.api_tokens.find(token) if token else None
        user = self.accounts.user_by_id(record.user_id) if record is not None else None
        if user is None:
            if token:
                self._refused("API token refused (unknown, revoked or expired)")
            return None
        assert record is not None
        TOKEN.set(f"token {record.id}")
        return user

    def _refused(self, what: str) -> None:
        if self.audit is not None:
            self.audit.record(None, "auth_failed", what)

    # ----------------------------------------------------------------- sessions
    def open_session(self, token: str) -> tuple[User, str] | None:
        """Log in with an API token: (user, new session id), or None for a bad token."""
        record = self.api_tokens.find(token) if token else None
        user = self.accounts.user_by_id(record.user_id) if record is not None else None
        if record is None or user is None:
            self._refused("dashboard login refused (unknown, revoked or expired API token)")
            return None
        self.sessions.prune()
        session_id = self.sessions.create(user.id, record.id, record.expires_at)
        if self.audit is not None:
            self.audit.record(user.name, "dashboard:login", "logged in to the dashboard",
                              cred=f"token {record.id}")
        logger.info("session_opened", user=user.name, token_id=record.id)
        return user, session_id

    def session_user(self, session_id: str) -> User | None:
        """The user of a live session (its token unrevoked and unexpired), else None."""
        session = self.sessions.get(session_id) if session_id else None
        return self.accounts.user_by_id(session.user_id) if session is not None else None

    def check_csrf(self, session_id: str, csrf: str) -> None:
        """A dashboard form that changes state carries its session's CSRF token."""
        if not csrf_ok(session_id, csrf):
            raise PermissionDeniedError("this form is stale or was not sent by the dashboard: "
                                        "reload the page and try again")

    def close_session(self, session_id: str, csrf: str) -> None:
        self.check_csrf(session_id, csrf)
        self.sessions.delete(session_id)
        logger.info("session_closed")
