"""Quotas per user (apps, instances, memory) and what each user's apps take now."""

from __future__ import annotations

from dataclasses import dataclass

from crewship.store.state import Database, now

UNLIMITED = -1   # stored for "none"; NULL means "the server's default"


@dataclass(frozen=True)
class QuotaRow:
    apps: int | None
    instances: int | None
    memory: int | None
    set_by: str
    set_at: str


@dataclass(frozen=True)
class Use:
    apps: int
    instances: int          # the sum of the scales of the apps the user owns
    memory: int             # the sum of scale x memory limit over those apps
    unlimited_apps: list[str]   # owned apps that run with no memory limit


class QuotaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, user_id: int) -> QuotaRow | None:
        row = self.db.one("SELECT * FROM quotas WHERE user_id = ?", user_id)
        if row is None:
            return None
        return QuotaRow(row["apps"], row["instances"], row["memory"], row["set_by"],
                        row["set_at"])

    def set(self, user_id: int, values: dict[str, int | None], by: str) -> None:
        """Change the given fields (None: back to the default); others are kept."""
        current = self.get(user_id)
        merged = {"apps": current.apps if current else None,
                  "instances": current.instances if current else None,
                  "memory": current.memory if current else None}
        merged.update(values)
        self.db.execute(
            "INSERT INTO quotas (user_id, apps, instances, memory, set_by, set_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET apps = excluded.apps, "
            "instances = excluded.instances, memory = excluded.memory, "
            "set_by = excluded.set_by, set_at = excluded.set_at",
            user_id, merged["apps"], merged["instances"], merged["memory"], by, now())

    def use(self, user_id: int) -> Use:
        rows = self.db.all("SELECT name, scale, memory_limit FROM apps WHERE owner_id = ?",
                           user_id)
        return Use(apps=len(rows), instances=sum(int(r["scale"]) for r in rows),
                   memory=sum(int(r["scale"]) * int(r["memory_limit"] or 0) for r in rows),
                   unlimited_apps=[str(r["name"]) for r in rows
                                   if not r["memory_limit"] and int(r["scale"]) > 0])
