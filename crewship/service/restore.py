"""Restoring a backup into a new data directory, and rebuilding its apps on the next start.

``restore`` (offline, ``crewship restore ARCHIVE_OR_SNAPSHOT --data-dir NEW``) refuses a
non-empty target and an archive whose checksums fail, then writes ``state.db``, the
repositories (from their bundles), the SSH host key and the secrets key, points every
release's build at the new data dir, and lists the apps with a live release in
``rebuild.json``. ``Rebuilder`` runs at the next ``crewship server``: for each listed app
it rebuilds the live release's build from its commit and lock file, starts it under the
same release number and config, and takes the app off the list. Tokens, users, keys,
config, releases and kickoff history come back as they were: they live in ``state.db``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from crewship import log
from crewship.config import Layout, Settings
from crewship.errors import CrewshipError, InvalidInputError
from crewship.reporter import LineReporter
from crewship.service.backups import restic_from
from crewship.service.deploys import Deployer
from crewship.service.retention import BUILD_DIR_RE
from crewship.store import archive
from crewship.store.migrations import MIGRATIONS
from crewship.store.repos import Repos
from crewship.store.restic import is_snapshot_id

logger = log.get("crewship.service.restore")


@dataclass(frozen=True)
class Restored:
    backup: str
    data_dir: Path
    apps: list[str]
    rebuild: list[str]
    source: str


def check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInputError(f"{target} is not empty: restore into a new or empty directory "
                                "(a restore never overwrites a data dir)")


def restore(source: str, target: Path, settings: Settings) -> Restored:
    """Restore the archive at ``source`` (a path, or a restic snapshot id) into ``target``."""
    check_target(target)
    with tempfile.TemporaryDirectory(prefix="crewship-restore-") as scratch:
        path, where = _source_archive(source, Path(scratch), settings)
        manifest = archive.verify(path)
        schema = int(manifest.data.get("schema_version", 0))
        if schema > len(MIGRATIONS):
            raise InvalidInputError(f"the backup has schema version {schema}, newer than this "
                                    f"crewship's {len(MIGRATIONS)}: restore with a newer crewship")
        created = not target.exists()
        try:
            restored = _unpack(path, manifest, Layout(target.resolve()), where)
        except BaseException:
            _clean(target, created)
            raise
    logger.info("backup_restored", backup=restored.backup, data_dir=str(target),
                apps=len(restored.apps), rebuild=restored.rebuild, source=where)
    return restored


def _source_archive(source: str, scratch: Path, settings: Settings) -> tuple[Path, str]:
    path = Path(source)
    if path.is_file():
        return path, str(path)
    if not is_snapshot_id(source):
        raise InvalidInputError(f"no such archive: {source} (give a crewship-backup-*.tar file "
                                "or a restic snapshot id)")
    layout = Layout(scratch)
    restic = restic_from(settings, layout)
    if restic is None:
        raise InvalidInputError(f"{source} is not a file; to restore restic snapshot {source}, "
                                "set CREWSHIP_BACKUP_RESTIC_REPO and "
                                "CREWSHIP_BACKUP_RESTIC_PASSWORD_FILE")
    snapshot = restic.fetch(source, scratch / "archive.tar")
    return scratch / "archive.tar", f"{restic.where} {snapshot.short_id}"


def _clean(target: Path, created: bool) -> None:
    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _unpack(path: Path, manifest: archive.Manifest, layout: Layout, where: str) -> Restored:
    layout.ensure()
    staging = layout.tmp / "restore"
    staging.mkdir()
    archive.extract(path, staging, manifest)
    os.replace(staging / archive.STATE, layout.state_db)
    for key in sorted((staging / "host_keys").glob("*")):
        os.replace(key, layout.host_keys / key.name)
    secrets = staging / layout.secrets_key.name
    if secrets.is_file():
        os.replace(secrets, layout.secrets_key)
    for app, facts in sorted(manifest.repos.items()):
        bundle = staging / "repos" / f"{app}.bundle"
        archive.restore_repo(bundle if bundle.exists() else None, layout.repo(app),
                             str(facts.get("head") or "refs/heads/main"))
        Repos(layout.repos).install_hooks(app)
    shutil.rmtree(staging)
    rebuild = _repoint_builds(layout)
    _write_marker(layout, manifest.id, rebuild)
    return Restored(manifest.id, layout.root, sorted(manifest.repos), rebuild, where)


def _repoint_builds(layout: Layout) -> list[str]:
    """Point each release's build at the new data dir; the apps with a live release."""
    conn = sqlite3.connect(str(layout.state_db), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute("SELECT releases.id, releases.artifact, apps.name FROM releases "
                            "JOIN apps ON apps.id = releases.app_id "
                            "WHERE artifact IS NOT NULL").fetchall()
        for release_id, artifact, app in rows:
            build = Path(artifact).name
            if BUILD_DIR_RE.fullmatch(build):
                conn.execute("UPDATE releases SET artifact = ? WHERE id = ?",
                             (str(layout.release_dir(app, int(build[1:]))), release_id))
        live = [r[0] for r in conn.execute("SELECT name FROM apps WHERE live_release IS NOT "
                                           "NULL ORDER BY name").fetchall()]
        conn.execute("COMMIT")
    finally:
        conn.close()
    layout.state_db.chmod(0o600)
    return live


def _write_marker(layout: Layout, backup: str, apps: list[str]) -> None:
    tmp = layout.rebuild_marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"backup": backup, "apps": apps}, indent=2) + "\n")
    os.replace(tmp, layout.rebuild_marker)


