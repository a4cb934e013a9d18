"""Apps (each with a UUID) and who may use them."""

from __future__ import annotations

import json
import sqlite3
import uuid

from crewship.errors import ConflictError, NotFoundError
from crewship.model import AccessLevel, App
from crewship.store.state import Database, now

# Sandboxed crews run as uid = gid = SANDBOX_UID_BASE + n, one n per app (runtime/sandbox.py).
SANDBOX_UID_BASE = 200_000
_APP_SELECT = ("SELECT apps.*, users.name AS owner_name FROM apps "
               "LEFT JOIN users ON users.id = apps.owner_id")


def _app(row: sqlite3.Row) -> App:
    return App(id=row["id"], name=row["name"], uuid=row["uuid"], owner=row["owner_name"],
               created_at=row["created_at"], deploy_branch=row["deploy_branch"],
               scale=row["scale"], live_release=row["live_release"],
               memory_limit=row["memory_limit"], cpu_limit=row["cpu_limit"],
               crashed_at=row["crashed_at"],
               placement=tuple(json.loads(row["placement_json"] or "[]")))


class AppStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, name: str) -> App | None:
        row = self.db.one(f"{_APP_SELECT} WHERE apps.name = ?", name)
        return _app(row) if row else None

    def by_uuid(self, app_uuid: str) -> App | None:
        row = self.db.one(f"{_APP_SELECT} WHERE apps.uuid = ?", app_uuid)
        return _app(row) if row else None

    def all(self) -> list[App]:
        return [_app(r) for r in self.db.all(f"{_APP_SELECT} ORDER BY apps.name")]

    def create(self, name: str, owner_id: int) -> App:
        try:
            self.db.execute("INSERT INTO apps (name, uuid, owner_id, created_at) VALUES (?, ?, ?, ?)",
                            name, str(uuid.uuid4()), owner_id, now())
        except sqlite3.IntegrityError:
            raise ConflictError(f"app {name!r} already exists") from None
        app = self.get(name)
        assert app is not None
        return app

    def delete(self, app: App) -> None:
        self.db.execute("DELETE FROM apps WHERE id = ?", app.id)

    def set_deploy_branch(self, app: App, branch: str) -> None:
        self.db.execute("UPDATE apps SET deploy_branch = ? WHERE id = ?", branch, app.id)

    def set_live_release(self, app: App, version: int | None) -> None:
        self.db.execute("UPDATE apps SET live_release = ? WHERE id = ?", version, app.id)

    def set_scale(self, app: App, scale: int) -> None:
        self.db.execute("UPDATE apps SET scale = ? WHERE id = ?", scale, app.id)

    def set_crashed(self, name: str, crashed: bool) -> None:
        """Remember a crash loop (or its end: a push, restart or scale) across restarts."""
        self.db.execute("UPDATE apps SET crashed_at = ? WHERE name = ?",
                        now() if crashed else None, name)

    def set_limits(self, app: App, memory: int | None, cpus: float | None) -> None:
        self.db.execute("UPDATE apps SET memory_limit = ?, cpu_limit = ? WHERE id = ?",
                        memory, cpus, app.id)

    def set_placement(self, app: App, constraints: tuple[str, ...]) -> None:
        """Swarm placement constraints (``node.labels.pool==crews``); empty clears them."""
        self.db.execute("UPDATE apps SET placement_json = ? WHERE id = ?",
                        json.dumps(list(constraints)) if constraints else None, app.id)

    def sandbox_uid(self, app: App) -> int:
        """The app's own uid/gid for its sandboxed crews, allocated on first use.

        One statement, so two allocations cannot pick the same number; the unique
        index would refuse it anyway.
        """
        self.db.execute(
            "UPDATE apps SET sandbox_uid = (SELECT COALESCE(MAX(sandbox_uid), ?) + 1 FROM apps) "
            "WHERE id = ? AND sandbox_uid IS NULL", SANDBOX_UID_BASE, app.id)
        row = self.db.one("SELECT sandbox_uid FROM apps WHERE id = ?", app.id)
        if row is None or row["sandbox_uid"] is None:
            raise NotFoundError(f"app {app.name!r} is gone")
        return int(row["sandbox_uid"])

    # access
    def grant(self, app: App, user_id: int) -> AccessLevel | None:
        row = self.db.one("SELECT level FROM access WHERE app_id = ? AND user_id = ?",
                          app.id, user_id)
        return AccessLevel(row["level"]) if row else None

    def grants(self, app: App) -> list[tuple[str, AccessLevel]]:
        rows = self.db.all("SELECT users.name, access.level FROM access JOIN users "
                           "ON users.id = access.user_id WHERE app_id = ? ORDER BY users.name",
                           app.id)
        return [(r["name"], AccessLevel(r["level"])) for r in rows]

    def set_grant(self, app: App, user_id: int, level: AccessLevel) -> None:
        self.db.execute("INSERT INTO access (app_id, user_id, level) VALUES (?, ?, ?) "
                        "ON CONFLICT (app_id, user_id) DO UPDATE SET level = excluded.level",
                        app.id, user_id, int(level))

    def remove_grant(self, app: App, user_id: int) -> bool:
        before = self.grant(app, user_id)
        self.db.execute("DELETE FROM access WHERE app_id = ? AND user_id = ?", app.id, user_id)
        return before is not None

    def apps_for(self, user_id: int) -> list[App]:
        rows = self.db.all(f"{_APP_SELECT} WHERE apps.owner_id = ? OR apps.id IN "
                           "(SELECT app_id FROM access WHERE user_id = ?) ORDER BY apps.name",
                           user_id, user_id)
        return [_app(r) for r in rows]

    # pushes
    def record_push(self, app: App, user: str, ref: str, old: str, new: str,
                    outcome: str | None = None) -> int:
        return self.db.execute(
            "INSERT INTO pushes (app_id, user_name, ref, old_sha, new_sha, outcome, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", app.id, user, ref, old, new, outcome, now())

    def set_push_outcome(self, push_id: int, outcome: str) -> None:
        self.db.execute("UPDATE pushes SET outcome = ? WHERE id = ?", outcome, push_id)

    def unfinished_pushes(self) -> list[sqlite3.Row]:
        """Pushes a daemon accepted but never finished (killed mid-deploy), oldest first."""
        return self.db.all("SELECT pushes.*, apps.name AS app_name FROM pushes "
                           "JOIN apps ON apps.id = pushes.app_id "
                           "WHERE pushes.outcome IS NULL ORDER BY pushes.id")

    def pushes(self, app: App) -> list[sqlite3.Row]:
        return self.db.all("SELECT * FROM pushes WHERE app_id = ? ORDER BY id", app.id)
