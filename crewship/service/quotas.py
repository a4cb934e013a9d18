"""Quotas per user: how many apps a user may own, how many instances and how much memory
those apps may run.

An app counts against its owner, whoever creates, scales or limits it. A user without
a quota of their own gets the server's defaults (``CREWSHIP_QUOTA_APPS``, ``_INSTANCES``,
``_MEMORY``); admins are exempt unless a quota was set for them. Memory is what the
owner's apps reserve (scale x ``ps:limits --memory``), so under a memory quota each
running app needs a memory limit. A refusal is one line naming the quota and the use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crewship import log
from crewship.config import Settings
from crewship.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from crewship.errors import QuotaExceededError as Exceeded
from crewship.model import App, User, format_memory, parse_memory
from crewship.service.audit import Audit
from crewship.store.accounts import Accounts
from crewship.store.quotas import UNLIMITED, QuotaStore, Use

logger = log.get("crewship.service.quotas")

FIELDS = ("apps", "instances", "memory")


@dataclass(frozen=True)
class Limits:
    apps: int | None          # None: no quota
    instances: int | None
    memory: int | None
    source: str               # "default", "set by NAME", "admin (exempt)"


def _shown(field: str, value: int | None) -> str:
    if value is None:
        return "unlimited"
    return format_memory(value) if field == "memory" else str(value)


def parse_quota(pairs: list[str]) -> dict[str, int | None]:
    """``apps=3 instances=4 memory=2g`` (``none``: unlimited, ``default``: the server's)."""
    if not pairs:
        raise InvalidInputError("give at least one of apps=N instances=N memory=SIZE")
    out: dict[str, int | None] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in FIELDS:
            raise InvalidInputError(f"{pair[:40]!r} is not apps=N, instances=N or memory=SIZE")
        if text == "default":
            out[key] = None
        elif text in ("none", "unlimited"):
            out[key] = UNLIMITED
        elif key == "memory":
            out[key] = parse_memory(text) or UNLIMITED
        elif text.isascii() and text.isdigit() and int(text) <= 10_000:
            out[key] = int(text)
        else:
            raise InvalidInputError(f"{key} must be a whole number from 0 to 10000, "
                                    f"none or default, not {text[:20]!r}")
    return out


class Quotas:
    def __init__(self, settings: Settings, accounts: Accounts, store: QuotaStore) -> None:
        self.settings = settings
        self.accounts = accounts
        self.store = store
        self.audit: Audit | None = None   # the platform's audit trail
        self.default_memory = parse_memory(settings.quota_memory) if settings.quota_memory \
            else None

    # ------------------------------------------------------------------ reading
    def limits(self, user: User) -> Limits:
        row = self.store.get(user.id)
        if row is None and user.is_admin:
            return Limits(None, None, None, "admin (exempt)")
        defaults = {"apps": self.settings.quota_apps or None,
                    "instances": self.settings.quota_instances or None,
                    "memory": self.default_memory}
        values: dict[str, int | None] = {}
        for field in FIELDS:
            stored = getattr(row, field) if row is not None else None
            if stored is None:
                values[field] = None if user.is_admin else defaults[field]
            else:
                values[field] = None if stored == UNLIMITED else stored
        return Limits(values["apps"], values["instances"], values["memory"],
                      f"set by {row.set_by}" if row else "default")

    def show(self, caller: User, user_name: str | None = None) -> list[dict[str, Any]]:
        """``quotas [USER]``: one user (yourself by default), or everyone for ``--all``."""
        if user_name is not None and user_name != caller.name and not caller.is_admin:
            raise PermissionDeniedError("only an admin can see another user's quotas")
        users = [self._user(user_name or caller.name)]
        return [self._row(user) for user in users]

    def show_all(self, caller: User) -> list[dict[str, Any]]:
        if not caller.is_admin:
            raise PermissionDeniedError("only an admin can see every user's quotas")
        return [self._row(user) for user in self.accounts.users()]

    def _row(self, user: User) -> dict[str, Any]:
        limits, use = self.limits(user), self.store.use(user.id)
        return {"user": user.name, "source": limits.source,
                **{field: {"quota": getattr(limits, field), "used": getattr(use, field)}
                   for field in FIELDS}}

    def _user(self, name: str) -> User:
        user = self.accounts.user(name)
        if user is None:
            raise NotFoundError(f"no user named {name!r}")
        return user

    # ------------------------------------------------------------------ setting
    def set(self, caller: User, user_name: str, pairs: list[str]) -> dict[str, Any]:
        if not caller.is_admin:
            raise PermissionDeniedError("only an admin can set quotas")
        user = self._user(user_name)
        values = parse_quota(pairs)
        self.store.set(user.id, values, caller.name)
        if self.audit is not None:
            self.audit.record(caller.name, "quotas:set", f"quotas of {user.name}: "
                              + ", ".join(f"{k}={'default' if v is None else v}"
                                          for k, v in values.items()))
        logger.info("quota_set", target=user.name, user=caller.name,
                    **{k: v for k, v in values.items()})
        return self._row(user)

    # ----------------------------------------------------------------- checking
    def check_create(self, owner: User) -> None:
        """Before ``owner`` creates an app (which runs 1 instance once deployed)."""
        limits, use = self.limits(owner), self.store.use(owner.id)
        if limits.apps is not None and use.apps + 1 > limits.apps:
            raise Exceeded(f"quota apps={limits.apps} reached: {owner.name} owns {use.apps} "
                           f"app(s); destroy one or ask an admin ('quotas:set {owner.name} "
                           f"apps=N')")
        if limits.instances is not None and use.instances + 1 > limits.instances:
            raise Exceeded(f"quota instances={limits.instances} reached: {owner.name}'s apps "
                           f"run {use.instances} instance(s); a new app would run one more")

    def check_scale(self, app: App, n: int) -> None:
        """Before ``app`` runs ``n`` instances (its owner's quota)."""
        owner = self.accounts.user(app.owner) if app.owner else None
        if owner is None or n <= app.scale:
            return
        limits, use = self.limits(owner), self.store.use(owner.id)
        after = use.instances - app.scale + n
        if limits.instances is not None and after > limits.instances:
            raise Exceeded(f"quota instances={limits.instances} exceeded: {owner.name}'s apps "
                           f"run {use.instances} instance(s), scaling {app.name} to {n} would "
                           f"make {after}")
        self._check_memory(owner, limits, use, app, n, app.memory_limit)

    def check_limits(self, app: App, memory: int | None) -> None:
        """Before ``app``'s memory limit becomes ``memory`` (None: unlimited)."""
        owner = self.accounts.user(app.owner) if app.owner else None
        if owner is None:
            return
        limits = self.limits(owner)
        self._check_memory(owner, limits, self.store.use(owner.id), app, app.scale, memory)

    def _check_memory(self, owner: User, limits: Limits, use: Use, app: App, scale: int,
                      memory: int | None) -> None:
        if limits.memory is None or scale == 0:
            return
        quota = format_memory(limits.memory)
        if memory is None:
            raise Exceeded(f"quota memory={quota}: each of {owner.name}'s running apps needs "
                           f"a memory limit: 'ps:limits {app.name} --memory SIZE' first")
        after = use.memory - app.scale * int(app.memory_limit or 0) + scale * memory
        if after > limits.memory:
            raise Exceeded(f"quota memory={quota} exceeded: {owner.name}'s apps reserve "
                           f"{format_memory(use.memory)}, {app.name} at {scale} x "
                           f"{format_memory(memory)} would make {format_memory(after)}")
