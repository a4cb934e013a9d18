"""Backups: make, list, verify and prune archives; store them off-machine through restic.

``BackupService`` is shared by the SSH commands (``backups``, ``backups:create``,
``backups:verify``, admins only), ``crewship backup`` and the daemon's schedule
(``backup_forever``: every ``CREWSHIP_BACKUP_INTERVAL``, the newest
``CREWSHIP_BACKUP_KEEP`` kept). Each archive ``backups/crewship-backup-<id>.tar`` has a
sidecar ``.json`` (size, sha256 of the whole file, apps, verification, restic snapshot).
A failed backup is recorded in ``backups/status.json`` (so the dashboard shows it) and
reported as a ``BackupFinished`` event, which raises one ``backup_failed`` alert.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from crewship import log
from crewship.config import Layout, Settings
from crewship.errors import CrewshipError, NotFoundError, PermissionDeniedError
from crewship.events import BackupFinished, EventSink, ignore
from crewship.model import User
from crewship.store import archive
from crewship.store.restic import Restic
from crewship.store.state import now

logger = log.get("crewship.service.backups")

PREFIX, SUFFIX = "crewship-backup-", ".tar"
STATUS_FILE = "status.json"
RETRY_AFTER = 3600.0  # a failed automatic backup is retried after at most this long


@dataclass(frozen=True)
class BackupInfo:
    id: str
    created_at: str
    size: int
    sha256: str
    apps: list[str]
    duration_s: float = 0.0
    trigger: str = "manual"
    verified_at: str | None = None
    verify_error: str | None = None
    restic_snapshot: str | None = None
    restic_repo: str | None = None
    places: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return asdict(self)


def restic_from(settings: Settings, layout: Layout) -> Restic | None:
    """The restic repository of the settings, or None when either restic setting is unset."""
    if not settings.backup_restic_repo or settings.backup_restic_password_file is None:
        return None
    return Restic(settings.backup_restic_repo, settings.backup_restic_password_file,
                  settings.backup_restic_options, cache_dir=layout.root / "cache" / "restic")


def to_keep(infos: list[BackupInfo], keep: int) -> list[BackupInfo]:
    """The backups beyond the newest ``keep`` (pure), oldest first."""
    newest_first = sorted(infos, key=lambda i: i.id, reverse=True)
    return sorted(newest_first[keep:], key=lambda i: i.id)


def _require_admin(caller: User) -> None:
    if not caller.is_admin:
        raise PermissionDeniedError("only an admin can manage backups")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.chmod(0o600)
    os.replace(tmp, path)


class BackupService:
    def __init__(self, settings: Settings, layout: Layout, restic: Restic | None = None,
                 on_event: EventSink = ignore, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.layout = layout
        self.restic = restic
        self.on_event = on_event
        self.clock = clock
        self._lock = threading.Lock()   # one backup at a time, whoever asks
        self._failing_since: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # events go to its thread

    def _emit(self, event: BackupFinished) -> None:
        """Hand ``event`` to the sink on the daemon's loop (backups run in a worker thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.on_event, event)
        else:
            self.on_event(event)

    # ------------------------------------------------------------------ reading
    def sidecar(self, backup_id: str) -> Path:
        return self.layout.backup_archive(backup_id).with_suffix(".json")

    def list(self) -> list[BackupInfo]:
        """Every complete archive, newest first."""
        found = []
        for path in sorted(self.layout.backups.glob(f"{PREFIX}*{SUFFIX}"), reverse=True):
            found.append(self._info(path.name[len(PREFIX):-len(SUFFIX)]))
        return found

    def _info(self, backup_id: str) -> BackupInfo:
        path = self.layout.backup_archive(backup_id)
        try:
            data = json.loads(self.sidecar(backup_id).read_text())
            info = BackupInfo(**data)
        except (OSError, ValueError, TypeError):   # no sidecar: what the archive says
            try:
                manifest = archive.read_manifest(path)
                created, apps = str(manifest.data.get("created_at", "")), manifest.apps
            except CrewshipError:
                created, apps = "", []
            info = BackupInfo(backup_id, created, path.stat().st_size, "", apps)
        places = [str(path)]
        if info.restic_snapshot:
            places.append(f"restic:{info.restic_repo} {info.restic_snapshot[:8]}")
        return replace(info, places=places)

    def get(self, backup_id: str | None) -> BackupInfo:
        infos = self.list()
        if not infos:
            raise NotFoundError("there is no backup yet: make one with 'backups:create'")
        if backup_id is None:
            return infos[0]
        matches = [i for i in infos if i.id == backup_id or i.id.startswith(backup_id)]
        if len(matches) != 1:
            raise NotFoundError(f"no backup {backup_id[:40]!r} (see 'backups')")
        return matches[0]

    def status(self) -> dict[str, Any]:
        """The last good backup and its age, and the failure since, if any."""
        infos = self.list()
        last = infos[0] if infos else None
        age = None
        if last is not None:
            made = self.layout.backup_archive(last.id).stat().st_mtime
            age = max(0.0, self.clock() - made)
        try:
            failure = json.loads((self.layout.backups / STATUS_FILE).read_text()).get("failure")
        except (OSError, ValueError):
            failure = None
        return {"last_good": last.info() if last else None, "age_seconds": age,
                "failure": failure, "interval_seconds": self.settings.backup_interval,
                "keep": self.settings.backup_keep,
                "restic": self.restic.where if self.restic else None}

    # ------------------------------------------------------------------- making
    def create_sync(self, trigger: str = "manual") -> BackupInfo:
        """Make, store and prune one backup (blocking); failures are recorded and raised."""
        started = time.monotonic()
        backup_id = archive.new_backup_id()
        try:
            with self._lock:
                info = self._create(backup_id, trigger, started)
        except (CrewshipError, OSError) as exc:
            self._failed(backup_id, trigger, started, exc)
            raise CrewshipError(f"backup failed: {exc}") from exc
        self._succeeded(info)
        return info

    def _create(self, backup_id: str, trigger: str, started: float) -> BackupInfo:
        self.layout.backups.mkdir(parents=True, exist_ok=True)
        self.layout.tmp.mkdir(parents=True, exist_ok=True)
        work = self.layout.tmp / f"backup-{backup_id}"
        work.mkdir()
        try:
            members, facts = archive.stage(self.layout, work)
            apps = sorted(facts["repos"])
            dest = self.layout.backup_archive(backup_id)
            archive.write_archive(dest, members, facts, backup_id, apps)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info = BackupInfo(backup_id, now(), dest.stat().st_size, archive.sha256_file(dest),
                          apps, round(time.monotonic() - started, 3), trigger)
        _write_json(self.sidecar(backup_id), info.info() | {"places": []})
        if self.restic is not None:
            snapshot = self.restic.store(dest)
            info = replace(info, restic_snapshot=snapshot, restic_repo=self.restic.repo)
            _write_json(self.sidecar(backup_id), info.info() | {"places": []})
        self._prune()
        return self._info(backup_id)

    def _prune(self) -> None:
        for old in to_keep(self.list(), self.settings.backup_keep):
            for path in (self.layout.backup_archive(old.id), self.sidecar(old.id)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            logger.info("backup_pruned", backup=old.id)
        if self.restic is not None:
            self.restic.forget(self.settings.backup_keep)

    def _succeeded(self, info: BackupInfo) -> None:
        self._failing_since = None
        with contextlib.suppress(FileNotFoundError):
            (self.layout.backups / STATUS_FILE).unlink()
        logger.info("backup_created", backup=info.id, size=info.size, apps=len(info.apps),
                    duration_ms=round(info.duration_s * 1000), trigger=info.trigger,
                    restic_snapshot=info.restic_snapshot)
        self._emit(BackupFinished(info.id, "succeeded", info.duration_s, info.size,
                                     trigger=info.trigger))

    def _failed(self, backup_id: str, trigger: str, started: float, exc: Exception) -> None:
        self._failing_since = self._failing_since or backup_id
        with contextlib.suppress(OSError):
            _write_json(self.layout.backups / STATUS_FILE,
                        {"failure": {"backup": backup_id, "at": now(), "error": str(exc)}})
        duration = time.monotonic() - started
        logger.warning("backup_failed", backup=backup_id, error=str(exc), trigger=trigger)
        self._emit(BackupFinished(backup_id, "failed", duration, 0, str(exc), trigger,
                                     failing_since=self._failing_since))

    def verify_sync(self, backup_id: str | None = None) -> BackupInfo:
        """Re-read an archive (default: the newest) against its checksums; records the result."""
        info = self.get(backup_id)
        path = self.layout.backup_archive(info.id)
        error: str | None = None
        try:
            if info.sha256 and archive.sha256_file(path) != info.sha256:
                raise archive.ArchiveError(f"{path.name}: the file's checksum does not match "
                                           "the one taken when it was made: it is damaged")
            archive.verify(path)
        except archive.ArchiveError as exc:
            error = str(exc)
        checked = replace(info, verified_at=None if error else now(), verify_error=error)
        if self.sidecar(info.id).exists():
            _write_json(self.sidecar(info.id), checked.info() | {"places": []})
        logger.info("backup_verified", backup=info.id, ok=error is None)
        if error:
            raise archive.ArchiveError(error)
        return checked

    # ------------------------------------------------------- the front doors' use cases
    async def create(self, caller: User | None = None, trigger: str = "manual") -> BackupInfo:
        if caller is not None:
            _require_admin(caller)
        self._loop = asyncio.get_running_loop()
        return await asyncio.to_thread(self.create_sync, trigger)

    async def verify(self, caller: User, backup_id: str | None) -> BackupInfo:
        _require_admin(caller)
        return await asyncio.to_thread(self.verify_sync, backup_id)

    def listing(self, caller: User) -> builtins.list[BackupInfo]:
        _require_admin(caller)
        return self.list()

    def next_delay(self) -> float:
        """Seconds until the next automatic backup is due (0: now)."""
        age = self.status()["age_seconds"]
        if age is None:
            return 0.0
        return max(0.0, self.settings.backup_interval - float(age))


async def backup_forever(service: BackupService, first_delay: float = 0.0) -> None:
    """The daemon's schedule: a backup whenever the last good one is an interval old."""
    await asyncio.sleep(max(first_delay, service.next_delay()))
    while True:
        try:
            await service.create(trigger="automatic")
            delay = service.settings.backup_interval
        except CrewshipError:   # recorded, logged and alerted by the service
            delay = min(service.settings.backup_interval, RETRY_AFTER)
        except Exception:   # a bug must not end the schedule
            logger.exception("backup_crashed")
            delay = min(service.settings.backup_interval, RETRY_AFTER)
        await asyncio.sleep(delay)
