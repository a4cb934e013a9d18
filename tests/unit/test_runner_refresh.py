"""A release built by an older crewship gets this installation's runner (builder/release.py)."""

from __future__ import annotations

from pathlib import Path

from builder.release import RUNNER_FILE, default_runner_source, refresh_runner


def test_an_old_runner_is_replaced_atomically_and_stays_read_only(tmp_path: Path) -> None:
    target = tmp_path / RUNNER_FILE
    target.write_text("# the runner of an older crewship\n")
    target.chmod(0o444)
    assert refresh_runner(target) is True
    assert target.read_bytes() == default_runner_source().read_bytes()
    assert target.stat().st_mode & 0o777 == 0o444
    assert [p.name for p in tmp_path.iterdir()] == [RUNNER_FILE]
    assert refresh_runner(target) is False  # already current: untouched


def test_a_release_without_a_runner_file_is_left_alone(tmp_path: Path) -> None:
    assert refresh_runner(tmp_path / RUNNER_FILE) is False
    assert list(tmp_path.iterdir()) == []
