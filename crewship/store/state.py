"""SQLite state: one file, WAL, foreign keys on, numbered migrations.

Bulky things (repos, releases, environments, logs) live in files under the data
directory; this holds the small, relational facts about them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crewship import log
from crewship.errors import StorageFullError
from crewship.store.migrations import MIGRATIONS
from crewship.store.sealing import Sealer


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Database:
    """A thread-safe SQLite connection with migrations applied on open.

    ``sealer`` encrypts config values at rest; by default its key is ``secrets.key``
    beside the database file (the data dir), made on first open.
    """

    def __init__(self, path: Path, sealer: Sealer | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sealer = sealer or Sealer.for_dir(path.parent)
        if not path.exists():
            path.touch(mode=0o600)
        path.chmod(0o600)
        self._conn = sqlite3.connect(str(path), check_same_thread=False,
                                     isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit is atomic and survives a killed daemon, without an
        # fsync per commit (each would block the event loop on a busy disk).
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # No checkpoint inside a commit (it fsyncs the database file, on the caller's
        # thread: the event loop's); ``checkpoint()`` runs them from a thread instead.
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute("PRAGMA secure_delete=ON")  # freed pages are zeroed, not left
        self._migrate()

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        rewrote = False
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._lock:
                if isinstance(step, str):
                    self._conn.executescript(
                        f"BEGIN;\n{step}\nPRAGMA user_version={number};\nCOMMIT;")
                    continue
                with self.tx() as conn:
                    step(conn, self.sealer)
                    conn.execute(f"PRAGMA user_version={number}")
                rewrote = True
        if rewrote:  # no old page image with a plain value stays in the file or the WAL
            with self._lock:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.execute("VACUUM")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's "database or disk is full" as a clear error; the write was rolled back."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc):
                raise
            raise StorageFullError(
                f"the server's disk is full ({self.path.parent}): nothing was saved; "
                "free some space there and try again") from exc

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._guard():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # a failed COMMIT ended it already
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise

    def one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self._lock, self._guard():
            row: sqlite3.Row | None = self._conn.execute(sql, args).fetchone()
            return row

    def all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock, self._guard():
            return list(self._conn.execute(sql, args).fetchall())

    def execute(self, sql: str, *args: Any) -> int:
        """Run one statement in its own transaction; returns lastrowid."""
        with self._lock, self._guard():
            cur = self._conn.execute(sql, args)
            return int(cur.lastrowid or 0)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (blocking: call it from a thread). Its own
        connection, so the loop's queries never wait for it; PASSIVE blocks nobody."""
        conn = sqlite3.connect(str(self.path), timeout=30)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


async def checkpoint_forever(db: Database, interval: float = 10.0) -> None:
    """The daemon's WAL checkpoints, off the event loop, every ``interval`` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(db.checkpoint)
        except sqlite3.Error as exc:  # a full disk: the WAL keeps the data meanwhile
            log.get("crewship.store.state").warning("checkpoint_failed", error=str(exc))
