"""Releases, config vars and per-app API tokens in SQLite.

A release is immutable: code commit + config snapshot + artifact (a release directory
holding the source and a pointer to its environment). Config changes and rollbacks
make new releases that reuse an earlier artifact. The one exception is
``purge_key``: a leaked config key can be removed from every stored snapshot; the
release then remembers the key in ``purged`` and a rollback to it refuses.

Config values and snapshots are sealed at rest (``crewship.store.sealing``): these
stores seal on write and open on read, so callers only ever see plain dicts.
"""

from __future__ import annotations

import builtins
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from crewship.errors import InvalidInputError, NotFoundError
from crewship.model import App, validate_config_key
from crewship.store.state import Database, now
from crewship.tokens import hash_token, new_token, token_matches


@dataclass(frozen=True)
class Release:
    app_id: int
    version: int
    kind: str          # push | config | rollback | restart
    commit: str
    artifact: str | None
    config: dict[str, str]
    config_digest: str
    created_by: str
    created_at: str
    status: str        # building | live | failed | superseded
    error: str | None
    description: str
    purged: tuple[str, ...] = ()   # config keys removed by config:purge-history


VERSION_RE = re.compile(r"^v?([1-9][0-9]{0,8})$")
UNUSABLE = ("failed", "building")


def parse_version(text: str) -> int:
    """``v3`` or ``3`` -> 3."""
    found = VERSION_RE.fullmatch(text)
    if found is None:
        raise InvalidInputError(f"{text[:40]!r} is not a release: use vN, e.g. v3 "
                                "(see 'releases APP')")
    return int(found.group(1))


def rollback_target(releases: Sequence[Release], live: int | None,
                    version: int | None = None) -> Release:
    """The release a rollback returns to (pure: the artifact's presence is checked later).

    Given ``version``: that release, unless it is live or never went live. Default: the
    newest release before the live one that went live and differs from it (so a restart
    or a failed deploy in between is skipped).
    """
    by_version = {r.version: r for r in releases}
    current = by_version.get(live) if live is not None else None
    if current is None:
        raise InvalidInputError("nothing is live to roll back from: push a release first")
    if version is not None:
        target = by_version.get(version)
        if target is None:
            raise NotFoundError(f"there is no release v{version} (see 'releases')")
        if target.version == current.version:
            raise InvalidInputError(f"v{version} is already live (use 'restart' to restart it)")
        if target.status in UNUSABLE or target.artifact is None:
            raise InvalidInputError(f"v{version} never went live ({target.status}): "
                                    "pick a release that did (see 'releases')")
        return target
    for release in sorted(releases, key=lambda r: -r.version):
        if release.version >= current.version or release.status in UNUSABLE:
            continue
        if release.artifact is None:
            continue
        if (release.artifact, release.config_digest) != (current.artifact, current.config_digest):
            return release
    raise InvalidInputError(f"there is no release before v{current.version} to roll back to")


def _purged(text: str) -> tuple[str, ...]:
    return tuple(k for k in text.split(",") if k)


class ReleaseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _release(self, row: sqlite3.Row) -> Release:
        return Release(app_id=row["app_id"], version=row["version"], kind=row["kind"],
                       commit=row["commit_sha"], artifact=row["artifact"],
                       config=self.db.sealer.open_config(row["config_json"]),
                       config_digest=row["config_digest"], created_by=row["created_by"],
                       created_at=row["created_at"], status=row["status"], error=row["error"],
                       description=row["description"], purged=_purged(row["purged_keys"]))

    def create(self, app: App, *, kind: str, commit: str, config: dict[str, str],
               created_by: str, description: str, artifact: str | None = None) -> Release:
        with self.db.tx() as c:
            row = c.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app_id = ?",
                            (app.id,)).fetchone()
            version = int(row[0])
            c.execute("INSERT INTO releases (app_id, version, kind, commit_sha, artifact, "
                      "config_json, config_digest, created_by, created_at, status, description) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'building', ?)",
                      (app.id, version, kind, commit, artifact,
                       self.db.sealer.seal_config(config), self.db.sealer.digest(config),
                       created_by, now(), description))
        release = self.get(app, version)
        assert release is not None
        return release

    def get(self, app: App, version: int) -> Release | None:
        row = self.db.one("SELECT * FROM releases WHERE app_id = ? AND version = ?",
                          app.id, version)
        return self._release(row) if row else None

    def all(self, app: App) -> list[Release]:
        rows = self.db.all("SELECT * FROM releases WHERE app_id = ? ORDER BY version DESC",
                           app.id)
        return [self._release(r) for r in rows]

    def list(self, app: App, limit: int = 50) -> list[Release]:
        rows = self.db.all("SELECT * FROM releases WHERE app_id = ? ORDER BY version DESC "
                           "LIMIT ?", app.id, limit)
        return [self._release(r) for r in rows]

    def set_artifact(self, app: App, version: int, artifact: str) -> None:
        self.db.execute("UPDATE releases SET artifact = ? WHERE app_id = ? AND version = ?",
                        artifact, app.id, version)

    def mark_live(self, app: App, version: int) -> None:
        with self.db.tx() as c:
            c.execute("UPDATE releases SET status = 'superseded' WHERE app_id = ? "
                      "AND status = 'live'", (app.id,))
            c.execute("UPDATE releases SET status = 'live' WHERE app_id = ? AND version = ?",
                      (app.id, version))
            c.execute("UPDATE apps SET live_release = ? WHERE id = ?", (version, app.id))

    def mark_failed(self, app: App, version: int, error: str) -> None:
        self.db.execute("UPDATE releases SET status = 'failed', error = ? WHERE app_id = ? "
                        "AND version = ?", error[:2000], app.id, version)

    def purge_key(self, app: App, key: str) -> Sequence[int]:
        """Remove ``key`` from every stored snapshot of ``app``; the versions changed."""
        changed: set[int] = set()
        with self.db.tx() as c:
            rows = c.execute("SELECT id, version, config_json, purged_keys FROM releases "
                             "WHERE app_id = ? ORDER BY version", (app.id,)).fetchall()
            for row in rows:
                config = self.db.sealer.open_config(row["config_json"])
                if key not in config:
                    continue
                config.pop(key)
                purged = ",".join(sorted({*_purged(row["purged_keys"]), key}))
                c.execute("UPDATE releases SET config_json = ?, purged_keys = ? WHERE id = ?",
                          (self.db.sealer.seal_config(config), purged, row["id"]))
                changed.add(int(row["version"]))
        return sorted(changed)

    def fail_unfinished(self) -> builtins.list[tuple[str, int]]:
        """Releases left 'building' by a daemon that stopped mid-deploy: (app, version)."""
        with self.db.tx() as c:
            rows = c.execute("SELECT apps.name, releases.version FROM releases "
                             "JOIN apps ON apps.id = releases.app_id "
                             "WHERE releases.status = 'building'").fetchall()
            c.execute("UPDATE releases SET status = 'failed', "
                      "error = 'the server stopped during the deploy' WHERE status = 'building'")
        return [(str(r[0]), int(r[1])) for r in rows]


class ConfigStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, app: App) -> dict[str, str]:
        rows = self.db.all("SELECT key, value FROM config WHERE app_id = ? ORDER BY key", app.id)
        return {r["key"]: self.db.sealer.open(r["value"]) for r in rows}

    def replace(self, app: App, config: dict[str, str]) -> None:
        for key in config:
            validate_config_key(key)
        with self.db.tx() as c:
            c.execute("DELETE FROM config WHERE app_id = ?", (app.id,))
            c.executemany("INSERT INTO config (app_id, key, value) VALUES (?, ?, ?)",
                          [(app.id, k, self.db.sealer.seal(v)) for k, v in sorted(config.items())])


class TokenStore:
    """Per-app bearer tokens for the crew API, stored hashed; shown once when made."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def rotate(self, app: App) -> str:
        token = new_token("cs_")
        self.db.execute("INSERT INTO app_tokens (app_id, token_hash, prefix, created_at) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (app_id) DO UPDATE SET "
                        "token_hash = excluded.token_hash, prefix = excluded.prefix, "
                        "created_at = excluded.created_at",
                        app.id, hash_token(token), token[:10], now())
        return token

    def info(self, app: App) -> tuple[str, str] | None:
        """(prefix, created_at) of the app's token, if it has one."""
        row = self.db.one("SELECT prefix, created_at FROM app_tokens WHERE app_id = ?", app.id)
        return (row["prefix"], row["created_at"]) if row else None

    def check(self, app: App, token: str) -> bool:
        row = self.db.one("SELECT token_hash FROM app_tokens WHERE app_id = ?", app.id)
        return row is not None and token_matches(row["token_hash"], token)
