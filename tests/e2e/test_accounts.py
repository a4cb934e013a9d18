"""Accounts, keys, apps and access over SSH, end to end with the real OpenSSH client."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.server import CrewshipServer, key_fingerprint

pytestmark = pytest.mark.e2e

BRANCH = "dev"  # not a deploy branch: these tests exercise access, not builds


def pub(key: Path) -> str:
    return key.with_name(key.name + ".pub").read_text()


def error_line(result: object) -> str:
    """The one ``error: ...`` line a refused command prints (asserting it is one line)."""
    stderr = result.stderr  # type: ignore[attr-defined]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert result.returncode == 1  # type: ignore[attr-defined]
    return str(lines[0])


def test_whoami_and_keys(server: CrewshipServer) -> None:
    assert server.ssh(server.admin_key, "whoami", check=True).stdout.strip() == "admin (admin)"
    listing = server.ssh(server.admin_key, "keys", check=True).stdout
    assert key_fingerprint(server.admin_key) in listing
    assert listing.splitlines()[0].split() == ["USER", "NAME", "FINGERPRINT", "ADDED"]


def test_admin_adds_a_key_for_a_new_user(server: CrewshipServer) -> None:
    bob_key = server.make_key("bob")
    done = server.ssh(server.admin_key, "keys:add", "laptop", "--user", "bob",
                      input=pub(bob_key), check=True)
    assert "for bob" in done.stdout
    assert server.ssh(bob_key, "whoami", check=True).stdout.strip() == "bob"
    keys = server.ssh_json(bob_key, "keys")
    assert [(k["user"], k["name"], k["fingerprint"]) for k in keys] == [
        ("bob", "laptop", key_fingerprint(bob_key))]
    everyone = server.ssh_json(server.admin_key, "keys", "--all")
    assert {k["user"] for k in everyone} == {"admin", "bob"}


def test_user_adds_and_removes_their_own_key(server: CrewshipServer) -> None:
    bob = server.add_user("bob")
    second = server.make_key("bob-desktop")
    server.ssh(bob, "keys:add", "desktop", input=pub(second), check=True)
    assert server.ssh(second, "whoami", check=True).stdout.strip() == "bob"

    removed = server.ssh(bob, "keys:remove", "desktop", check=True)
    assert key_fingerprint(second) in removed.stdout
    refused = server.ssh(second, "whoami")
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr
    assert [k["name"] for k in server.ssh_json(bob, "keys")] == ["laptop"]
    missing = error_line(server.ssh(bob, "keys:remove", "desktop"))
    assert "no key named 'desktop'" in missing


def test_non_admin_cannot_add_keys_for_others(server: CrewshipServer) -> None:
    bob = server.add_user("bob")
    carol = server.make_key("carol")
    line = error_line(server.ssh(bob, "keys:add", "laptop", "--user", "carol", input=pub(carol)))
    assert "only an admin" in line
    assert server.ssh(carol, "whoami").returncode == 255
    assert "no user named 'carol'" in error_line(
        server.ssh(server.admin_key, "keys", "--user", "carol"))
    assert "only an admin" in error_line(server.ssh(bob, "keys", "--all"))


def test_duplicate_fingerprint_is_refused(server: CrewshipServer) -> None:
    bob = server.add_user("bob")
    again = server.ssh(server.admin_key, "keys:add", "other", "--user", "dave", input=pub(bob))
    assert "already registered" in error_line(again)
    own = server.ssh(bob, "keys:add", "copy", input=pub(bob))
    assert "already registered" in error_line(own)
    assert [k["name"] for k in server.ssh_json(bob, "keys")] == ["laptop"]
    assert server.ssh(server.admin_key, "whoami", check=True).stdout.startswith("admin")


def test_keys_add_rejects_garbage_and_private_keys(server: CrewshipServer) -> None:
    assert "not an OpenSSH public key" in error_line(
        server.ssh(server.admin_key, "keys:add", "junk", input="ssh-ed25519 AAAAnotbase64\n"))
    assert "no public key given" in error_line(
        server.ssh(server.admin_key, "keys:add", "empty", input=""))
    private = server.make_key("leaked").read_text()
    assert "private key" in error_line(
        server.ssh(server.admin_key, "keys:add", "leaked", input=private))
    assert len(server.ssh_json(server.admin_key, "keys")) == 1


def test_apps_create_and_destroy(server: CrewshipServer) -> None:
    created = server.ssh(server.admin_key, "apps:create", "doomed", check=True).stdout
    assert created.startswith("created doomed ")
    assert server.repo_path("doomed").is_dir()

    refused = error_line(server.ssh(server.admin_key, "apps:destroy", "doomed"))
    assert "apps:destroy doomed --force" in refused
    assert [a["name"] for a in server.ssh_json(server.admin_key, "apps")] == ["doomed"]
    assert server.repo_path("doomed").is_dir()

    server.ssh(server.admin_key, "apps:destroy", "doomed", "--force", check=True)
    assert server.ssh_json(server.admin_key, "apps") == []
    assert not server.repo_path("doomed").exists()
    server.ssh(server.admin_key, "apps:create", "twice", check=True)
    assert "already exists" in error_line(server.ssh(server.admin_key, "apps:create", "twice"))


def test_access_levels(server: CrewshipServer, workdir: Path) -> None:
    admin = server.admin_key
    bob = server.add_user("bob")
    head = server.init_repo(workdir / "src", {"a.txt": "a\n"}, branch=BRANCH)
    server.git(admin, "push", server.git_url("shared"), BRANCH, cwd=workdir / "src")

    # none: reads exactly like an app that does not exist
    hidden = server.git(bob, "clone", server.git_url("shared"), "c0", cwd=workdir, check=False)
    assert hidden.returncode != 0
    assert "app not found: 'shared'" in hidden.stderr
    assert server.ssh_json(bob, "apps") == []
    hidden_cmd = server.ssh(bob, "access", "shared")

    # read: clone yes, push no
    server.ssh(admin, "access:add", "shared", "bob", "read", check=True)
    server.git(bob, "clone", "-q", "-b", BRANCH, server.git_url("shared"), "c1", cwd=workdir)
    clone = workdir / "c1"
    server.commit(clone, {"b.txt": "b\n"}, "from bob")
    denied = server.git(bob, "push", "origin", BRANCH, cwd=clone, check=False)
    assert denied.returncode != 0
    assert "bob has read access to shared; this needs deploy" in denied.stderr
    assert _served(server, "shared") == head
    assert "bob has read access" in error_line(server.ssh(bob, "access:add", "shared", "eve"))

    # deploy: push yes, manage access no
    server.ssh(admin, "access:add", "shared", "bob", "deploy", check=True)
    server.git(bob, "push", "origin", BRANCH, cwd=clone)
    assert _served(server, "shared") != head
    assert "needs admin" in error_line(server.ssh(bob, "access:add", "shared", "admin", "read"))

    # admin: may grant others
    carol = server.add_user("carol")
    server.ssh(admin, "access:add", "shared", "bob", "admin", check=True)
    server.ssh(bob, "access:add", "shared", "carol", "read", check=True)
    listed = server.ssh_json(bob, "access", "shared")
    assert {(g["user"], g["level"]) for g in listed} == {
        ("admin", "admin"), ("bob", "admin"), ("carol", "read")}
    assert [a["name"] for a in server.ssh_json(carol, "apps")] == ["shared"]

    # remove: back to "not found"
    server.ssh(admin, "access:remove", "shared", "bob", check=True)
    assert server.ssh(bob, "access", "shared").stderr == hidden_cmd.stderr
    assert "unknown access level" in error_line(
        server.ssh(admin, "access:add", "shared", "carol", "owner"))

    # no access reads exactly like a missing app: same command, same name, after destroy
    server.ssh(admin, "apps:destroy", "shared", "--force", check=True)
    gone_cmd = server.ssh(bob, "access", "shared")
    assert (gone_cmd.returncode, gone_cmd.stderr) == (hidden_cmd.returncode, hidden_cmd.stderr)
    gone = server.git(bob, "clone", server.git_url("shared"), "c2", cwd=workdir, check=False)
    assert _remote_lines(gone.stderr) == _remote_lines(hidden.stderr.replace("c0", "c2"))


def _served(server: CrewshipServer, app: str) -> str:
    return server.git(None, "rev-parse", BRANCH, cwd=server.repo_path(app)).stdout.strip()


def _remote_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if not ln.startswith("Cloning into")]