class Rebuilder:
    """At start: rebuild and start the live release of each app a restore listed."""

    def __init__(self, layout: Layout, deployer: Deployer) -> None:
        self.layout = layout
        self.deployer = deployer

    def pending(self) -> list[str]:
        try:
            data = json.loads(self.layout.rebuild_marker.read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            logger.warning("rebuild_marker_unreadable", path=str(self.layout.rebuild_marker))
            return []
        return [str(a) for a in data.get("apps", [])]

    def _done(self, app: str) -> None:
        try:
            data = json.loads(self.layout.rebuild_marker.read_text())
        except (OSError, ValueError):
            return
        data["apps"] = [a for a in data.get("apps", []) if a != app]
        if not data["apps"]:
            self.layout.rebuild_marker.unlink(missing_ok=True)
            return
        _write_marker(self.layout, str(data.get("backup", "")), data["apps"])

    async def run(self) -> None:
        """Rebuild every listed app, as many at once as there are cores (like pushes)."""
        slots = asyncio.Semaphore(os.cpu_count() or 1)

        async def one(name: str) -> None:
            async with slots:
                await self._rebuild_logged(name)

        await asyncio.gather(*(one(name) for name in self.pending()))

    async def _rebuild_logged(self, name: str) -> None:
        started = time.monotonic()
        try:
            version = await self.rebuild(name)
        except CrewshipError as exc:
            logger.warning("app_rebuild_failed", app=name, error=str(exc))
            self.deployer.app_log(name).system(f"rebuild after restore failed: {exc}")
            return
        self._done(name)
        logger.info("app_rebuilt", app=name, release=version,
                    duration_ms=round((time.monotonic() - started) * 1000))

    async def rebuild(self, name: str) -> int | None:
        """Rebuild ``name``'s live build (same build dir, same commit) and start it."""
        d = self.deployer
        app = d.apps.get(name)
        live = d.live(app) if app is not None else None
        if app is None or live is None or live.artifact is None:
            return None
        build = Path(live.artifact)
        applog = d.app_log(name)
        report = LineReporter(applog.system)
        async with d.locked(app, "crewship", "rebuild after restore", report):
            if not (build / "release.json").is_file():
                number = int(build.name[1:]) if BUILD_DIR_RE.fullmatch(build.name) \
                    else live.version
                built = await d.builder.build(name, number, d.repos.path(name), live.commit,
                                              report, config_keys=set(live.config))
                if built.dir != build:
                    d.releases.set_artifact(app, live.version, str(built.dir))
                    build = built.dir
            applog.system(f"rebuilt the build of v{live.version} after a restore")
            fresh = d.apps.get(name) or app
            if fresh.scale > 0:
                make_spec = d.specs.for_release(name, live.version, build, live.config)
                await d.supervisor.deploy(name, live.version, make_spec, scale=fresh.scale,
                                          report=report)
        return live.version
