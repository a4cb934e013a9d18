"""Pure backup rules: durations in settings, which archives are kept, the dashboard card,
the SSH listing's sizes, and restic snapshot ids."""

from __future__ import annotations

import pytest

from crewship.api.dashboard_html import backups_card
from crewship.config import from_env, parse_duration
from crewship.errors import InvalidInputError
from crewship.model import human_bytes as size
from crewship.service.backups import BackupInfo, to_keep
from crewship.store.archive import new_backup_id
from crewship.store.restic import is_snapshot_id


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("24h", 86400.0), ("7d", 604800.0),
    (" 1.5H ", 5400.0)])
def test_durations_take_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("var", "value"), [
    ("CREWSHIP_BACKUP_INTERVAL", "0"), ("CREWSHIP_BACKUP_INTERVAL", "soon"),
    ("CREWSHIP_BACKUP_INTERVAL", "-5m"), ("CREWSHIP_BACKUP_KEEP", "0"),
    ("CREWSHIP_BACKUP_KEEP", "many"), ("CREWSHIP_BACKUP_RESTIC_OPTIONS", "sftp.command='ssh")])
def test_bad_backup_settings_are_one_clear_error(var: str, value: str) -> None:
    with pytest.raises(InvalidInputError, match=var):
        from_env({var: value})


def test_backup_settings_defaults_and_values() -> None:
    assert (from_env({}).backup_interval, from_env({}).backup_keep) == (86400.0, 7)
    settings = from_env({"CREWSHIP_BACKUP_INTERVAL": "6h", "CREWSHIP_BACKUP_KEEP": "3",
                         "CREWSHIP_BACKUP_RESTIC_OPTIONS": "sftp.command='ssh -p 2200 h -s sftp'"})
    assert (settings.backup_interval, settings.backup_keep) == (21600.0, 3)
    assert settings.backup_restic_options == ("sftp.command=ssh -p 2200 h -s sftp",)


def info(backup_id: str) -> BackupInfo:
    return BackupInfo(backup_id, "2026-12-01T00:00:00Z", 1, "", [])


def test_the_newest_backups_are_kept_and_the_rest_go_oldest_first() -> None:
    ids = [new_backup_id() for _ in range(5)]
    assert ids == sorted(ids)
    assert [i.id for i in to_keep([info(x) for x in reversed(ids)], 2)] == ids[:3]
    assert to_keep([info(x) for x in ids], 7) == []


def test_the_dashboard_card_shows_the_age_of_the_last_good_backup_and_a_failure() -> None:
    status = {"last_good": {"id": "20261201T000000.000000Z", "apps": ["a", "b"]},
              "age_seconds": 7500.0, "interval_seconds": 86400.0, "keep": 7,
              "restic": "restic:sftp:u@h:/r",
              "failure": {"at": "2026-12-01T02:00:00Z", "error": "<b>disk full</b>"}}
    card = backups_card(status)
    assert "last good backup 2h 05m ago" in card
    assert "2 apps" in card
    assert "&lt;b&gt;disk full&lt;/b&gt;" in card
    assert "<b>disk" not in card
    assert "s-failed" in card
    assert "every 24h 00m, 7 kept, copied to restic:sftp:u@h:/r" in card
    fresh = backups_card({**status, "failure": None, "last_good": None, "age_seconds": None})
    assert "no backup yet" in fresh
    assert backups_card(None) == ""


def test_sizes_and_snapshot_ids() -> None:
    assert [size(n) for n in (512, 2048, 5 * 1024 * 1024, 3 * 1024 ** 3)] == \
        ["512 B", "2.0 KB", "5.0 MB", "3.0 GB"]
    assert is_snapshot_id("4cf75749")
    assert is_snapshot_id("4cf7574969f7a73c1878bf32412752f93ec0a9646d94c3faaec3b236d0b65292")
    assert not is_snapshot_id("../etc/passwd")
    assert not is_snapshot_id("4cf7")
