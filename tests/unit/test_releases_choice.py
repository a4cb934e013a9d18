"""Pure release rules: parsing vN, choosing a rollback target, which builds to keep."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from crewship.errors import InvalidInputError, NotFoundError
from crewship.service.retention import builds_to_keep, builds_to_prune
from crewship.store.releases import Release, parse_version, rollback_target
from crewship.store.sealing import Sealer

SEALER = Sealer(Fernet.generate_key())


def rel(version: int, kind: str = "push", *, build: int | None = None,
        config: dict[str, str] | None = None, status: str = "superseded") -> Release:
    """A release; pushes own build ``v<version>``, others point at ``build``."""
    built = version if kind == "push" and build is None else build
    cfg = config or {}
    return Release(app_id=1, version=version, kind=kind, commit=f"{version:040x}",
                   artifact=f"/data/releases/demo/v{built}" if built else None,
                   config=cfg, config_digest=SEALER.digest(cfg), created_by="admin",
                   created_at="2026-01-01T00:00:00Z", status=status, error=None,
                   description="")


@pytest.mark.parametrize(("text", "number"), [("v3", 3), ("3", 3), ("v120", 120)])
def test_parse_version_accepts_vn_and_n(text: str, number: int) -> None:
    assert parse_version(text) == number


@pytest.mark.parametrize("text", ["", "v", "v0", "x3", "v-1", "v3.1", "v 3", "v1234567890"])
def test_parse_version_rejects_anything_else(text: str) -> None:
    with pytest.raises(InvalidInputError, match="use vN"):
        parse_version(text)


def test_default_target_is_the_release_before_the_live_one() -> None:
    history = [rel(1), rel(2), rel(3, status="live")]
    assert rollback_target(history, 3).version == 2


def test_default_target_skips_failed_and_unfinished_releases() -> None:
    history = [rel(1), rel(2, status="failed"), rel(3, status="building"), rel(4, status="live")]
    assert rollback_target(history, 4).version == 1


def test_default_target_skips_releases_identical_to_the_live_one() -> None:
    # v3 restarted v2 (same build and config): rolling back from v3 means going to v1.
    history = [rel(1), rel(2), rel(3, "restart", build=2, status="live")]
    assert rollback_target(history, 3).version == 1


def test_default_target_after_a_rollback_is_the_release_rolled_away_from() -> None:
    history = [rel(1), rel(2), rel(3, "rollback", build=1, status="live")]
    assert rollback_target(history, 3).version == 2


def test_a_config_release_on_the_same_build_is_a_valid_target() -> None:
    history = [rel(1), rel(2, "config", build=1, config={"A": "1"}),
               rel(3, "config", build=1, config={"A": "2"}, status="live")]
    target = rollback_target(history, 3)
    assert target.version == 2
    assert target.config == {"A": "1"}


def test_explicit_target_is_returned_as_is() -> None:
    history = [rel(1), rel(2), rel(3, status="live")]
    assert rollback_target(history, 3, 1).version == 1


@pytest.mark.parametrize(("version", "error", "message"), [
    (9, NotFoundError, "no release v9"),
    (3, InvalidInputError, "already live"),
    (2, InvalidInputError, "never went live"),
])
def test_explicit_target_refusals(version: int, error: type[Exception], message: str) -> None:
    history = [rel(1), rel(2, status="failed"), rel(3, status="live")]
    with pytest.raises(error, match=message):
        rollback_target(history, 3, version)


def test_no_target_without_a_live_release_or_an_earlier_one() -> None:
    with pytest.raises(InvalidInputError, match="nothing is live"):
        rollback_target([rel(1, status="failed")], None)
    with pytest.raises(InvalidInputError, match="no release before v1"):
        rollback_target([rel(1, status="live")], 1)


def test_keeps_the_newest_five_builds() -> None:
    history = [rel(v) for v in range(1, 9)] + [rel(9, status="live")]
    assert builds_to_keep(history, 9) == {"v5", "v6", "v7", "v8", "v9"}
    on_disk = [f"v{v}" for v in range(1, 10)]
    assert builds_to_prune(history, 9, on_disk) == ["v1", "v2", "v3", "v4"]


def test_keeps_a_build_the_live_release_uses_however_old() -> None:
    history = [rel(v) for v in range(1, 8)] + [rel(8, "rollback", build=1, status="live")]
    kept = builds_to_keep(history, 8)
    assert "v1" in kept
    assert builds_to_prune(history, 8, [f"v{v}" for v in range(1, 8)]) == ["v2", "v3"]


def test_config_releases_keep_their_build_and_do_not_use_up_the_five() -> None:
    # Six config changes on v1's build, then pushes: v1's build is still among the 5 newest.
    history = [rel(1)] + [rel(v, "config", build=1, config={"N": str(v)}) for v in range(2, 8)]
    history += [rel(8), rel(9, status="live")]
    assert builds_to_keep(history, 9) == {"v1", "v8", "v9"}


def test_failed_builds_do_not_push_good_ones_out() -> None:
    history = [rel(1), rel(2, status="live")]
    history += [rel(v, status="failed") for v in range(3, 9)]
    kept = builds_to_keep(history, 2)
    assert {"v1", "v2"} <= kept
    # failed builds of the last 5 releases are kept; older failed ones go
    assert builds_to_prune(history, 2, [f"v{v}" for v in range(1, 9)]) == ["v3"]


def test_never_prunes_a_build_newer_than_every_release_or_unknown_names() -> None:
    history = [rel(v) for v in range(1, 7)] + [rel(7, status="live")]
    on_disk = ["v1", "v8", "notes", "v2.tmp"]
    assert builds_to_prune(history, 7, on_disk) == ["v1"]
