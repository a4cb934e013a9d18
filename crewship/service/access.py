"""What every use case starts from: who may touch which app, and the runtime handles.

``AppAccess`` is the one access function (Soft Serve's pattern): a caller's level on an
app, and the app itself only when the caller has the level a use case needs; having no
access reads exactly like the app not existing. ``Engine`` holds the deployer and the
kickoff service, which the daemon attaches once it has a runtime (tests and the offline
``crewship admin`` commands run without one). The use-case services (``Operations``,
``Lifecycle``, ``Monitoring``) are composed from these two, not mixed into one class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crewship.errors import NotFoundError, PermissionDeniedError, UnavailableError, app_not_found
from crewship.model import AccessLevel, App, User, access_level, validate_app_name

if TYPE_CHECKING:
    from crewship.service.deploys import Deployer
    from crewship.service.kickoffs import KickoffService
    from crewship.service.usage import UsageMonitor
    from crewship.store.apps import AppStore


class AppAccess:
    def __init__(self, apps_store: AppStore) -> None:
        self.apps_store = apps_store

    def level(self, caller: User, app: App | None) -> AccessLevel:
        grant = self.apps_store.grant(app, caller.id) if app is not None else None
        return access_level(caller, app, grant)

    def app_for(self, caller: User, name: str, need: AccessLevel = AccessLevel.READ) -> App:
        """The app ``name`` if ``caller`` has at least ``need`` on it; else "not found"."""
        validate_app_name(name)
        app = self.apps_store.get(name)
        if app is None:
            raise app_not_found(name)
        have = self.level(caller, app)
        if have is AccessLevel.NONE:
            raise app_not_found(name)
        if have < need:
            raise PermissionDeniedError(f"{caller.name} has {have} access to {name}; "
                                        f"this needs {need} (ask the app's owner for access:add)")
        return app

    def app_by_uuid(self, caller: User, app_uuid: str,
                    need: AccessLevel = AccessLevel.READ) -> App:
        app = self.apps_store.by_uuid(app_uuid)
        missing = NotFoundError(f"no app with uuid {app_uuid!r} (see 'apps' for yours)")
        if app is None or self.level(caller, app) is AccessLevel.NONE:
            raise missing  # no access reads like no app, and names nothing
        return self.app_for(caller, app.name, need)


class Engine:
    """The deployer and kickoff service of a daemon with a runtime (None without one)."""

    def __init__(self) -> None:
        self.deployer: Deployer | None = None
        self.kickoffs: KickoffService | None = None
        self.usage: UsageMonitor | None = None   # what instances use (crewship/service/usage.py)

    def require_deployer(self) -> Deployer:
        if self.deployer is None:
            raise UnavailableError("this server runs without a runtime")
        return self.deployer

    def require_kickoffs(self) -> KickoffService:
        if self.kickoffs is None:
            raise UnavailableError("this server runs without a runtime")
        return self.kickoffs
