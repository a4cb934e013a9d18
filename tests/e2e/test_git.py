"""Git over SSH end to end: real OpenSSH client, real git, the daemon as a subprocess."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.server import CrewshipServer

pytestmark = pytest.mark.e2e

# Pushes go to a branch that is not deployed, so these tests see only the git transport.
BRANCH = "dev"

FILES = {"README.md": "# demo\n", "src/demo/main.py": "print('hello')\n",
         "pyproject.toml": "[project]\nname = 'demo'\nversion = '0.1.0'\n"}


def test_push_clone_push_fetch(server: CrewshipServer, workdir: Path) -> None:
    key = server.admin_key
    first = server.init_repo(workdir / "src", FILES, branch=BRANCH)
    push = server.git(key, "push", server.git_url("demo"), BRANCH, cwd=workdir / "src")
    assert f"{BRANCH} -> {BRANCH}" in push.stderr

    server.git(key, "clone", "-q", "-b", BRANCH, server.git_url("demo"), "clone", cwd=workdir)
    clone = workdir / "clone"
    assert server.git(None, "rev-parse", "HEAD", cwd=clone).stdout.strip() == first
    for rel, content in FILES.items():
        assert (clone / rel).read_text() == content

    second = server.commit(workdir / "src", {"src/demo/extra.py": "X = 1\n"}, "more")
    server.git(key, "push", server.git_url("demo"), BRANCH, cwd=workdir / "src")
    server.git(key, "fetch", "-q", "origin", cwd=clone)
    assert server.git(None, "rev-parse", f"origin/{BRANCH}", cwd=clone).stdout.strip() == second
    server.git(key, "merge", "-q", "--ff-only", f"origin/{BRANCH}", cwd=clone)
    assert (clone / "src/demo/extra.py").read_text() == "X = 1\n"

    served = subprocess.run(["git", "-C", str(server.repo_path("demo")), "rev-parse", BRANCH],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert served == second


def test_large_pushes_arrive_intact(server: CrewshipServer, workdir: Path) -> None:
    """Regression: the end of a big pack was lost when EOF followed it closely."""
    head = server.init_repo(workdir, {"blob.bin": os.urandom(24 * 1024 * 1024)}, branch=BRANCH)
    for app in ("big-one", "big-two", "big-three"):
        result = server.git(server.admin_key, "push", server.git_url(app), BRANCH, cwd=workdir,
                            check=False)
        assert result.returncode == 0, result.stderr
        assert server.git(None, "rev-parse", BRANCH, cwd=server.repo_path(app)).stdout.strip() == head
    server.git(None, "fsck", "--strict", cwd=server.repo_path("big-three"))


def test_push_to_unknown_app_creates_it(server: CrewshipServer, workdir: Path) -> None:
    assert server.ssh_json(server.admin_key, "apps") == []
    server.init_repo(workdir, FILES, branch=BRANCH)
    server.git(server.admin_key, "push", server.git_url("fresh-app"), BRANCH, cwd=workdir)

    apps = server.ssh_json(server.admin_key, "apps")
    assert [a["name"] for a in apps] == ["fresh-app"]
    assert str(uuid.UUID(apps[0]["uuid"])) == apps[0]["uuid"]
    assert apps[0]["owner"] == server.admin_name
    assert (server.repo_path("fresh-app") / "HEAD").is_file()
    plain = server.ssh(server.admin_key, "apps", check=True).stdout
    assert "fresh-app" in plain
    assert apps[0]["uuid"] in plain


def test_clone_of_an_empty_new_app_works(server: CrewshipServer, workdir: Path) -> None:
    server.ssh(server.admin_key, "apps:create", "empty-app", check=True)
    result = server.git(server.admin_key, "clone", server.git_url("empty-app"), "c", cwd=workdir)
    assert "empty repository" in result.stderr


def test_json_output_of_read_commands(server: CrewshipServer) -> None:
    me = server.ssh_json(server.admin_key, "whoami")
    assert me["user"] == server.admin_name
    assert me["admin"] is True
    assert me["key"].startswith("SHA256:")

    keys = server.ssh_json(server.admin_key, "keys")
    assert [(k["user"], k["fingerprint"]) for k in keys] == [(server.admin_name, me["key"])]

    created = server.ssh_json(server.admin_key, "apps:create", "json-app")
    assert created["name"] == "json-app"
    assert created["git_url"].endswith(f":{server.ssh_port}/json-app.git")
    apps = server.ssh_json(server.admin_key, "apps")
    assert [(a["name"], a["uuid"]) for a in apps] == [("json-app", created["uuid"])]


def test_each_command_logs_one_canonical_line(server: CrewshipServer, workdir: Path) -> None:
    server.ssh(server.admin_key, "whoami", check=True)
    line = server.wait_for_log("command_finished", command="whoami")
    assert line["user"] == server.admin_name
    assert line["status"] == 0
    assert isinstance(line["duration_ms"], int | float)
    assert line["duration_ms"] >= 0
    assert line["conn_id"]

    assert server.ssh(server.admin_key, "apps:destroy", "nope", "--force").returncode == 1
    failed = server.wait_for_log("command_finished", command="apps:destroy")
    assert failed["status"] == 1
    assert failed["user"] == server.admin_name

    server.init_repo(workdir, FILES, branch=BRANCH)
    server.git(server.admin_key, "push", server.git_url("logged"), BRANCH, cwd=workdir)
    pushed = server.wait_for_log("command_finished", command="git-receive-pack")
    assert pushed["status"] == 0
    assert len(server.logs("command_finished", command="whoami")) == 1
    text = server.log_text()
    assert "BEGIN OPENSSH PRIVATE KEY" not in text


def test_host_key_is_made_once_and_kept_across_restarts(server: CrewshipServer) -> None:
    key_file = server.data_dir / "host_keys" / "ssh_host_ed25519_key"
    assert key_file.is_file()
    assert key_file.stat().st_mode & 0o077 == 0
    printed = server.host_fingerprint
    assert printed == _served_fingerprint(server)
    assert server.logs("host_key_created")

    server.restart()
    assert server.host_fingerprint == printed
    assert _served_fingerprint(server) == printed
    assert len(server.logs("host_key_created")) == 1
    server.ssh(server.admin_key, "whoami", check=True)


def _served_fingerprint(server: CrewshipServer) -> str:
    scan = subprocess.run(["ssh-keyscan", "-T", "10", "-t", "ed25519", "-p",
                           str(server.ssh_port), "127.0.0.1"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", "-"], input=scan,
                            capture_output=True, text=True, timeout=30, check=True).stdout
    return listed.split()[1]


def test_other_branches_are_stored_not_deployed_and_say_so(server: CrewshipServer,
                                                           workdir: Path) -> None:
    server.init_repo(workdir, FILES, branch="feature")
    result = server.git(server.admin_key, "push", server.git_url("demo"), "feature", cwd=workdir)
    assert "Stored refs/heads/feature (not deployed: the deploy branch is main)" in result.stderr
    assert server.ssh_json(server.admin_key, "status", "demo")["release"] is None


def test_a_failed_deploy_puts_the_branch_back(server: CrewshipServer, workdir: Path) -> None:
    """A commit that is not a CrewAI project fails validation; main is not left pointing at it."""
    server.init_repo(workdir, {"README.md": "not a crew\n"})
    result = server.git(server.admin_key, "push", server.git_url("plain"), "main", cwd=workdir,
                        check=False)
    assert result.returncode != 0
    assert "missing_pyproject" in result.stderr
    refs = server.git(None, "for-each-ref", cwd=server.repo_path("plain")).stdout
    assert "refs/heads/main" not in refs
    # The same commit can be pushed again (and fails the same way, changing nothing).
    again = server.git(server.admin_key, "push", server.git_url("plain"), "main", cwd=workdir,
                       check=False)
    assert again.returncode != 0
    assert "missing_pyproject" in again.stderr
