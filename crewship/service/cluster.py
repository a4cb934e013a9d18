"""The swarm runtime's own use cases: ``ps:placement`` (where an app's tasks may run) and
``nodes`` (the machines of the swarm, admins only).

Composed into ``Platform`` as ``platform.cluster``. A placement change is stored on any
runtime (it takes effect once the server runs ``--runtime swarm``) and, on a swarm,
rolls the live app out again through the same path as ``ps:limits`` (a restart release).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crewship.errors import InvalidInputError, PermissionDeniedError, UnavailableError
from crewship.model import AccessLevel, User
from crewship.reporter import Reporter

if TYPE_CHECKING:
    from crewship.config import Settings
    from crewship.service.access import AppAccess, Engine
    from crewship.service.audit import Audit
    from crewship.service.lifecycle import Lifecycle
    from crewship.store.apps import AppStore

MAX_CONSTRAINTS = 10
# Swarm's constraint grammar: node.<attribute> or engine.labels.<name>, == or !=, a value.
_CONSTRAINT_RE = re.compile(
    r"^(node\.(id|hostname|role|platform\.os|platform\.arch|labels\.[A-Za-z0-9_.-]{1,64})"
    r"|engine\.labels\.[A-Za-z0-9_.-]{1,64})\s*(==|!=)\s*[A-Za-z0-9_.:/-]{1,128}$")


def check_constraint(text: str) -> str:
    """A Swarm placement constraint such as ``node.labels.pool==crews``, or a clear error."""
    value = text.strip()
    if not _CONSTRAINT_RE.fullmatch(value):
        raise InvalidInputError(
            f"invalid placement constraint {text[:60]!r}: use node.labels.NAME==VALUE, "
            "node.role==manager|worker, node.hostname==NAME, node.platform.arch==x86_64 "
            "(== or !=)")
    return value


@dataclass
class Cluster:
    settings: Settings
    access: AppAccess
    engine: Engine
    apps_store: AppStore
    lifecycle: Lifecycle
    audit: Audit | None = None

    async def placement(self, caller: User, name: str, constraints: list[str] | None,
                        report: Reporter | None = None) -> dict[str, Any]:
        """Show (``None``) or set the app's placement constraints (``[]`` clears them)."""
        if constraints is None:
            app = self.access.app_for(caller, name, AccessLevel.READ)
            return self._info(app.name, app.placement)
        if len(constraints) > MAX_CONSTRAINTS:
            raise InvalidInputError(f"at most {MAX_CONSTRAINTS} placement constraints")
        checked = tuple(check_constraint(c) for c in constraints)
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        summary = f"placement {', '.join(checked) or 'cleared'}"
        audited = self.audit.action(caller, "ps:placement", summary, app.name) \
            if self.audit is not None else None
        if audited is not None:
            with audited:
                return await self._set(caller, app.name, checked, report)
        return await self._set(caller, app.name, checked, report)

    async def _set(self, caller: User, name: str, checked: tuple[str, ...],
                   report: Reporter | None) -> dict[str, Any]:
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        self.apps_store.set_placement(app, checked)
        fresh = self.apps_store.get(app.name) or app
        if report is not None:
            if self.settings.runtime != "swarm":
                report.info(f"stored; placement applies on the swarm runtime (this server "
                            f"runs {self.settings.runtime})")
            elif fresh.live_release is not None and fresh.scale > 0:
                await self.lifecycle.restart(caller, name, report)
        return self._info(fresh.name, checked)

    def _info(self, app: str, constraints: tuple[str, ...]) -> dict[str, Any]:
        return {"app": app, "constraints": list(constraints), "runtime": self.settings.runtime}

    async def nodes(self, caller: User) -> list[dict[str, Any]]:
        """The swarm's nodes and how many crew tasks each runs (admins only)."""
        if not caller.is_admin:
            raise PermissionDeniedError("only an admin can list the swarm's nodes")
        deployer = self.engine.require_deployer()
        listing = getattr(deployer.supervisor, "nodes", None)
        if listing is None:
            raise UnavailableError(f"this server runs the {self.settings.runtime} runtime: "
                                   "nodes lists a swarm (crewship server --runtime swarm)")
        found: list[dict[str, Any]] = await listing()
        return found
