"""The one service behind every front door (SSH commands, HTTP, the client).

Each use case takes the calling ``User`` and checks access here, so the SSH, HTTP and
client paths cannot drift apart. Having no access to an app reads exactly like the
app not existing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from builder.release import remove_tree
from crewship import log
from crewship.config import Layout, Settings
from crewship.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StorageFullError,
    app_not_found,
)
from crewship.model import AccessLevel, App, Key, RefUpdate, User, validate_app_name
from crewship.reporter import NullReporter, Reporter
from crewship.service.access import AppAccess, Engine
from crewship.service.audit import Audit
from crewship.service.cluster import Cluster
from crewship.service.lifecycle import Lifecycle
from crewship.service.metrics import Metrics
from crewship.service.monitoring import Monitoring
from crewship.service.operations import Operations
from crewship.service.quotas import Quotas
from crewship.service.users import Users
from crewship.store.accounts import Accounts
from crewship.store.alerts import AlertStore
from crewship.store.apitokens import ApiToken, ApiTokenStore
from crewship.store.apps import AppStore
from crewship.store.audit import AuditStore
from crewship.store.history import Retention
from crewship.store.quotas import QuotaStore
from crewship.store.releases import ConfigStore, ReleaseStore, TokenStore
from crewship.store.repos import Repos
from crewship.store.sessions import SessionStore
from crewship.store.state import Database
from crewship.store.stats import HistoryStats

if TYPE_CHECKING:
    from crewship.service.backups import BackupService

logger = log.get("crewship.service.platform")


class Platform:
    def __init__(self, settings: Settings, layout: Layout, db: Database) -> None:
        self.settings = settings
        self.layout = layout
        self.db = db
        self.accounts = Accounts(db)
        self.apps_store = AppStore(db)
        self.repos = Repos(layout.repos)
        self.releases = ReleaseStore(db)
        self.config_store = ConfigStore(db)
        self.tokens = TokenStore(db)
        self.api_tokens = ApiTokenStore(db)
        self.alerts = AlertStore(db)
        self.metrics = Metrics()  # this daemon's registry, served at /metrics
        self.engine = Engine()  # the daemon attaches its deployer and kickoff service
        self.checker = AppAccess(self.apps_store)
        self.audit = Audit(AuditStore(db), self.checker,
                           Retention(settings.kickoff_retention_days,
                                     settings.kickoff_retention_max))
        self.ops = Operations(settings, self.checker, self.engine, self.apps_store,
                              self.config_store, self.tokens, self.audit)
        self.quotas = Quotas(settings, self.accounts, QuotaStore(db))
        self.lifecycle = Lifecycle(settings, self.checker, self.engine, self.apps_store,
                                   self.releases, self.config_store, self.quotas,
                                   self.audit)
        self.cluster = Cluster(settings, self.checker, self.engine, self.apps_store,
                               self.lifecycle, self.audit)
        self.monitoring = Monitoring(self.checker, self.engine, self.alerts, HistoryStats(db),
                                     settings.url_policy())
        self.users = Users(settings, self.accounts, self.api_tokens, SessionStore(db))
        self.users.audit = self.audit
        self.quotas.audit = self.audit
        self.backups: BackupService | None = None  # the daemon attaches its backup service

    # ----------------------------------------------------------------- identity
    def signed_in(self, user: User) -> None:
        """An SSH connection of ``user`` was authenticated: ``users`` shows it as last seen.

        Best effort: a full disk must not shut the door (the command then says what failed).
        """
        try:
            self.accounts.seen(user)
        except (StorageFullError, OSError) as exc:
            logger.warning("last_seen_not_recorded", user=user.name, error=str(exc))

    def authenticate(self, fingerprint: str) -> User | None:
        user = self.accounts.user_by_fingerprint(fingerprint)
        if user is None:
            self.audit.record(None, "auth_failed", f"SSH key {fingerprint} refused",
                              cred=f"key {fingerprint}")
        return user

    def register_admin_key(self, user_name: str, public_key: str, key_name: str = "admin") -> Key:
        """Bootstrap: make ``user_name`` an admin owning ``public_key`` (idempotent)."""
        from crewship.store.accounts import parse_public_key

        _, fingerprint = parse_public_key(public_key)
        existing = self.accounts.key_by_fingerprint(fingerprint)
        user = self.accounts.ensure_user(user_name, admin=True)
        if existing is not None:
            if existing.user != user_name:
                raise ConflictError(f"key {fingerprint} already belongs to {existing.user}")
            return existing
        return self.accounts.add_key(user, key_name, public_key)

    # --------------------------------------------------------------- API tokens
    def create_api_token(self, caller: User, expires_days: int | None = None) -> tuple[ApiToken, str]:
        """A user API token for the HTTP side: (record, token); the token is shown once."""
        with self.audit.action(caller, "api-tokens:create", "created an API token"):
            return self.users.create_token(caller, expires_days)

    def list_api_tokens(self, caller: User, user_name: str | None = None) -> list[ApiToken]:
        return self.users.tokens(caller, user_name)

    def revoke_api_token(self, caller: User, token_id: int) -> ApiToken:
        with self.audit.action(caller, "api-tokens:revoke", f"revoked API token {token_id}"):
            return self.users.revoke_token(caller, token_id)

    def user_by_api_token(self, token: str) -> User | None:
        """The user a (known, unexpired) API token belongs to; records the use."""
        return self.users.by_token(token)

    # --------------------------------------------------------------------- keys
    def _target_user(self, caller: User, user_name: str | None, *, create: bool = False) -> User:
        if user_name is None or user_name == caller.name:
            return caller
        if not caller.is_admin:
            raise PermissionDeniedError("only an admin can manage another user's keys")
        if create:
            return self.accounts.ensure_user(user_name)
        target = self.accounts.user(user_name)
        if target is None:
            raise NotFoundError(f"no user named {user_name!r}")
        return target

    def list_keys(self, caller: User, user_name: str | None = None, *,
                  everyone: bool = False) -> list[Key]:
        if everyone:
            if not caller.is_admin:
                raise PermissionDeniedError("only an admin can list every user's keys")
            return self.accounts.list_keys()
        return self.accounts.list_keys(self._target_user(caller, user_name).name)

    def add_key(self, caller: User, key_name: str, public_key: str,
                user_name: str | None = None) -> Key:
        with self.audit.action(caller, "keys:add", f"key {key_name[:60]} for "
                               f"{user_name or caller.name}"):
            target = self._target_user(caller, user_name, create=True)
            key = self.accounts.add_key(target, key_name, public_key)
        logger.info("key_added", target=target.name, key=key_name, key_fp=key.fingerprint)
        return key

    def remove_key(self, caller: User, key_name: str, user_name: str | None = None) -> Key:
        target = self._target_user(caller, user_name)
        remaining = [k for k in self.accounts.list_keys(target.name) if k.name != key_name]
        if target.is_admin and not remaining and not self._other_admin_keys(target):
            raise ConflictError("refusing to remove the last admin key: add another admin key "
                                "first, or the server could no longer be managed")
        with self.audit.action(caller, "keys:remove", f"key {key_name[:60]} of {target.name}"):
            key = self.accounts.remove_key(target, key_name)
        logger.info("key_removed", target=target.name, key=key_name, key_fp=key.fingerprint)
        return key

    def _other_admin_keys(self, user: User) -> bool:
        return any(k.user != user.name for k in self.accounts.list_keys()
                   if (u := self.accounts.user(k.user)) is not None and u.is_admin)

    # --------------------------------------------------------------------- apps
    def level(self, caller: User, app: App | None) -> AccessLevel:
        return self.checker.level(caller, app)

    def app_for(self, caller: User, name: str, need: AccessLevel = AccessLevel.READ) -> App:
        """The app ``name`` if ``caller`` has at least ``need`` on it; else "not found"."""
        return self.checker.app_for(caller, name, need)

    def app_by_uuid(self, caller: User, app_uuid: str,
                    need: AccessLevel = AccessLevel.READ) -> App:
        return self.checker.app_by_uuid(caller, app_uuid, need)

    def apps(self, caller: User) -> list[App]:
        if caller.is_admin:
            return self.apps_store.all()
        return self.apps_store.apps_for(caller.id)

    async def create_app(self, caller: User, name: str) -> App:
        with self.audit.action(caller, "apps:create", f"created {name[:40]}", name[:40]):
            return await self._create_app(caller, name)

    async def _create_app(self, caller: User, name: str) -> App:
        validate_app_name(name)
        if self.apps_store.get(name) is not None:
            if self.level(caller, self.apps_store.get(name)) is AccessLevel.NONE:
                raise ConflictError(f"the name {name!r} is taken: pick another")
            raise ConflictError(f"app {name!r} already exists")
        self.quotas.check_create(caller)
        app = self.apps_store.create(name, caller.id)
        try:
            await self.repos.create(name)
        except BaseException:
            self.apps_store.delete(app)
            raise
        logger.info("app_created", app=name, app_uuid=app.uuid, user=caller.name)
        return app

    async def destroy_app(self, caller: User, name: str, *, force: bool = False) -> App:
        with self.audit.action(caller, "apps:destroy", f"destroyed {name[:40]}", name[:40]):
            return await self._destroy_app(caller, name, force=force)

    async def _destroy_app(self, caller: User, name: str, *, force: bool = False) -> App:
        app = self.app_for(caller, name, AccessLevel.ADMIN)
        if not force:
            raise InvalidInputError(
                f"destroying {name} removes its repo, releases, config and logs for good; "
                f"run 'apps:destroy {name} --force' to confirm")
        deployer = self.engine.deployer
        if deployer is None:
            await self._destroy(app)
        else:  # a running deploy finishes (or fails) first, never half-destroyed under it
            async with deployer.locked(app, caller.name, "destroy", NullReporter()):
                await deployer.forget(app)
                await self._destroy(app)
        logger.info("app_destroyed", app=name, user=caller.name)
        return app

    async def _destroy(self, app: App) -> None:
        self.apps_store.delete(app)
        await asyncio.to_thread(self.repos.delete, app.name)
        for path in (self.layout.releases / app.name, self.layout.app_logs(app.name),
                     self.layout.app_home(app.name)):
            await asyncio.to_thread(remove_tree, path, ignore_errors=True)

    # ------------------------------------------------------------------- access
    def access(self, caller: User, name: str) -> list[tuple[str, AccessLevel]]:
        app = self.app_for(caller, name, AccessLevel.READ)
        owner = [(app.owner, AccessLevel.ADMIN)] if app.owner else []
        return owner + [g for g in self.apps_store.grants(app) if g[0] != app.owner]

    def access_add(self, caller: User, name: str, user_name: str,
                   level: AccessLevel = AccessLevel.READ) -> None:
        app = self.app_for(caller, name, AccessLevel.ADMIN)
        target = self.accounts.user(user_name)
        if target is None:
            raise NotFoundError(f"no user named {user_name!r} (an admin adds users with "
                                f"'keys:add KEYNAME --user {user_name}')")
        self.apps_store.set_grant(app, target.id, level)
        self.audit.record(caller.name, "access:add", f"granted {user_name} {level}", app=name)
        logger.info("access_granted", app=name, target=user_name, level=str(level))

    def access_remove(self, caller: User, name: str, user_name: str) -> None:
        app = self.app_for(caller, name, AccessLevel.ADMIN)
        target = self.accounts.user(user_name)
        if target is None or not self.apps_store.remove_grant(app, target.id):
            raise NotFoundError(f"{user_name} has no access grant on {name}")
        self.audit.record(caller.name, "access:remove", f"removed {user_name}'s access",
                          app=name)
        logger.info("access_revoked", app=name, target=user_name)

    # ---------------------------------------------------------------------- git
    async def git_repo(self, caller: User, name: str, *, write: bool) -> tuple[App, Path]:
        """Authorize a git transport; a push to an unknown app creates it."""
        validate_app_name(name)
        if write and self.apps_store.get(name) is None:
            if self.level(caller, None) < AccessLevel.DEPLOY:
                raise app_not_found(name)
            app = await self.create_app(caller, name)
        else:
            app = self.app_for(caller, name, AccessLevel.DEPLOY if write else AccessLevel.READ)
            if not self.repos.exists(name):
                await self.repos.create(name)
        return app, self.repos.path(name)

    async def receive_push(self, app_name: str, user_name: str, updates: list[RefUpdate],
                           report: Reporter) -> int:
        """Called by the hook hand-off after git stored the refs; returns the exit status."""
        app = self.apps_store.get(app_name)
        user = self.accounts.user(user_name)
        if app is None or user is None:
            report.warn("push from an unknown app or user; nothing deployed")
            return 1
        if self.engine.deployer is not None:
            refs = ", ".join(f"{u.ref} {u.new[:12]}" for u in updates)[:300]
            try:
                status = await self.engine.deployer.on_push(app, user, updates, report)
            except BaseException:
                self.audit.record(user.name, "push", f"pushed {refs}: failed", app=app.name,
                                  outcome="failed")
                raise
            self.audit.record(user.name, "push", f"pushed {refs}: "
                              f"{'deployed' if status == 0 else f'failed (exit {status})'}",
                              app=app.name, outcome="ok" if status == 0 else "failed")
            return status
        for update in updates:
            self.apps_store.record_push(app, user.name, update.ref, update.old, update.new,
                                        outcome="stored")
            report.step(f"Stored {update.ref} at {update.new[:12]}")
        return 0
