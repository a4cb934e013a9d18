"""SQLite state on a real file: migrations, pragmas, cascades, and the account/app stores."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from crewship.errors import ConflictError, InvalidInputError, NotFoundError
from crewship.model import AccessLevel
from crewship.store.accounts import Accounts, parse_public_key
from crewship.store.apps import AppStore
from crewship.store.migrations import MIGRATIONS
from crewship.store.state import Database

APP_TABLES = ("access", "pushes", "releases", "config", "app_tokens", "kickoffs")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "state.db")
    yield database
    database.close()


def public_key() -> str:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="test")
    return key.export_public_key().decode()


def test_migrations_are_applied_and_recorded(db: Database) -> None:
    assert db.schema_version == len(MIGRATIONS)
    tables = {r["name"] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "keys", "apps", *APP_TABLES} <= tables


def test_reopening_does_not_reapply_migrations(tmp_path: Path) -> None:
    first = Database(tmp_path / "state.db")
    Accounts(first).ensure_user("alice")
    first.close()
    again = Database(tmp_path / "state.db")
    try:
        assert again.schema_version == len(MIGRATIONS)
        assert Accounts(again).user("alice") is not None
    finally:
        again.close()


def test_wal_mode_and_foreign_keys_are_on(db: Database) -> None:
    assert db.one("PRAGMA journal_mode")[0] == "wal"  # type: ignore[index]
    assert db.one("PRAGMA foreign_keys")[0] == 1  # type: ignore[index]


def test_state_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    database = Database(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        database.close()
    path.chmod(0o644)
    Database(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_every_reference_to_an_app_cascades(db: Database) -> None:
    """A table added later that points at apps must also go when its app goes."""
    tables = [r["name"] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'table'")]
    referencing = {}
    for table in tables:
        for fk in db.all(f"PRAGMA foreign_key_list({table})"):
            if fk["table"] == "apps":
                referencing[table] = fk["on_delete"]
    assert set(APP_TABLES) <= set(referencing)
    assert set(referencing.values()) == {"CASCADE"}, referencing


def test_deleting_an_app_cascades(db: Database) -> None:
    accounts, apps = Accounts(db), AppStore(db)
    owner, other = accounts.ensure_user("olive"), accounts.ensure_user("otto")
    app = apps.create("demo", owner.id)
    keep = apps.create("keep", owner.id)
    for target in (app, keep):
        apps.set_grant(target, other.id, AccessLevel.READ)
        apps.record_push(target, "olive", "refs/heads/main", "0" * 40, "1" * 40)
        db.execute("INSERT INTO config (app_id, key, value) VALUES (?, 'K', 'v')", target.id)

    apps.delete(app)
    for table in ("access", "pushes", "config"):
        assert db.all(f"SELECT * FROM {table} WHERE app_id = ?", app.id) == [], table
        assert len(db.all(f"SELECT * FROM {table} WHERE app_id = ?", keep.id)) == 1, table
    assert apps.get("demo") is None
    assert accounts.user("otto") is not None


def test_deleting_a_user_cascades_keys_and_grants_and_orphans_apps(db: Database) -> None:
    accounts, apps = Accounts(db), AppStore(db)
    olive, otto = accounts.ensure_user("olive"), accounts.ensure_user("otto")
    accounts.add_key(otto, "laptop", public_key())
    app = apps.create("demo", olive.id)
    apps.set_grant(app, otto.id, AccessLevel.DEPLOY)
    db.execute("DELETE FROM users WHERE id = ?", otto.id)
    assert accounts.list_keys("otto") == []
    assert apps.grants(app) == []
    db.execute("DELETE FROM users WHERE id = ?", olive.id)
    still = apps.get("demo")
    assert still is not None
    assert still.owner is None


def test_failed_transaction_changes_nothing(db: Database) -> None:
    accounts = Accounts(db)
    def insert_then_fail() -> None:
        with db.tx() as c:
            c.execute("INSERT INTO users (name, created_at) VALUES ('ghost', 'now')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        insert_then_fail()
    assert accounts.user("ghost") is None


# ----------------------------------------------------------------- accounts
def test_ensure_user_is_idempotent_and_promotes(db: Database) -> None:
    accounts = Accounts(db)
    first = accounts.ensure_user("bob")
    assert not first.is_admin
    assert accounts.ensure_user("bob") == first
    promoted = accounts.ensure_user("bob", admin=True)
    assert promoted.is_admin
    assert promoted.id == first.id
    assert [u.name for u in accounts.users()] == ["bob"]
    with pytest.raises(InvalidInputError):
        accounts.ensure_user("Bob")


def test_keys_belong_to_one_user(db: Database) -> None:
    accounts = Accounts(db)
    bob, eve = accounts.ensure_user("bob"), accounts.ensure_user("eve")
    text = public_key()
    key = accounts.add_key(bob, "laptop", text)
    assert key.fingerprint == parse_public_key(text)[1]
    assert accounts.user_by_fingerprint(key.fingerprint) == bob
    with pytest.raises(ConflictError, match="already registered"):
        accounts.add_key(eve, "stolen", text)
    with pytest.raises(ConflictError, match="already has a key named 'laptop'"):
        accounts.add_key(bob, "laptop", public_key())
    assert [k.name for k in accounts.list_keys()] == ["laptop"]
    accounts.remove_key(bob, "laptop")
    assert accounts.user_by_fingerprint(key.fingerprint) is None
    with pytest.raises(NotFoundError):
        accounts.remove_key(bob, "laptop")


def test_has_admin_needs_an_admin_with_a_key(db: Database) -> None:
    accounts = Accounts(db)
    assert not accounts.has_admin()
    admin = accounts.ensure_user("root", admin=True)
    assert not accounts.has_admin()
    accounts.add_key(admin, "main", public_key())
    assert accounts.has_admin()


@pytest.mark.parametrize(("text", "message"), [
    ("", "no public key given"),
    ("ssh-ed25519 AAAAnot-a-key", "not an OpenSSH public key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----", "private key"),
    ("ssh-ed25519 AAAA\nssh-ed25519 BBBB", "exactly one"),
])
def test_parse_public_key_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_public_key(text)


def test_parse_public_key_normalises() -> None:
    text = public_key()
    line, fingerprint = parse_public_key(f"  {text.strip()}  \n")
    assert line.split()[:2] == text.split()[:2]
    assert fingerprint.startswith("SHA256:")


# --------------------------------------------------------------------- apps
def test_app_store(db: Database) -> None:
    accounts, apps = Accounts(db), AppStore(db)
    olive, otto = accounts.ensure_user("olive"), accounts.ensure_user("otto")
    app = apps.create("demo", olive.id)
    other = apps.create("other", olive.id)
    assert app.owner == "olive"
    assert len(app.uuid) == 36
    assert app.uuid != other.uuid
    assert apps.by_uuid(app.uuid) == app
    with pytest.raises(ConflictError, match="already exists"):
        apps.create("demo", otto.id)
    assert [a.name for a in apps.all()] == ["demo", "other"]

    assert apps.grant(app, otto.id) is None
    assert apps.apps_for(otto.id) == []
    apps.set_grant(app, otto.id, AccessLevel.READ)
    apps.set_grant(app, otto.id, AccessLevel.DEPLOY)
    assert apps.grant(app, otto.id) is AccessLevel.DEPLOY
    assert apps.grants(app) == [("otto", AccessLevel.DEPLOY)]
    assert [a.name for a in apps.apps_for(otto.id)] == ["demo"]
    assert [a.name for a in apps.apps_for(olive.id)] == ["demo", "other"]
    assert apps.remove_grant(app, otto.id) is True
    assert apps.remove_grant(app, otto.id) is False
    assert apps.apps_for(otto.id) == []


def test_app_fields_and_pushes(db: Database) -> None:
    apps = AppStore(db)
    owner = Accounts(db).ensure_user("olive")
    app = apps.create("demo", owner.id)
    apps.set_deploy_branch(app, "refs/heads/main")
    apps.set_live_release(app, 3)
    apps.set_scale(app, 2)
    fresh = apps.get("demo")
    assert fresh is not None
    assert (fresh.deploy_branch, fresh.live_release, fresh.scale) == ("refs/heads/main", 3, 2)
    push = apps.record_push(app, "olive", "refs/heads/main", "0" * 40, "a" * 40)
    apps.set_push_outcome(push, "deployed")
    assert [(r["ref"], r["outcome"]) for r in apps.pushes(app)] == [("refs/heads/main", "deployed")]


def test_a_full_disk_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    """SQLite's SQLITE_FULL (here: max_page_count reached) is a 503 saying what to do."""
    from crewship.errors import StorageFullError

    db = Database(tmp_path / "state.db")
    apps = AppStore(db)
    db.execute("INSERT INTO users (name, is_admin, created_at) VALUES ('ann', 1, 'now')")
    owner = db.one("SELECT id FROM users WHERE name = 'ann'")
    assert owner is not None
    apps.create("kept", int(owner["id"]))
    pages = db.one("PRAGMA page_count")
    assert pages is not None
    db.execute(f"PRAGMA max_page_count = {int(pages[0])}")
    def fill() -> None:
        with db.tx() as conn:
            for i in range(2000):
                conn.execute("INSERT INTO pushes (app_id, user_name, ref, old_sha, new_sha, "
                             "created_at) VALUES (1, 'ann', 'refs/heads/main', ?, ?, 'now')",
                             ("0" * 40, f"{i:040d}" + "x" * 500))

    with pytest.raises(StorageFullError, match=r"disk is full .* free some space"):
        fill()
    assert db.all("SELECT * FROM pushes") == []
    assert [a.name for a in apps.all()] == ["kept"]
    assert db.one("PRAGMA integrity_check")[0] == "ok"  # type: ignore[index]
    db.execute(f"PRAGMA max_page_count = {2**30}")      # space is back
    apps.create("after", int(owner["id"]))
    assert [a.name for a in apps.all()] == ["after", "kept"]


def test_commits_never_checkpoint_and_checkpoint_copies_the_wal(tmp_path: Path) -> None:
    """A commit on the event loop only appends to the WAL (no fsync of state.db inside it);
    the daemon's ``checkpoint()`` thread moves the WAL into the database file."""
    db = Database(tmp_path / "state.db")
    db.execute("INSERT INTO users (name, is_admin, created_at) VALUES ('ann', 1, 'now')")
    for i in range(3000):  # well past SQLite's default autocheckpoint of 1000 pages
        db.execute("UPDATE users SET created_at = ? WHERE name = 'ann'", "x" * 2000 + str(i))
    wal = tmp_path / "state.db-wal"
    assert wal.stat().st_size > 1000 * 4096  # nothing checkpointed it on the way
    db.checkpoint()
    row = db.one("PRAGMA wal_checkpoint(PASSIVE)")
    assert row is not None
    assert row[1] == row[2]  # every frame of the WAL is in the database file
    db.close()
