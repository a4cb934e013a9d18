"""On a real SQLite file and data directory: pruning old builds and unused environments,
and user API tokens (hashed, shown once, expiring, revocable)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.env import EnvBuilder
from builder.release import ReleaseBuilder
from crewship.config import Layout, Settings
from crewship.errors import InvalidInputError, NotFoundError
from crewship.model import App
from crewship.service.deploys import Deployer
from crewship.service.platform import Platform
from crewship.store.apitokens import expiry
from crewship.store.state import Database
from crewship.tokens import hash_token


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "data")
    layout.ensure()
    return layout


@pytest.fixture
def platform(layout: Layout) -> Iterator[Platform]:
    db = Database(layout.state_db)
    yield Platform(Settings(data_dir=layout.root), layout, db)
    db.close()


def deployer(platform: Platform, layout: Layout, settings: Settings | None = None) -> Deployer:
    builder = ReleaseBuilder(layout, EnvBuilder(layout.envs, "python3", uv="uv"))
    nothing: object = None
    return Deployer(settings or platform.settings, layout, platform.apps_store,
                    platform.repos, platform.releases, platform.config_store, builder,
                    nothing)  # type: ignore[arg-type]


def make_builds(platform: Platform, layout: Layout, app: App, envs: list[str]) -> None:
    """One push release per entry of ``envs`` (its env key), the last one live."""
    for version, key in enumerate(envs, start=1):
        build = layout.release_dir(app.name, version)
        (build / "app").mkdir(parents=True)
        (build / "release.json").write_text(json.dumps({"env_key": key}))
        (build / "app" / "main.py").write_text("print('hi')\n")
        (build / "app" / "main.py").chmod(0o444)
        platform.releases.create(app, kind="push", commit=f"{version:040x}", config={},
                                 created_by="admin", description="", artifact=str(build))
        platform.releases.mark_live(app, version)


def make_envs(layout: Layout, *keys: str) -> None:
    for key in keys:
        (layout.envs / key / "bin").mkdir(parents=True)


def test_prune_keeps_five_builds_and_envs_any_app_still_uses(platform: Platform,
                                                             layout: Layout) -> None:
    owner = platform.accounts.ensure_user("admin", admin=True)
    demo = platform.apps_store.create("demo", owner.id)
    other = platform.apps_store.create("other", owner.id)
    make_builds(platform, layout, demo, ["env-a", "env-a", "env-b", "env-c", "env-c", "env-c",
                                         "env-c"])
    make_builds(platform, layout, other, ["env-a"])
    make_envs(layout, "env-a", "env-b", "env-c", "env-unused")

    pruned = asyncio.run(deployer(platform, layout)._prune(demo))

    assert pruned.builds == ["v1", "v2"]
    assert sorted(p.name for p in (layout.releases / "demo").iterdir()) == \
        ["v3", "v4", "v5", "v6", "v7"]
    assert pruned.envs == ["env-unused"]        # env-a: still used by the other app's v1
    assert pruned.envs_skipped is None
    assert sorted(p.name for p in layout.envs.iterdir()) == ["env-a", "env-b", "env-c"]
    # the history stays; the rows just point at a build that is gone
    assert len(platform.releases.all(demo)) == 7


def test_prune_leaves_a_shared_envs_directory_alone(platform: Platform, layout: Layout) -> None:
    owner = platform.accounts.ensure_user("admin", admin=True)
    demo = platform.apps_store.create("demo", owner.id)
    make_builds(platform, layout, demo, ["env-a"] * 7)
    make_envs(layout, "env-a", "env-unused")
    shared = Settings(data_dir=layout.root, envs_dir=layout.envs)

    pruned = asyncio.run(deployer(platform, layout, shared)._prune(demo))

    assert pruned.builds == ["v1", "v2"]
    assert pruned.envs == []
    assert "CREWSHIP_ENVS_DIR" in (pruned.envs_skipped or "")
    assert (layout.envs / "env-unused").is_dir()


def test_prune_leaves_envs_alone_when_a_build_cannot_be_read(platform: Platform,
                                                             layout: Layout) -> None:
    owner = platform.accounts.ensure_user("admin", admin=True)
    demo = platform.apps_store.create("demo", owner.id)
    make_builds(platform, layout, demo, ["env-a"])
    (layout.releases / "demo" / "v1" / "release.json").write_text("{broken")
    make_envs(layout, "env-a", "env-unused")

    pruned = asyncio.run(deployer(platform, layout)._prune(demo))

    assert pruned.envs == []
    assert (layout.envs / "env-unused").is_dir()


def test_api_tokens_are_shown_once_stored_hashed_and_authenticate(platform: Platform) -> None:
    alice = platform.accounts.ensure_user("alice")
    record, token = platform.create_api_token(alice)
    assert token.startswith("csu_")
    assert record.prefix == token[:12]
    assert record.expires_at is not None          # 90 days by default (CREWSHIP_API_TOKEN_DAYS)
    left = dt.datetime.fromisoformat(record.expires_at) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=89, hours=23) < left <= dt.timedelta(days=90)
    stored = platform.db.all("SELECT * FROM api_tokens")
    assert [r["hash"] for r in stored] == [hash_token(token)]
    assert token not in json.dumps([dict(r) for r in stored])

    assert platform.list_api_tokens(alice)[0].last_used_at is None
    assert platform.user_by_api_token(token) == alice
    assert platform.list_api_tokens(alice)[0].last_used_at is not None
    for wrong in ("", "csu_nope", token + "x", token[:-1], "cs_" + token[4:]):
        assert platform.user_by_api_token(wrong) is None


def test_expired_and_revoked_api_tokens_stop_working(platform: Platform) -> None:
    alice = platform.accounts.ensure_user("alice")
    bob = platform.accounts.ensure_user("bob")
    record, token = platform.create_api_token(alice, expires_days=30)
    assert record.expires_at is not None
    platform.db.execute("UPDATE api_tokens SET expires_at = '2000-01-01T00:00:00Z'")
    assert platform.user_by_api_token(token) is None
    assert platform.list_api_tokens(alice)[0].expired()

    record, token = platform.create_api_token(alice)
    with pytest.raises(NotFoundError, match="bob has no API token"):
        platform.revoke_api_token(bob, record.id)      # not yours: as if it did not exist
    assert platform.user_by_api_token(token) == alice
    platform.revoke_api_token(alice, record.id)
    assert platform.user_by_api_token(token) is None
    with pytest.raises(NotFoundError):
        platform.revoke_api_token(alice, record.id)


@pytest.mark.parametrize("days", [0, -1, 3651])
def test_expiry_days_out_of_range_are_refused(platform: Platform, days: int) -> None:
    alice = platform.accounts.ensure_user("alice")
    with pytest.raises(InvalidInputError, match="between 1 and 3650"):
        platform.create_api_token(alice, expires_days=days)
    assert platform.list_api_tokens(alice) == []


def test_expiry_is_days_from_now_in_utc() -> None:
    start = dt.datetime(2026, 1, 30, 12, 0, tzinfo=dt.UTC)
    assert expiry(2, start) == "2026-02-01T12:00:00Z"
    assert expiry(None) is None
