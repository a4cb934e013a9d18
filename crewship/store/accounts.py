"""Users and their SSH keys. One key belongs to one user; fingerprints are unique."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncssh

from crewship.errors import ConflictError, InvalidInputError, NotFoundError
from crewship.model import Key, User, validate_key_name, validate_user_name
from crewship.store.state import Database, now

MAX_KEY_BYTES = 16 * 1024


def parse_public_key(text: str) -> tuple[str, str]:
    """Return (normalised OpenSSH public key line, SHA256 fingerprint)."""
    line = text.strip()
    if not line:
        raise InvalidInputError("no public key given: send an OpenSSH public key on stdin "
                                "(e.g. ssh ... keys:add laptop < ~/.ssh/id_ed25519.pub)")
    if "PRIVATE KEY" in line:
        raise InvalidInputError("that is a private key: send the .pub file instead, "
                                "and consider that key compromised")
    if len(line) > MAX_KEY_BYTES or "\n" in line:
        raise InvalidInputError("send exactly one OpenSSH public key line")
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidInputError(f"not an OpenSSH public key ({exc})") from exc
    normalised = key.export_public_key("openssh").decode().strip()
    return normalised, key.get_fingerprint("sha256")


def _user(row: sqlite3.Row) -> User:
    return User(id=row["id"], name=row["name"], is_admin=bool(row["is_admin"]))


def _key(row: sqlite3.Row) -> Key:
    return Key(id=row["id"], user=row["user_name"], name=row["name"],
               fingerprint=row["fingerprint"], public_key=row["public_key"],
               created_at=row["created_at"])


_KEY_SELECT = ("SELECT keys.*, users.name AS user_name FROM keys "
               "JOIN users ON users.id = keys.user_id")


class Accounts:
    def __init__(self, db: Database) -> None:
        self.db = db

    # users
    def user(self, name: str) -> User | None:
        row = self.db.one("SELECT * FROM users WHERE name = ?", name)
        return _user(row) if row else None

    def user_by_id(self, user_id: int) -> User | None:
        row = self.db.one("SELECT * FROM users WHERE id = ?", user_id)
        return _user(row) if row else None

    def users(self) -> list[User]:
        return [_user(r) for r in self.db.all("SELECT * FROM users ORDER BY name")]

    def ensure_user(self, name: str, *, admin: bool = False) -> User:
        validate_user_name(name)
        with self.db.tx() as c:
            c.execute("INSERT OR IGNORE INTO users (name, is_admin, created_at) VALUES (?, ?, ?)",
                      (name, int(admin), now()))
            if admin:
                c.execute("UPDATE users SET is_admin = 1 WHERE name = ?", (name,))
        user = self.user(name)
        assert user is not None
        return user

    def seen(self, user: User) -> None:
        """Record that ``user`` just came in (SSH); ``users`` shows it as last seen."""
        self.db.execute("UPDATE users SET last_seen_at = ? WHERE id = ?", now(), user.id)

    def summaries(self) -> list[dict[str, Any]]:
        """Every user with their keys, token count, apps owned and last sign of life."""
        rows = self.db.all(
            "SELECT users.*, "
            "(SELECT COUNT(*) FROM api_tokens WHERE api_tokens.user_id = users.id) AS tokens, "
            "(SELECT MAX(last_used_at) FROM api_tokens "
            " WHERE api_tokens.user_id = users.id) AS token_used_at "
            "FROM users ORDER BY name")
        keys = self.list_keys()
        owned = self.db.all("SELECT apps.name, apps.owner_id FROM apps ORDER BY apps.name")
        out = []
        for row in rows:
            seen = [t for t in (row["last_seen_at"], row["token_used_at"]) if t]
            out.append({"name": row["name"], "admin": bool(row["is_admin"]),
                        "keys": [k.name for k in keys if k.user == row["name"]],
                        "tokens": int(row["tokens"]),
                        "apps": [a["name"] for a in owned if a["owner_id"] == row["id"]],
                        "created_at": row["created_at"],
                        "last_seen_at": max(seen) if seen else None})
        return out

    def owned_apps(self, user: User) -> list[str]:
        rows = self.db.all("SELECT name FROM apps WHERE owner_id = ? ORDER BY name", user.id)
        return [r["name"] for r in rows]

    def remove_user(self, user: User, transfer_to: User | None) -> list[str]:
        """Delete ``user`` and, by cascade, their keys, API tokens, access grants and
        dashboard sessions, in one transaction; their apps go to ``transfer_to`` first.
        Returns the names of the apps transferred."""
        with self.db.tx() as c:
            apps = [r[0] for r in c.execute("SELECT name FROM apps WHERE owner_id = ? "
                                            "ORDER BY name", (user.id,))]
            if apps and transfer_to is None:
                raise ConflictError(f"{user.name} owns {', '.join(apps)}: transfer them with "
                                    f"'users:remove {user.name} --transfer-to USER' (or "
                                    "destroy them) first")
            if transfer_to is not None:
                c.execute("UPDATE apps SET owner_id = ? WHERE owner_id = ?",
                          (transfer_to.id, user.id))
                # the new owner's grants on those apps are implied by ownership now
                c.execute("DELETE FROM access WHERE user_id = ? AND app_id IN "
                          "(SELECT id FROM apps WHERE owner_id = ?)", (transfer_to.id,
                                                                      transfer_to.id))
            c.execute("DELETE FROM users WHERE id = ?", (user.id,))
        return apps

    def has_admin(self) -> bool:
        return self.db.one("SELECT 1 FROM users WHERE is_admin = 1 "
                           "AND EXISTS (SELECT 1 FROM keys WHERE keys.user_id = users.id)") is not None

    # keys
    def key_by_fingerprint(self, fingerprint: str) -> Key | None:
        row = self.db.one(f"{_KEY_SELECT} WHERE fingerprint = ?", fingerprint)
        return _key(row) if row else None

    def user_by_fingerprint(self, fingerprint: str) -> User | None:
        row = self.db.one("SELECT users.* FROM users JOIN keys ON keys.user_id = users.id "
                          "WHERE keys.fingerprint = ?", fingerprint)
        return _user(row) if row else None

    def list_keys(self, user: str | None = None) -> list[Key]:
        if user is None:
            rows = self.db.all(f"{_KEY_SELECT} ORDER BY users.name, keys.name")
        else:
            rows = self.db.all(f"{_KEY_SELECT} WHERE users.name = ? ORDER BY keys.name", user)
        return [_key(r) for r in rows]

    def add_key(self, user: User, name: str, public_key: str) -> Key:
        validate_key_name(name)
        line, fingerprint = parse_public_key(public_key)
        existing = self.key_by_fingerprint(fingerprint)
        if existing is not None:
            raise ConflictError(f"key {fingerprint} is already registered "
                                f"(as {existing.user}/{existing.name}); one key belongs to one user")
        try:
            self.db.execute("INSERT INTO keys (user_id, name, fingerprint, public_key, created_at) "
                            "VALUES (?, ?, ?, ?, ?)", user.id, name, fingerprint, line, now())
        except sqlite3.IntegrityError:
            raise ConflictError(f"{user.name} already has a key named {name!r}: "
                                "pick another name or keys:remove it first") from None
        key = self.key_by_fingerprint(fingerprint)
        assert key is not None
        return key

    def remove_key(self, user: User, name: str) -> Key:
        row = self.db.one(f"{_KEY_SELECT} WHERE users.id = ? AND keys.name = ?", user.id, name)
        if row is None:
            raise NotFoundError(f"{user.name} has no key named {name!r} (see 'keys')")
        self.db.execute("DELETE FROM keys WHERE id = ?", row["id"])
        return _key(row)
