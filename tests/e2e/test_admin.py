"""Bootstrapping admins: CREWSHIP_ADMIN_KEYS, `crewship admin bootstrap` (make run), add-key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.support.server import REPO_ROOT, make_key

pytestmark = pytest.mark.e2e


def crewship(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crewship.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_admin_keys_from_the_environment_are_admins(server_factory: ServerFactory,
                                                    tmp_path: Path) -> None:
    ops = make_key(tmp_path / "ops")
    srv = server_factory(env={"CREWSHIP_ADMIN_KEYS": str(ops.with_name("ops.pub"))})
    who = srv.ssh_json(ops, "whoami")
    assert who["admin"] is True
    # Starting again with the same variable changes nothing and does not fail.
    srv.restart()
    assert srv.ssh_json(ops, "whoami")["admin"] is True


def test_bootstrap_registers_the_operators_key_once(tmp_path: Path) -> None:
    ssh_dir = tmp_path / "home" / ".ssh"
    make_key(ssh_dir / "id_ed25519")
    data = tmp_path / "data"
    first = crewship("admin", "bootstrap", "--data-dir", str(data), "--ssh-dir", str(ssh_dir))
    assert first.returncode == 0, first.stderr
    assert "registered" in first.stdout
    assert "git remote add crewship ssh://git@127.0.0.1:2222/APP.git" in first.stdout
    again = crewship("admin", "bootstrap", "--data-dir", str(data), "--ssh-dir", str(ssh_dir))
    assert again.returncode == 0
    assert "admin already registered" in again.stdout


def test_bootstrap_without_a_key_says_how_and_still_lets_the_server_start(tmp_path: Path) -> None:
    result = crewship("admin", "bootstrap", "--data-dir", str(tmp_path / "data"),
                      "--ssh-dir", str(tmp_path / "empty"))
    assert result.returncode == 0
    assert "ssh-keygen -t ed25519" in result.stderr


def test_add_key_refuses_a_missing_file_with_one_line(tmp_path: Path) -> None:
    result = crewship("admin", "add-key", "ops", str(tmp_path / "nope.pub"),
                      "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "no such file" in result.stderr


def test_add_key_refuses_a_private_key(tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    result = crewship("admin", "add-key", "ops", str(key), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert "private key" in result.stderr
