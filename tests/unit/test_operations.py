"""Pure parts of the platform's runtime use cases: config assignments, digests, tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from crewship.errors import InvalidInputError
from crewship.service.operations import parse_assignments
from crewship.store.accounts import Accounts
from crewship.store.apps import AppStore
from crewship.store.releases import ConfigStore, ReleaseStore, TokenStore
from crewship.store.sealing import Sealer
from crewship.store.state import Database


def test_assignments_keep_equals_signs_in_values() -> None:
    assert parse_assignments(["A=1", "URL=http://x/?a=b"]) == {"A": "1", "URL": "http://x/?a=b"}


def test_assignments_allow_empty_values() -> None:
    assert parse_assignments(["EMPTY="]) == {"EMPTY": ""}


@pytest.mark.parametrize("bad", ["lower=1", "1ABC=2", "NOEQUALS", "A-B=3", "A\n=1"])
def test_assignments_refuse_bad_names(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_assignments([bad])


def test_assignments_need_at_least_one() -> None:
    with pytest.raises(InvalidInputError, match="at least one"):
        parse_assignments([])


def test_config_digest_ignores_order_and_hides_values() -> None:
    sealer = Sealer(Fernet.generate_key())
    one = sealer.digest({"A": "secret-1", "B": "2"})
    assert one == sealer.digest({"B": "2", "A": "secret-1"})
    assert "secret" not in one
    assert sealer.digest({}) == ""
    assert one != sealer.digest({"A": "secret-2", "B": "2"})
    # keyed: without the server's key a digest cannot be checked against guessed values
    assert one != Sealer(Fernet.generate_key()).digest({"A": "secret-1", "B": "2"})


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "state.db")


def test_tokens_are_stored_hashed_and_rotation_revokes(db: Database) -> None:
    user = Accounts(db).ensure_user("ada", admin=True)
    app = AppStore(db).create("demo", user.id)
    tokens = TokenStore(db)
    first = tokens.rotate(app)
    assert tokens.check(app, first)
    stored = db.one("SELECT token_hash, prefix FROM app_tokens")
    assert stored is not None
    assert first not in stored["token_hash"]
    second = tokens.rotate(app)
    assert not tokens.check(app, first)
    assert tokens.check(app, second)
    assert not tokens.check(app, "")


def test_releases_number_up_and_keep_a_config_snapshot(db: Database) -> None:
    user = Accounts(db).ensure_user("ada", admin=True)
    app = AppStore(db).create("demo", user.id)
    releases = ReleaseStore(db)
    v1 = releases.create(app, kind="push", commit="a" * 40, config={"K": "1"},
                         created_by="ada", description="Deploy aaaa")
    v2 = releases.create(app, kind="config", commit="a" * 40, config={"K": "2"},
                         created_by="ada", description="Set K")
    assert (v1.version, v2.version) == (1, 2)
    releases.mark_live(app, 1)
    releases.mark_live(app, 2)
    assert releases.get(app, 1).status == "superseded"  # type: ignore[union-attr]
    assert releases.get(app, 2).config == {"K": "2"}  # type: ignore[union-attr]
    assert AppStore(db).get("demo").live_release == 2  # type: ignore[union-attr]


def test_config_store_replaces_atomically_and_validates(db: Database) -> None:
    user = Accounts(db).ensure_user("ada", admin=True)
    app = AppStore(db).create("demo", user.id)
    store = ConfigStore(db)
    store.replace(app, {"A": "1", "B": "2"})
    with pytest.raises(InvalidInputError):
        store.replace(app, {"ok": "1"})
    assert store.get(app) == {"A": "1", "B": "2"}
