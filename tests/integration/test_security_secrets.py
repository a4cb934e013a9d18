"""Security suite, secrets at rest (issue 11 item 3), on real SQLite files: the migration
seals a database written before sealing, and a wrong key is a clear error."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from crewship.store.accounts import Accounts
from crewship.store.apps import AppStore
from crewship.store.migrations import MIGRATIONS
from crewship.store.releases import ConfigStore, ReleaseStore
from crewship.store.sealing import Sealer, SealError
from crewship.store.state import Database

SECRET, OTHER = "sk-live-0123456789abcdef", "hunter2-very-secret"


def old_database(path: Path) -> None:
    """A state.db as a server before sealing left it: plain values, plain snapshots."""
    before = next(i for i, step in enumerate(MIGRATIONS) if not isinstance(step, str))
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:before], start=1):
        assert isinstance(script, str)
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    conn.execute("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'ada', 1, 'x')")
    conn.execute("INSERT INTO apps (id, name, uuid, owner_id, created_at) "
                 "VALUES (1, 'demo', 'u-1', 1, 'x')")
    conn.executemany("INSERT INTO config (app_id, key, value) VALUES (1, ?, ?)",
                     [("API_KEY", SECRET), ("DB_PASSWORD", OTHER)])
    for version, config in ((1, {"API_KEY": SECRET}), (2, {"API_KEY": SECRET}),
                            (3, {"API_KEY": SECRET, "DB_PASSWORD": OTHER})):
        conn.execute("INSERT INTO releases (app_id, version, kind, commit_sha, config_json, "
                     "config_digest, created_by, created_at, status) "
                     "VALUES (1, ?, 'push', 'c', ?, 'plaindigest', 'ada', 'x', 'superseded')",
                     (version, json.dumps(config)))
    conn.commit()
    conn.close()


def raw(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal"))
                    if p.exists())


def test_the_migration_seals_existing_config_and_release_snapshots(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old_database(path)
    assert SECRET.encode() in raw(path)
    db = Database(path)
    try:
        assert SECRET.encode() not in raw(path)
        assert OTHER.encode() not in raw(path)
        assert stat.S_IMODE((tmp_path / "secrets.key").stat().st_mode) == 0o600
        app = AppStore(db).get("demo")
        assert app is not None
        assert ConfigStore(db).get(app) == {"API_KEY": SECRET, "DB_PASSWORD": OTHER}
        by_version = {r.version: r for r in ReleaseStore(db).all(app)}
        assert by_version[3].config == {"API_KEY": SECRET, "DB_PASSWORD": OTHER}
        assert by_version[1].config_digest == by_version[2].config_digest != "plaindigest"
        assert by_version[1].config_digest != by_version[3].config_digest
        stored = db.all("SELECT config_json FROM releases")
        assert all(row["config_json"].startswith("fernet:") for row in stored)
        Accounts(db).ensure_user("bob")  # the migrated database is usable as before
    finally:
        db.close()
    again = Database(path)  # nothing left to migrate; same key, same values
    try:
        app = AppStore(again).get("demo")
        assert app is not None
        assert ConfigStore(again).get(app)["API_KEY"] == SECRET
    finally:
        again.close()


def test_new_config_is_sealed_before_it_reaches_the_file(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    try:
        owner = Accounts(db).ensure_user("ada", admin=True)
        app = AppStore(db).create("demo", owner.id)
        ConfigStore(db).replace(app, {"TOKEN": SECRET})
        ReleaseStore(db).create(app, kind="config", commit="c", config={"TOKEN": SECRET},
                                created_by="ada", description="Set TOKEN")
        assert SECRET.encode() not in raw(tmp_path / "state.db")
        purged = ReleaseStore(db).purge_key(app, "TOKEN")
        assert list(purged) == [1]
        release = ReleaseStore(db).get(app, 1)
        assert release is not None
        assert (release.config, release.purged) == ({}, ("TOKEN",))
    finally:
        db.close()


def test_a_wrong_key_is_a_clear_error_not_garbage(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = Database(path)
    owner = Accounts(db).ensure_user("ada", admin=True)
    app = AppStore(db).create("demo", owner.id)
    ConfigStore(db).replace(app, {"TOKEN": SECRET})
    db.close()
    stranger = Database(path, Sealer(Fernet.generate_key()))
    try:
        with pytest.raises(SealError, match="restore the key that belongs to this"):
            ConfigStore(stranger).get(app)
    finally:
        stranger.close()
    (tmp_path / "secrets.key").write_text("not a key\n")
    with pytest.raises(SealError, match="is not a crewship secrets key"):
        Database(path)
