"""A release built by an older crewship gets this installation's runner (builder/release.py)."""

from __future__ import annotations

from pathlib import Path

from builder.release import (
    LEGACY_RUNNER_FILE,
    RUNNER_DIR,
    ReleaseMeta,
    copy_runner,
    default_runner_source,
    refresh_runner,
    remove_tree,
    runner_argv,
    runner_files,
)


def _installed(target: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in target.glob("*.py")}


def test_an_old_runner_is_replaced_and_stays_read_only(tmp_path: Path) -> None:
    target = tmp_path / RUNNER_DIR
    old = tmp_path / "old"
    old.mkdir()
    (old / "__main__.py").write_text("# the runner of an older crewship\n")
    copy_runner(old, target)
    assert refresh_runner(target) is True
    assert _installed(target) == runner_files(default_runner_source())
    assert all(p.stat().st_mode & 0o777 == 0o444 for p in target.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUNNER_DIR, "old"]  # nothing left over
    assert refresh_runner(target) is False  # already current: untouched


def test_a_release_with_the_single_file_runner_gets_the_package(tmp_path: Path) -> None:
    (tmp_path / LEGACY_RUNNER_FILE).write_text("# the one-file runner of an older crewship\n")
    assert refresh_runner(tmp_path / RUNNER_DIR) is True
    assert _installed(tmp_path / RUNNER_DIR) == runner_files(default_runner_source())


def test_a_release_without_a_runner_is_left_alone(tmp_path: Path) -> None:
    assert refresh_runner(tmp_path / RUNNER_DIR) is False
    assert list(tmp_path.iterdir()) == []


def _image_release(tmp_path: Path) -> ReleaseMeta:
    return ReleaseMeta(app="web", version=3, commit="0" * 40, dir=tmp_path, env_key="k",
                       env_path=tmp_path / "env", python="3.11", kind="crew", package="web",
                       definition=None, entrypoint=None, created_at="", image="sha256:abc")


def test_an_image_runs_the_runner_it_was_built_with(tmp_path: Path) -> None:
    meta = _image_release(tmp_path)
    copy_runner(default_runner_source(), tmp_path / RUNNER_DIR)
    assert runner_argv(meta, "127.0.0.1", 9000, "v3.1", root="/app")[:2] == [
        "/app/.venv/bin/python", f"/app/{RUNNER_DIR}"]
    remove_tree(tmp_path / RUNNER_DIR)
    (tmp_path / LEGACY_RUNNER_FILE).write_text("# an image built by an older crewship\n")
    assert runner_argv(meta, "127.0.0.1", 9000, "v3.1", root="/app")[1] == f"/app/{LEGACY_RUNNER_FILE}"
