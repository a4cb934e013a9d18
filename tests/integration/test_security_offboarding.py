"""Offboarding and dashboard sessions on a real SQLite file (issue 11 items 2 and 5):
removing a user takes everything that lets them in, in one transaction; a session lives
only as long as the token it was made from; the settings that relax the defaults."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from crewship.config import Layout, Settings, from_env
from crewship.errors import ConflictError, NotFoundError, PermissionDeniedError
from crewship.model import AccessLevel, User
from crewship.service.metrics import Metrics
from crewship.service.platform import Platform
from crewship.store.sessions import csrf_token
from crewship.store.state import Database


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    layout = Layout(tmp_path / "data")
    layout.ensure()
    db = Database(layout.state_db)
    platform = Platform(Settings(data_dir=layout.root), layout, db)
    platform.register_admin_key("root", public_key())
    yield platform
    db.close()


def public_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


def user_with_key(platform: Platform, name: str) -> User:
    admin = root(platform)
    platform.add_key(admin, "laptop", public_key(), name)
    user = platform.accounts.user(name)
    assert user is not None
    return user


def root(platform: Platform) -> User:
    user = platform.accounts.user("root")
    assert user is not None
    return user


def count(platform: Platform, table: str, user: User) -> int:
    row = platform.db.one(f"SELECT COUNT(*) AS n FROM {table} WHERE user_id = ?", user.id)
    assert row is not None
    return int(row["n"])


def test_removing_a_user_takes_keys_tokens_grants_and_sessions_together(platform: Platform) -> None:
    admin = root(platform)
    bob = user_with_key(platform, "bob")
    carol = user_with_key(platform, "carol")
    asyncio.run(platform.create_app(bob, "bobs"))
    asyncio.run(platform.create_app(admin, "shared"))
    platform.access_add(admin, "shared", "bob", AccessLevel.DEPLOY)
    platform.access_add(bob, "bobs", "carol", AccessLevel.READ)
    _, token = platform.create_api_token(bob)
    opened = platform.users.open_session(token)
    assert opened is not None
    session = opened[1]

    with pytest.raises(ConflictError, match="owns bobs: transfer them"):
        platform.users.remove(admin, "bob")
    assert platform.user_by_api_token(token) == bob        # a refusal changes nothing

    done = platform.users.remove(admin, "bob", transfer_to="carol")
    assert done == {"user": "bob", "keys": 1, "tokens": 1, "sessions": 1,
                    "apps_transferred": ["bobs"], "transfer_to": "carol"}
    assert platform.user_by_api_token(token) is None
    assert platform.users.session_user(session) is None
    assert platform.accounts.user("bob") is None
    for table in ("keys", "api_tokens", "access", "sessions"):
        assert count(platform, table, bob) == 0, table
    bobs = platform.apps_store.get("bobs")
    assert bobs is not None
    assert bobs.owner == "carol"
    assert platform.level(carol, bobs) is AccessLevel.ADMIN   # the old grant is implied now
    assert count(platform, "access", carol) == 0


def test_only_admins_offboard_and_never_the_last_admin_or_themselves(platform: Platform) -> None:
    admin = root(platform)
    dora = user_with_key(platform, "dora")
    with pytest.raises(PermissionDeniedError):
        platform.users.remove(dora, "root")
    with pytest.raises(PermissionDeniedError):
        platform.users.overview(dora)
    with pytest.raises(ConflictError, match="yourself"):
        platform.users.remove(admin, "root")
    with pytest.raises(NotFoundError, match="no user named 'nobody'"):
        platform.users.remove(admin, "nobody")
    with pytest.raises(NotFoundError):
        platform.users.remove(admin, "dora", transfer_to="nobody")
    second = platform.accounts.ensure_user("second", admin=True)  # an admin without a key
    with pytest.raises(ConflictError, match="last admin"):
        platform.users.remove(second, "root")
    assert platform.accounts.user("root") is not None


def test_admins_list_and_revoke_anyones_tokens(platform: Platform) -> None:
    admin = root(platform)
    erin = user_with_key(platform, "erin")
    record, token = platform.create_api_token(erin)
    assert [t.id for t in platform.list_api_tokens(admin, "erin")] == [record.id]
    with pytest.raises(PermissionDeniedError):
        platform.list_api_tokens(erin, "root")
    mine, _ = platform.create_api_token(admin)
    with pytest.raises(NotFoundError):
        platform.revoke_api_token(erin, mine.id)
    platform.revoke_api_token(admin, record.id)
    assert platform.user_by_api_token(token) is None
    overview = {u["name"]: u for u in platform.users.overview(admin)}
    assert overview["erin"]["tokens"] == 0
    assert overview["erin"]["keys"] == ["laptop"]


def test_a_session_lives_only_as_long_as_its_token(platform: Platform) -> None:
    fred = user_with_key(platform, "fred")
    record, token = platform.create_api_token(fred, expires_days=1)
    opened = platform.users.open_session(token)
    assert opened is not None
    user, session = opened
    assert user == fred
    assert platform.users.session_user(session) == fred
    assert platform.users.session_user(token) is None        # a token is not a session id
    stored = platform.db.one("SELECT * FROM sessions")
    assert stored is not None
    assert session not in dict(stored).values()               # only its hash is kept
    platform.db.execute("UPDATE api_tokens SET expires_at = '2000-01-01T00:00:00Z'")
    assert platform.users.session_user(session) is None
    assert platform.users.open_session(token) is None
    assert platform.users.open_session("csu_unknown") is None
    assert record.id


def test_logging_out_needs_the_sessions_csrf_token(platform: Platform) -> None:
    gina = user_with_key(platform, "gina")
    _, token = platform.create_api_token(gina)
    opened = platform.users.open_session(token)
    assert opened is not None
    session = opened[1]
    for wrong in ("", "0" * 64, csrf_token("css_another")):
        with pytest.raises(PermissionDeniedError, match="reload the page"):
            platform.users.close_session(session, wrong)
        assert platform.users.session_user(session) == gina
    platform.users.close_session(session, csrf_token(session))
    assert platform.users.session_user(session) is None


def test_settings_that_relax_the_defaults() -> None:
    defaults = from_env({})
    assert defaults.api_token_days == 90
    assert defaults.max_body == 1024 * 1024 + 4096
    assert defaults.max_kickoff_inputs == 256 * 1024
    assert defaults.metrics_token == ""
    assert defaults.trusted_proxies == ()
    relaxed = from_env({"CREWSHIP_API_TOKEN_DAYS": "0", "CREWSHIP_MAX_BODY": "5000000",
                        "CREWSHIP_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2",
                        "CREWSHIP_MAX_REQUESTS_PER_TOKEN": "64"})
    assert relaxed.api_token_days == 0
    assert relaxed.max_body == 5_000_000
    assert relaxed.trusted_proxies == ("10.0.0.1", "10.0.0.2")
    assert relaxed.max_requests_per_token == 64


def test_never_expiring_tokens_need_the_operator(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    layout.ensure()
    db = Database(layout.state_db)
    try:
        platform = Platform(Settings(data_dir=layout.root, api_token_days=0), layout, db)
        user = platform.accounts.ensure_user("hank")
        record, _ = platform.create_api_token(user)
        assert record.expires_at is None
        record, _ = platform.create_api_token(user, expires_days=3)
        assert record.expires_at is not None
    finally:
        db.close()


def test_metrics_for_a_user_leave_out_other_apps() -> None:
    metrics = Metrics()
    metrics.kickoff_finished("mine", "SUCCESS", 1.0, None)
    metrics.kickoff_finished("theirs", "FAILURE", 2.0, None)
    full = metrics.render().decode()
    assert 'app="theirs"' in full
    shown = metrics.render({"mine"}).decode()
    assert 'app="mine"' in shown
    assert "theirs" not in shown
    assert "# HELP crewship_kickoffs" in shown
