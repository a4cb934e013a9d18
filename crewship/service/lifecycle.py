"""The platform's use cases over an app's releases: history, rollback, restart, scale.

Composed into ``Platform`` (crewship/service/platform.py) as ``platform.lifecycle``. Each change takes
the app's deploy lock first and decides what to do only once it holds it (the live
release may have changed while it waited); each new release goes through the same
health-checked swap as a push, and a failed one changes nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crewship import log
from crewship.errors import ConflictError, InvalidInputError, NotFoundError
from crewship.model import AccessLevel, User, validate_config_key
from crewship.reporter import Reporter
from crewship.store.releases import Release, rollback_target

if TYPE_CHECKING:
    from crewship.config import Settings
    from crewship.service.access import AppAccess, Engine
    from crewship.service.audit import Audit
    from crewship.service.quotas import Quotas
    from crewship.store.apps import AppStore
    from crewship.store.releases import ConfigStore, ReleaseStore

logger = log.get("crewship.service.lifecycle")

MAX_SCALE = 10


def release_info(release: Release, live: int | None, available: bool) -> dict[str, Any]:
    """One row of ``releases --json``."""
    return {
        "version": f"v{release.version}", "number": release.version, "kind": release.kind,
        "commit": release.commit, "config_digest": release.config_digest,
        "created_by": release.created_by, "created_at": release.created_at,
        "status": release.status, "live": release.version == live,
        "description": release.description, "error": release.error,
        "build": Path(release.artifact).name if release.artifact else None,
        "build_available": available, "purged_keys": list(release.purged),
    }


def build_available(release: Release) -> bool:
    return release.artifact is not None and (Path(release.artifact) / "release.json").is_file()


@dataclass
class Lifecycle:
    """Releases, rollback, restart, scale and limits."""

    settings: Settings
    access: AppAccess
    engine: Engine
    apps_store: AppStore
    releases: ReleaseStore
    config_store: ConfigStore
    quotas: Quotas | None = None
    audit: Audit | None = None

    # ------------------------------------------------------------------ audited
    def _audited(self, caller: User, action: str, summary: str,
                 app: str) -> AbstractContextManager[None]:
        return (self.audit.action(caller, action, summary, app) if self.audit is not None
                else nullcontext())

    async def rollback(self, caller: User, name: str, version: int | None,
                       report: Reporter) -> Release:
        """A new release running an earlier release's build with that release's config."""
        what = f"rollback to v{version}" if version else "rollback to the previous release"
        with self._audited(caller, "rollback", what, name):
            return await self._rollback(caller, name, version, report)

    async def purge_config_history(self, caller: User, name: str, key: str,
                                   report: Reporter) -> list[int]:
        """Remove config ``key`` from every stored release snapshot (see ``_purge...``)."""
        with self._audited(caller, "config:purge-history", f"purged {key[:80]} from history",
                           name):
            return await self._purge_config_history(caller, name, key, report)

    async def restart(self, caller: User, name: str, report: Reporter) -> Release:
        """The live build again, with the stored config, through the health-checked swap."""
        with self._audited(caller, "restart", "restart", name):
            return await self._restart(caller, name, report)

    async def scale(self, caller: User, name: str, n: int, report: Reporter) -> int:
        """Run ``n`` instances of the live release (0 stops the app)."""
        with self._audited(caller, "ps:scale", f"scale to {n}", name):
            return await self._scale(caller, name, n, report)

    async def limits(self, caller: User, name: str, memory: int | str | None = "keep",
                     cpus: float | str | None = "keep", report: Reporter | None = None
                     ) -> dict[str, Any]:
        """Show or set the app's memory/CPU limits; a change is audited."""
        if memory == "keep" and cpus == "keep":
            return await self._limits(caller, name, memory, cpus, report)
        shown = ", ".join(f"{k}={'unchanged' if v == 'keep' else v or 'none'}"
                          for k, v in (("memory", memory), ("cpus", cpus)))
        with self._audited(caller, "ps:limits", f"limits {shown}", name):
            return await self._limits(caller, name, memory, cpus, report)

    # ------------------------------------------------------------------ history
    def release_history(self, caller: User, name: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first; ``live`` marks the one serving."""
        app = self.access.app_for(caller, name, AccessLevel.READ)
        if not 1 <= limit <= 1000:
            raise InvalidInputError("-n must be between 1 and 1000")
        fresh = self.apps_store.get(app.name) or app
        return [release_info(r, fresh.live_release, build_available(r))
                for r in self.releases.list(fresh, limit)]

    # ----------------------------------------------------------------- rollback
    async def _rollback(self, caller: User, name: str, version: int | None,
                       report: Reporter) -> Release:
        """A new release running an earlier release's build with that release's config."""
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        deployer = self.engine.require_deployer()
        what = f"rollback to v{version}" if version else "rollback"
        async with deployer.locked(app, caller.name, what, report):
            fresh = self.apps_store.get(app.name) or app
            target = rollback_target(self.releases.all(fresh), fresh.live_release, version)
            if target.purged:
                raise ConflictError(
                    f"v{target.version} had {', '.join(target.purged)} removed from its config by "
                    f"config:purge-history, so it cannot be restored as it was: set the "
                    f"value(s) again and deploy, or roll back to another release "
                    f"(see 'releases {name}')")
            if not build_available(target):
                raise NotFoundError(
                    f"v{target.version}'s build was removed (crewship keeps the last 5 builds "
                    f"per app): push its commit {target.commit[:12]} again to run that code")
            built_by = Path(target.artifact or "").name
            report.step(f"Rolling back {name} to v{target.version} "
                        f"({target.commit[:12]}, config {target.config_digest or 'empty'})")
            report.step(f"Reusing {built_by}'s build (no install)")
            release = await deployer.release_from(
                fresh, caller.name, kind="rollback", base=target, config=target.config,
                report=report, description=f"Rollback to v{target.version}")
            self.config_store.replace(fresh, target.config)
            return release

    # ------------------------------------------------------------ purge history
    async def _purge_config_history(self, caller: User, name: str, key: str,
                                   report: Reporter) -> list[int]:
        """Remove config ``key`` (already unset) from every stored release snapshot.

        For a leaked secret: after ``config:unset`` no earlier release keeps it, and a
        rollback to one of them refuses (``Release.purged``) instead of restoring it.
        """
        app = self.access.app_for(caller, name, AccessLevel.ADMIN)
        validate_config_key(key)
        deployer = self.engine.require_deployer()
        async with deployer.locked(app, caller.name, "config:purge-history", report):
            fresh = self.apps_store.get(app.name) or app
            if key in self.config_store.get(fresh):
                raise ConflictError(f"{name} still has {key} set: run 'config:unset {name} {key}' "
                                    "first, then purge it from the history")
            versions = list(self.releases.purge_key(fresh, key))
            logger.info("config_history_purged", app=name, user=caller.name, key=key,
                        releases=len(versions))
            if not versions:
                report.done(f"no stored release of {name} has {key}: nothing to purge")
                return versions
            report.done(f"removed {key} from {len(versions)} release(s): "
                        f"{', '.join(f'v{v}' for v in versions)}; rolling back to them is refused")
            if fresh.live_release in versions:
                report.info(f"the live v{fresh.live_release} still runs with {key} in its "
                            f"environment until 'restart {name}'")
            return versions

    # ------------------------------------------------------------------ restart
    async def _restart(self, caller: User, name: str, report: Reporter) -> Release:
        """The live build again, with the stored config, through the health-checked swap."""
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        deployer = self.engine.require_deployer()
        async with deployer.locked(app, caller.name, "restart", report):
            fresh = self.apps_store.get(app.name) or app
            live = deployer.live(fresh)
            if live is None:
                raise ConflictError(f"{name} has nothing live to restart: push a release first")
            if fresh.scale == 0:
                raise ConflictError(f"{name} is scaled to 0: start it with 'ps:scale {name} 1'")
            if not build_available(live):
                raise NotFoundError(f"v{live.version}'s build is missing: push again to rebuild")
            config = self.config_store.get(fresh)
            changed = sorted(k for k in set(config) | set(live.config)
                             if config.get(k) != live.config.get(k))
            report.step(f"Restarting {name} (v{live.version}, {live.commit[:12]}, no install)")
            if changed:
                report.info(f"applying config stored since v{live.version}: {', '.join(changed)}")
            return await deployer.release_from(
                fresh, caller.name, kind="restart", base=live, config=config, report=report,
                description=f"Restart of v{live.version}")

    # -------------------------------------------------------------------- scale
    async def _scale(self, caller: User, name: str, n: int, report: Reporter) -> int:
        """Run ``n`` instances of the live release (0 stops the app); stored for restarts."""
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        if not 0 <= n <= MAX_SCALE:
            raise InvalidInputError(f"scale must be between 0 and {MAX_SCALE}, not {n}")
        deployer = self.engine.require_deployer()
        async with deployer.locked(app, caller.name, f"scale to {n}", report):
            fresh = self.apps_store.get(app.name) or app
            if self.quotas is not None:
                self.quotas.check_scale(fresh, n)
            live = deployer.live(fresh)
            if live is None:
                if n == 0:
                    raise ConflictError(f"{name} has nothing running to stop: no release is live")
                self.apps_store.set_scale(fresh, n)
                report.step(f"{name} will run {n} instance(s) once a release is live")
                return n
            report.step(f"Scaling {name} from {fresh.scale} to {n} (v{live.version})")
            await deployer.scale_live(fresh, n, report)
            report.done(f"{name} is stopped: kickoffs get 503 until 'ps:scale {name} 1'"
                        if n == 0 else f"{name} runs {n} instance(s) of v{live.version}")
            return n

    # ------------------------------------------------------------------- limits
    async def _limits(self, caller: User, name: str, memory: int | str | None = "keep",
                     cpus: float | str | None = "keep", report: Reporter | None = None
                     ) -> dict[str, Any]:
        """Show or set the app's memory/CPU limits (``"keep"``: unchanged; None: unlimited).

        Every runtime applies them (``enforced_by`` says how: docker, cgroups v2, or the
        usage watchdog); a change restarts a live app (through the health-checked swap) so
        its instances start with them.
        """
        changing = memory != "keep" or cpus != "keep"
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY if changing else AccessLevel.READ)
        if changing:
            new_memory = app.memory_limit if memory == "keep" else memory
            new_cpus = app.cpu_limit if cpus == "keep" else cpus
            assert not isinstance(new_memory, str)
            assert not isinstance(new_cpus, str)
            if self.quotas is not None:
                self.quotas.check_limits(app, new_memory)
            self.apps_store.set_limits(app, new_memory, new_cpus)
            fresh = self.apps_store.get(app.name) or app
            if report is not None and fresh.live_release is not None and fresh.scale > 0:
                await self._restart(caller, name, report)
            app = fresh
        monitor = self.engine.usage
        return {"app": app.name, "memory": app.memory_limit, "cpus": app.cpu_limit,
                "runtime": self.settings.runtime,
                "enforced_by": monitor.enforcement if monitor else self.settings.runtime}
