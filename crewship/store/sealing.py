"""Config values encrypted at rest: Fernet (AES-128-CBC + HMAC-SHA256) from ``cryptography``.

The key is a file of its own, ``DATA_DIR/secrets.key`` (mode 0600), made on first start
and never logged. ``state.db`` holds config values and every release's config snapshot
only as ``fernet:<token>`` strings, so a copied database file or backup without the key
reveals no value. Release config digests are an HMAC under a key derived from the same
file (a plain hash of a short value could be guessed).

Losing ``secrets.key`` loses every stored config value: back it up apart from the database.

    SealError(CrewshipError)   the key file is unusable, or a value does not open with it
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from crewship.errors import CrewshipError

PREFIX = "fernet:"
KEY_FILE = "secrets.key"


class SealError(CrewshipError):
    """The secrets key is missing, unreadable or wrong for the stored values."""


def load_key(path: Path) -> bytes:
    """The key in ``path``, made (0600, exclusively) when there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(Fernet.generate_key() + b"\n")
            out.flush()
            os.fsync(out.fileno())
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    key = path.read_bytes().strip()
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise SealError(f"{path} is not a crewship secrets key: restore it from your backup "
                        "(without it stored config values cannot be read)") from None
    return key


class Sealer:
    """Seals and opens config values and snapshots with one key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._mac_key = hashlib.sha256(b"crewship config digest\0" + base64.urlsafe_b64decode(key)
                                       ).digest()

    @classmethod
    def for_dir(cls, root: Path) -> Sealer:
        return cls(load_key(root / KEY_FILE))

    def seal(self, text: str) -> str:
        return PREFIX + self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, text: str) -> str:
        """The plain value of ``text`` (a value stored before sealing is returned as is)."""
        if not text.startswith(PREFIX):
            return text
        try:
            return self._fernet.decrypt(text[len(PREFIX):].encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise SealError("a stored config value does not open with this server's "
                            "secrets.key: restore the key that belongs to this state.db") from None

    def seal_config(self, config: dict[str, str]) -> str:
        return self.seal(json.dumps(config, sort_keys=True))

    def open_config(self, text: str) -> dict[str, str]:
        value = json.loads(self.open(text))
        return {str(k): str(v) for k, v in value.items()}

    def digest(self, config: dict[str, str]) -> str:
        """A short keyed digest of a config (equal configs, equal digests; '' when empty)."""
        if not config:
            return ""
        blob = json.dumps(config, sort_keys=True).encode()
        return hmac.new(self._mac_key, blob, hashlib.sha256).hexdigest()[:12]


def seal_existing(conn: sqlite3.Connection, sealer: Sealer) -> None:
    """Data migration: seal config rows and release snapshots stored in plain text.

    Idempotent (sealed values are skipped); release digests are recomputed with the keyed
    digest so that rollback's comparison of digests stays consistent.
    """
    rows = conn.execute("SELECT app_id, key, value FROM config WHERE value NOT LIKE ?",
                        (PREFIX + "%",)).fetchall()
    conn.executemany("UPDATE config SET value = ? WHERE app_id = ? AND key = ?",
                     [(sealer.seal(r[2]), r[0], r[1]) for r in rows])
    releases = conn.execute("SELECT id, config_json FROM releases WHERE config_json NOT LIKE ?",
                            (PREFIX + "%",)).fetchall()
    updates = []
    for release_id, text in releases:
        config = {str(k): str(v) for k, v in json.loads(text or "{}").items()}
        updates.append((sealer.seal_config(config), sealer.digest(config), release_id))
    conn.executemany("UPDATE releases SET config_json = ?, config_digest = ? WHERE id = ?",
                     updates)
