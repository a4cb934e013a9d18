"""Server URLs, their resolution order, git's ssh argv, and known_hosts (accept-new)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from crewship.client.errors import HostKeyError, NoServerError
from crewship.client.gitssh import parse_argv
from crewship.client.remote import ServerAddress, parse_server_url, resolve_server
from crewship.client.ssh import KnownHosts, load_identities
from crewship.errors import InvalidInputError


@pytest.mark.parametrize(("url", "address"), [
    ("ssh://git@example.test:2222", ServerAddress("example.test", 2222, "git")),
    ("ssh://git@example.test:2222/", ServerAddress("example.test", 2222, "git")),
    ("ssh://example.test", ServerAddress("example.test", 2222, "git")),
    ("ssh://deploy@10.0.0.5:22", ServerAddress("10.0.0.5", 22, "deploy")),
    (" ssh://git@[::1]:2200 ", ServerAddress("::1", 2200, "git")),
])
def test_server_urls(url: str, address: ServerAddress) -> None:
    assert parse_server_url(url) == address


@pytest.mark.parametrize(("url", "message"), [
    ("git@example.test:2222", "not a crewship server URL"),
    ("https://example.test", "not a crewship server URL"),
    ("ssh://", "not a crewship server URL"),
    ("ssh://git:pw@example.test", "not a crewship server URL"),
    ("ssh://git@example.test:2222/demo.git", "without a path"),
    ("ssh://git@example.test:99999", "bad port"),
])
def test_bad_server_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_server_url(url)


def test_an_app_git_url_gives_its_server_when_paths_are_allowed() -> None:
    address = parse_server_url("ssh://git@h:2222/demo.git", allow_path=True)
    assert address.git_url("other") == "ssh://git@h:2222/other.git"
    assert address.known_hosts_name == "[h]:2222"
    assert ServerAddress("h", 22).known_hosts_name == "h"
    assert ServerAddress("::1", 2222).url == "ssh://git@[::1]:2222"


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_resolution_order_env_then_git_config_then_remote(tmp_path: Path) -> None:
    with pytest.raises(NoServerError, match="crewship remote add"):
        resolve_server(tmp_path, {})
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "remote", "add", "crewship", "ssh://git@from-remote:1/app.git")
    assert resolve_server(tmp_path, {}).host == "from-remote"
    _git(tmp_path, "config", "crewship.server", "ssh://git@from-config:2")
    assert resolve_server(tmp_path, {}).host == "from-config"
    env = {"CREWSHIP_SERVER": "ssh://git@from-env:3"}
    assert resolve_server(tmp_path, env) == ServerAddress("from-env", 3)


@pytest.mark.parametrize(("argv", "port", "user", "command"), [
    (["-p", "2222", "git@h", "git-receive-pack '/demo.git'"], 2222, "git", "git-receive-pack '/demo.git'"),
    (["-o", "SendEnv=GIT_PROTOCOL", "-4", "-p2200", "h", "git-upload-pack 'a.git'"], 2200, "git",
     "git-upload-pack 'a.git'"),
    (["bob@h", "git-receive-pack", "'x.git'"], 22, "bob", "git-receive-pack 'x.git'"),
])
def test_git_ssh_argv(argv: list[str], port: int, user: str, command: str) -> None:
    call = parse_argv(argv)
    assert (call.address.host, call.address.port, call.address.user, call.command) == \
        ("h", port, user, command)


@pytest.mark.parametrize("argv", [["-L", "1:h:2", "h", "x"], ["h"]])
def test_git_ssh_argv_refuses_what_it_cannot_do(argv: list[str]) -> None:
    with pytest.raises(InvalidInputError):
        parse_argv(argv)


def new_key() -> paramiko.PKey:
    return paramiko.RSAKey.generate(1024)


def test_known_hosts_accept_new_then_refuse_a_changed_key(tmp_path: Path) -> None:
    known = KnownHosts(tmp_path, {})
    address = ServerAddress("127.0.0.1", 2222)
    first, second = new_key(), new_key()
    note = known.check(address, first)
    assert note is not None
    assert "[127.0.0.1]:2222" in note
    assert (tmp_path / ".config/crewship/known_hosts").read_text().startswith("[127.0.0.1]:2222 ssh-rsa ")
    assert known.check(address, first) is None
    assert known.check(ServerAddress("127.0.0.1", 2223), second) is not None  # another port
    with pytest.raises(HostKeyError, match="CHANGED"):
        known.check(address, second)


def test_the_users_own_known_hosts_counts(tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh/known_hosts").write_text(f"[h]:2222 {key.get_name()} {key.get_base64()}\n")
    assert KnownHosts(tmp_path, {}).check(ServerAddress("h"), key) is None
    assert not (tmp_path / ".config/crewship/known_hosts").exists()


def test_identities_from_files_skip_protected_keys_with_a_note(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    ssh_dir = tmp_path / ".ssh"
    ssh_dir.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "id_ed25519")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "secret", "-f", str(ssh_dir / "id_ecdsa")],
                   check=True)
    found, notes = load_identities(tmp_path)
    assert [i.label for i in found] == ["~/.ssh/id_ed25519"]
    assert found[0].fingerprint.startswith("SHA256:")
    assert any("id_ecdsa is passphrase-protected" in n and "ssh-add" in n for n in notes)


def test_the_app_comes_from_the_crewship_remote_when_there_is_one(tmp_path: Path) -> None:
    from crewship.client.remote import app_from_remote

    assert app_from_remote(tmp_path) is None
    _git(tmp_path, "init", "-q")
    assert app_from_remote(tmp_path) is None
    _git(tmp_path, "remote", "add", "crewship", "ssh://git@h:2222/my-app.git")
    assert app_from_remote(tmp_path) == "my-app"
    _git(tmp_path, "remote", "set-url", "crewship", "git@github.com:me/repo.git")
    assert app_from_remote(tmp_path) is None
