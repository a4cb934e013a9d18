"""Deploying: commit -> release -> live, config changes, and restoring after a restart.

Order for every change (push, config, rollback, restart): take the app's deploy lock,
record a release, build it (pushes only), start it beside the old one through the
supervisor's health-checked swap, then mark it live. A failure marks the release
failed, puts the branch ref back (pushes), and leaves the old release serving. What a
release's instances run (argv, environment, limits) is crewship/service/specs.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.env import remove_detached
from builder.release import (
    BuiltRelease,
    ReleaseBuilder,
    remove_tree,
)
from crewship import log
from crewship.config import Layout, Settings
from crewship.errors import ConflictError, CrewshipError, DeployError
from crewship.events import DeployFinished, EventSink, ignore
from crewship.model import App, RefUpdate, User
from crewship.reporter import Reporter
from crewship.service.retention import KEEP, Pruned, builds_to_prune, env_keys_in_use
from crewship.service.specs import InstanceSpecs
from crewship.store.apps import AppStore
from crewship.store.gitobjects import ZERO_SHA
from crewship.store.releases import ConfigStore, Release, ReleaseStore
from crewship.store.repos import Repos
from runtime.events import InstanceFailedError, Orchestrator
from runtime.logs import AppLog

logger = log.get("crewship.service.deploys")

DEPLOY_BRANCHES = ("refs/heads/main", "refs/heads/master")
OUTPUT_LINES = 40  # of a failed instance's output shown to the pusher


@dataclass
class LockHolder:
    user: str
    what: str
    since: float

    def describe(self, app: str) -> str:
        started = time.strftime("%H:%M:%S", time.gmtime(self.since))
        return (f"{self.user}'s {self.what} of {app} (started {started} UTC, "
                f"{_seconds(time.time() - self.since)} ago)")


def _seconds(value: float) -> str:
    whole = int(value)
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


class Deployer:
    def __init__(self, settings: Settings, layout: Layout, apps: AppStore, repos: Repos,
                 releases: ReleaseStore, config: ConfigStore, builder: ReleaseBuilder,
                 supervisor: Orchestrator) -> None:
        self.settings = settings
        self.layout = layout
        self.apps = apps
        self.repos = repos
        self.releases = releases
        self.config = config
        self.builder = builder
        self.supervisor = supervisor
        self.specs = InstanceSpecs(settings, layout, apps)
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots_total = settings.deploy_concurrency or os.cpu_count() or 2
        self._slots = asyncio.Semaphore(self._slots_total)
        self._holders: dict[str, LockHolder] = {}
        self.on_event: EventSink = ignore   # the daemon wires telemetry here

    def app_log(self, app: str) -> AppLog:
        return AppLog(self.layout.app_logs(app))

    # ------------------------------------------------------------------ locking
    @asynccontextmanager
    async def locked(self, app: App, user: str, what: str,
                     report: Reporter) -> AsyncIterator[None]:
        """One deploy per app at a time; a second waits, saying for whom and what."""
        lock = self._locks.setdefault(app.name, asyncio.Lock())
        limit = self.settings.deploy_lock_timeout
        if lock.locked() and (holder := self._holders.get(app.name)):
            report.step(f"Waiting for {holder.describe(app.name)} to finish "
                        f"(waiting up to {_seconds(limit)})")
        try:
            await asyncio.wait_for(lock.acquire(), limit)
        except TimeoutError:
            holder = self._holders.get(app.name)
            who = holder.describe(app.name) if holder else f"another deploy of {app.name}"
            raise ConflictError(f"gave up after {_seconds(limit)}: {who} is still running; "
                                "try again when it is done") from None
        self._holders[app.name] = LockHolder(user, what, time.time())
        try:
            yield
        finally:
            self._holders.pop(app.name, None)
            lock.release()

    @asynccontextmanager
    async def slot(self, report: Reporter) -> AsyncIterator[None]:
        """Deploys of different apps run in parallel up to the core count: a crew's
        health check then measures the crew, not a queue for the CPU."""
        if self._slots.locked():
            report.step(f"Waiting for a free deploy slot ({self._slots_total} deploys run "
                        "at once on this server)")
        async with self._slots:
            yield

    # -------------------------------------------------------------------- pushes
    def _is_deploy_ref(self, app: App, ref: str) -> bool:
        if app.deploy_branch:
            return ref == app.deploy_branch
        return ref in DEPLOY_BRANCHES

    async def on_push(self, app: App, user: User, updates: list[RefUpdate],
                      report: Reporter) -> int:
        status = 0
        for update in updates:
            if update.new == ZERO_SHA or not self._is_deploy_ref(app, update.ref):
                self.apps.record_push(app, user.name, update.ref, update.old, update.new,
                                      outcome="stored")
                branch = app.deploy_branch or "main"
                report.step(f"Stored {update.ref} (not deployed: the deploy branch is "
                            f"{branch.removeprefix('refs/heads/')})")
                continue
            if not app.deploy_branch:
                self.apps.set_deploy_branch(app, update.ref)
            push_id = self.apps.record_push(app, user.name, update.ref, update.old, update.new)
            logger.info("push_received", app=app.name, user=user.name, ref=update.ref,
                        commit=update.new)
            try:
                await self.deploy_commit(app, user.name, update.new, report)
                self.apps.set_push_outcome(push_id, "deployed")
            except CrewshipError as exc:
                self.apps.set_push_outcome(push_id, "failed")
                await self._revert_ref(app, update, report)
                report.warn(f"Deploy failed: {exc}")
                status = 1
        return status

    async def _revert_ref(self, app: App, update: RefUpdate, report: Reporter) -> None:
        try:
            await self.repos.update_ref(app.name, update.ref, update.old, update.new)
        except CrewshipError as exc:
            logger.warning("ref_revert_failed", app=app.name, ref=update.ref, error=str(exc))
            return
        old = "deleted" if update.old == ZERO_SHA else f"back at {update.old[:12]}"
        report.info(f"{update.ref.removeprefix('refs/heads/')} is {old}; "
                    "the previous release keeps serving")

    async def deploy_commit(self, app: App, user: str, commit: str, report: Reporter) -> Release:
        async with self.locked(app, user, f"deploy of {commit[:12]}", report):
            started = time.monotonic()
            config = self.config.get(app)
            release = self.releases.create(app, kind="push", commit=commit, config=config,
                                           created_by=user, description=f"Deploy {commit[:12]}")
            self.app_log(app.name).system(f"deploy v{release.version} ({commit[:12]}) by {user}")
            try:
                async with self.slot(report):
                    built = await self._build_and_activate(app, release, commit, config,
                                                           report, started, user)
            except CrewshipError as exc:
                self._fail(app, release.version, exc)
                self._finished(app, release.version, user, "push", started, exc)
                raise
            self._finished(app, release.version, user, "push", started,
                           cache_hit=built.env.cache_hit)
            return release

    async def _build_and_activate(self, app: App, release: Release, commit: str,
                                  config: dict[str, str], report: Reporter, started: float,
                                  user: str) -> BuiltRelease:
        built = await self.builder.build(app.name, release.version, self.repos.path(app.name),
                                         commit, report, config_keys=set(config))
        self.releases.set_artifact(app, release.version, str(built.dir))
        logger.info("build_finished", app=app.name, release=release.version, user=user,
                    cache_hit=built.env.cache_hit,
                    duration_ms=round((time.monotonic() - started) * 1000))
        await self._activate(app, release.version, built.dir, config, report)
        return built

    # --------------------------------------------------------------- new releases
    async def release_from(self, app: App, user: str, *, kind: str, description: str,
                           base: Release, config: dict[str, str], report: Reporter) -> Release:
        """A release reusing ``base``'s artifact with ``config`` (config, rollback, restart)."""
        if base.artifact is None:
            raise DeployError(f"v{base.version} has no artifact to run")
        release = self.releases.create(app, kind=kind, commit=base.commit, config=config,
                                       created_by=user, description=description,
                                       artifact=base.artifact)
        self.app_log(app.name).system(f"{description} as v{release.version} by {user}")
        started = time.monotonic()
        try:
            async with self.slot(report):
                await self._activate(app, release.version, Path(base.artifact), config, report)
        except CrewshipError as exc:
            self._fail(app, release.version, exc)
            self._finished(app, release.version, user, kind, started, exc)
            raise
        self._finished(app, release.version, user, kind, started)
        return release

    def _fail(self, app: App, version: int, exc: CrewshipError) -> None:
        self.releases.mark_failed(app, version, str(exc))
        self.app_log(app.name).system(f"deploy v{version} failed: {exc}")
        logger.info("deploy_failed", app=app.name, release=version, error=str(exc))

    def _finished(self, app: App, version: int, user: str, kind: str, started: float,
                  error: CrewshipError | None = None, cache_hit: bool | None = None) -> None:
        """The canonical line and event of one deploy (push, config, rollback, restart)."""
        duration = time.monotonic() - started
        outcome = "failed" if error else "succeeded"
        logger.info("deploy_finished", app=app.name, release=version, user=user, kind=kind,
                    outcome=outcome, duration_ms=round(duration * 1000), cache_hit=cache_hit)
        self.on_event(DeployFinished(app.name, version, user, kind, outcome, duration,
                                     str(error) if error else None, cache_hit))

    async def _activate(self, app: App, version: int, artifact: Path, config: dict[str, str],
                        report: Reporter) -> None:
        started = time.monotonic()
        make_spec = self.specs.for_release(app.name, version, artifact, config)
        current = self.apps.get(app.name) or app
        if current.scale == 0:
            report.info(f"{app.name} was scaled to 0: this deploy starts 1 instance")
        try:
            await self.supervisor.deploy(app.name, version, make_spec,
                                         scale=max(current.scale, 1), report=report)
        except InstanceFailedError as exc:
            if exc.output:  # the new instance's own last lines say why it failed
                report.warn(f"{exc.instance} output (last lines):")
                for line in exc.output.splitlines()[-OUTPUT_LINES:]:
                    report.info(line)
            raise
        if current.scale == 0:
            self.apps.set_scale(current, 1)
        self.apps.set_crashed(app.name, False)
        self.releases.mark_live(app, version)
        self.app_log(app.name).system(f"v{version} is live")
        logger.info("deploy_succeeded", app=app.name, release=version,
                    duration_ms=round((time.monotonic() - started) * 1000))
        await self.prune(app, report)
        report.done(f"{app.name} v{version} is live at {self.settings.app_url(app.name)}")

    # -------------------------------------------------------------------- scale
    async def scale_live(self, app: App, n: int, report: Reporter) -> None:
        """Run ``n`` instances of the live release; the caller holds the app's lock."""
        live = self.live(app)
        fresh = self.apps.get(app.name) or app
        if live is not None:
            if self.supervisor.status(app.name).release == live.version:
                await self.supervisor.scale(app.name, n, report)
            elif n > 0:  # nothing running (scaled to 0 before the daemon started)
                assert live.artifact is not None
                make_spec = self.specs.for_release(app.name, live.version, Path(live.artifact),
                                              live.config)
                await self.supervisor.deploy(app.name, live.version, make_spec, scale=n,
                                             report=report)
            self.app_log(app.name).system(f"scaled to {n} (v{live.version})")
        self.apps.set_scale(fresh, n)
        self.apps.set_crashed(app.name, False)
        logger.info("app_scaled", app=app.name, scale=n)

    # ---------------------------------------------------------------- retention
    async def prune(self, app: App, report: Reporter) -> Pruned:
        """Remove the builds no kept release uses, then unused envs; never fails a deploy."""
        try:
            pruned = await self._prune(app)
        except (OSError, CrewshipError) as exc:
            logger.warning("prune_failed", app=app.name, error=str(exc))
            return Pruned([], [], f"pruning failed: {exc}")
        if pruned.builds:
            report.info(f"Removed old builds {', '.join(pruned.builds)} "
                        f"(keeping the last {KEEP} and any a kept release uses)")
        logger.info("builds_pruned", app=app.name, builds=pruned.builds, envs=pruned.envs,
                    envs_skipped=pruned.envs_skipped)
        return pruned

    async def _prune(self, app: App) -> Pruned:
        fresh = self.apps.get(app.name) or app
        root = self.layout.releases / app.name
        on_disk = await asyncio.to_thread(_names_in, root)
        doomed = builds_to_prune(self.releases.all(fresh), fresh.live_release, on_disk)
        for name in doomed:
            await asyncio.to_thread(self.builder.remove_release, app.name, int(name[1:]))
        await self.builder.gc_artifacts(app.name)
        envs, skipped = await self._prune_envs(app)
        return Pruned(doomed, envs, skipped)

    async def _prune_envs(self, app: App) -> tuple[list[str], str | None]:
        envs = self.builder.envs
        if self.settings.envs_dir is not None or envs.envs_dir != self.layout.envs:
            return [], "the envs directory may be shared with other servers (CREWSHIP_ENVS_DIR)"
        busy = sorted(n for n, lock in self._locks.items() if n != app.name and lock.locked())
        if busy:
            return [], f"other deploys are running ({', '.join(busy)})"
        keys = await asyncio.to_thread(env_keys_in_use, self.layout.releases)  # a tree walk
        if keys is None:
            return [], "a build's release.json could not be read"
        detached = envs.detach(keys)  # synchronous: no build can start in between
        for _key, path in detached:
            await asyncio.to_thread(remove_detached, path)
        return [key for key, _path in detached], None

    # ------------------------------------------------------------------ lifecycle
    async def restore(self, skip: Collection[str] = ()) -> None:
        """After a daemon (re)start and ``reconcile``: adopt or start each app's live
        release, and stop whatever runs for apps or releases nobody knows.

        ``skip``: apps a restore left to rebuild (crewship/service/restore.py).
        """
        failed: set[str] = set(skip)
        for app in self.apps.all():
            if app.live_release is None or app.name in skip:
                continue
            release = self.releases.get(app, app.live_release)
            if release is None or release.artifact is None:
                continue
            try:
                make_spec = self.specs.for_release(app.name, release.version,
                                              Path(release.artifact), release.config)
                await self.supervisor.adopt(app.name, release.version, make_spec, app.scale,
                                            crashed=app.crashed_at is not None)
            except CrewshipError as exc:  # its instances are left as they are
                failed.add(app.name)
                logger.warning("restore_failed", app=app.name, error=str(exc))
        stopped = await self.supervisor.stop_orphans(frozenset(failed))
        if stopped:
            logger.info("orphans_stopped", instances=stopped)

    async def reconcile(self) -> None:
        """Finish what a daemon killed mid-deploy left: the push failed, its branch back
        where it was, its release failed and its half-made trees removed."""
        for row in self.apps.unfinished_pushes():
            self.apps.set_push_outcome(int(row["id"]), "failed")
            update = RefUpdate(row["old_sha"], row["new_sha"], row["ref"])
            try:
                await self.repos.update_ref(str(row["app_name"]), update.ref, update.old,
                                            update.new)
            except CrewshipError as exc:  # moved on since (a newer push): leave it
                logger.warning("ref_revert_failed", app=row["app_name"], ref=update.ref,
                               error=str(exc))
            else:
                logger.info("push_reverted", app=row["app_name"], ref=update.ref,
                            commit=update.new, back_to=update.old)
        for app_name, version in self.releases.fail_unfinished():
            self.app_log(app_name).system(f"deploy v{version} failed: the server stopped "
                                          "during the deploy")
            await asyncio.to_thread(self.builder.remove_release, app_name, version)
        await asyncio.to_thread(_clear_tmp, self.layout.tmp)

    async def forget(self, app: App) -> None:
        await self.supervisor.stop(app.name)
        await self.supervisor.purge(app.name)  # swarm: the app's images in the registry

    def crashed(self, app: str) -> None:
        """The supervisor gave ``app`` up: remembered until a deploy, restart or scale."""
        if self.apps.get(app) is not None:
            self.apps.set_crashed(app, True)

    def live(self, app: App) -> Release | None:
        fresh = self.apps.get(app.name)
        if fresh is None or fresh.live_release is None:
            return None
        return self.releases.get(fresh, fresh.live_release)


def _names_in(root: Path) -> list[str]:
    return [p.name for p in root.iterdir()] if root.is_dir() else []


def _clear_tmp(tmp: Path) -> None:
    """Remove build, export and upload scratch trees: at start no build is running."""
    if not tmp.is_dir():
        return
    for entry in tmp.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        logger.info("temp_tree_removed", path=str(entry))
