"""Named security regressions for the SSH front door (DESIGN.md section 5).

Each test drives the real OpenSSH client (and paramiko where OpenSSH cannot show
what the server offers) against the daemon running as a subprocess.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.support.server import CrewshipServer, free_port, key_fingerprint, wait_for_port

pytestmark = pytest.mark.e2e

BAD_NAMES = ["../x", "/etc/passwd", "Bad_Name", "a" * 200, "x", "app;rm -rf /", "repos/../y",
             "crew\n", " crew"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrewshipServer]:
    """One server for the module: these tests only read, or check that nothing changed."""
    with CrewshipServer(tmp_path_factory.mktemp("security")) as server:
        server.ssh(server.admin_key, "apps:create", "private-app", check=True)
        yield server


@pytest.fixture(scope="module")
def outsider(srv: CrewshipServer) -> Path:
    """A registered user with no access to any app."""
    return srv.add_user("mallory")


def snapshot(srv: CrewshipServer) -> tuple[list[str], list[str], list[str]]:
    """What a refused request must not change: repo dirs, data dir entries, apps."""
    repos = sorted(p.name for p in (srv.data_dir / "repos").iterdir())
    top = sorted(p.name for p in srv.data_dir.iterdir())
    apps = [a["name"] for a in srv.ssh_json(srv.admin_key, "apps")]
    return repos, top, apps


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_unknown_key_is_refused(srv: CrewshipServer) -> None:
    stranger = srv.make_key("stranger")
    result = srv.ssh(stranger, "whoami")
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr
    assert result.stdout == ""
    failed = srv.wait_for_log("auth_failed", key_fp=key_fingerprint(stranger))
    assert failed["key_fp"].startswith("SHA256:")
    assert not srv.logs("auth_succeeded", key_fp=key_fingerprint(stranger))


def test_password_and_keyboard_interactive_are_refused(srv: CrewshipServer) -> None:
    result = srv.ssh(srv.admin_key, "whoami", options=[
        "-o", "PreferredAuthentications=password,keyboard-interactive",
        "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"])
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_server_offers_only_publickey_auth(srv: CrewshipServer) -> None:
    attempts = {
        "none": lambda t: t.auth_none("git"),
        "password": lambda t: t.auth_password("git", "hunter2"),
        "keyboard-interactive": lambda t: t.auth_interactive("git", lambda *a: ["hunter2"]),
    }
    for method, attempt in attempts.items():
        with socket.create_connection(("127.0.0.1", srv.ssh_port), timeout=10) as sock:
            transport = paramiko.Transport(sock)
            try:
                transport.start_client(timeout=10)
                with pytest.raises(paramiko.BadAuthenticationType) as offered:
                    attempt(transport)
                assert offered.value.allowed_types == ["publickey"], method
                assert not transport.is_authenticated()
            finally:
                transport.close()


def test_shell_is_refused(srv: CrewshipServer) -> None:
    result = srv.ssh(srv.admin_key)
    assert result.returncode == 255
    assert "shell request failed" in result.stderr
    assert result.stdout == ""


def test_shell_with_pty_is_refused(srv: CrewshipServer) -> None:
    result = srv.ssh(srv.admin_key, options=["-tt"])
    assert result.returncode == 255
    assert "PTY allocation request failed" in result.stderr


def test_pty_is_refused(srv: CrewshipServer) -> None:
    result = srv.ssh(srv.admin_key, "whoami", options=["-tt"])
    assert "PTY allocation request failed" in result.stderr
    assert result.returncode == 255


def test_remote_port_forwarding_is_refused(srv: CrewshipServer) -> None:
    port = free_port()
    result = srv.ssh(srv.admin_key, options=[
        "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{port}:127.0.0.1:{srv.ssh_port}"],
        timeout=30)
    assert result.returncode == 255
    assert "remote port forwarding failed" in result.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_local_port_forwarding_is_refused(srv: CrewshipServer) -> None:
    port = free_port()
    argv = srv.ssh_argv(srv.admin_key, "-N", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=INFO",
                        "-L", f"127.0.0.1:{port}:127.0.0.1:{srv.ssh_port}")
    client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, 30, alive=lambda: client.poll() is None)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.settimeout(10)
            assert conn.recv(64) == b"", "the forwarded connection must be closed, not relayed"
    finally:
        client.kill()
        _, stderr = client.communicate(timeout=30)
    assert "open failed" in stderr


def test_subsystem_is_refused(srv: CrewshipServer) -> None:
    result = srv.ssh(srv.admin_key, "sftp", options=["-s"])
    assert result.returncode == 255
    assert "subsystem request failed" in result.stderr


@pytest.mark.parametrize("service", ["git-receive-pack", "git-upload-pack"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n[:12]))
def test_bad_repo_names_are_refused(srv: CrewshipServer, service: str, name: str) -> None:
    before = snapshot(srv)
    result = srv.ssh(srv.admin_key, service, shlex.quote(name))
    assert "invalid app name" in one_error_line(result)
    assert result.stdout == ""
    assert snapshot(srv) == before


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n[:12]))
def test_bad_app_names_are_refused_by_commands(srv: CrewshipServer, name: str) -> None:
    before = snapshot(srv)
    assert "invalid app name" in one_error_line(
        srv.ssh(srv.admin_key, "apps:create", shlex.quote(name)))
    assert snapshot(srv) == before


def test_long_name_is_shown_truncated(srv: CrewshipServer) -> None:
    line = one_error_line(srv.ssh(srv.admin_key, "git-receive-pack", "'" + "a" * 200 + "'"))
    assert "a" * 60 not in line
    assert len(line) < 200


def test_git_push_to_a_path_outside_repos_is_refused(srv: CrewshipServer, tmp_path: Path) -> None:
    before = snapshot(srv)
    srv.init_repo(tmp_path, {"f": "x\n"}, branch="dev")
    url = f"ssh://git@127.0.0.1:{srv.ssh_port}/../escape.git"
    result = srv.git(srv.admin_key, "push", url, "dev", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "invalid app name" in result.stderr
    assert snapshot(srv) == before
    assert not (srv.data_dir / "escape.git").exists()


def test_no_access_reads_as_not_found(srv: CrewshipServer, outsider: Path, tmp_path: Path) -> None:
    hidden = srv.ssh(outsider, "git-upload-pack", "'private-app.git'")
    missing = srv.ssh(outsider, "git-upload-pack", "'no-such-app.git'")
    assert one_error_line(hidden) == one_error_line(missing).replace("no-such-app", "private-app")
    assert "app not found: 'private-app'" in hidden.stderr
    for command in ("access", "apps:destroy"):
        shown = srv.ssh(outsider, command, "private-app")
        absent = srv.ssh(outsider, command, "no-such-app")
        assert one_error_line(shown) == one_error_line(absent).replace("no-such-app", "private-app")
    pushed = srv.ssh(outsider, "git-receive-pack", "'private-app.git'")
    assert "app not found: 'private-app'" in one_error_line(pushed)
    assert srv.ssh(outsider, "apps:create", "private-app").returncode == 1
    assert [a["name"] for a in srv.ssh_json(outsider, "apps")] == []


def test_unknown_command_hints_at_help(srv: CrewshipServer) -> None:
    line = one_error_line(srv.ssh(srv.admin_key, "frobnicate", "--now"))
    assert line == "error: unknown command 'frobnicate'; run 'help' for the list"


def test_shell_syntax_is_not_interpreted(srv: CrewshipServer, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = srv.ssh(srv.admin_key, f"whoami; touch {marker}")
    assert result.returncode == 1
    assert not marker.exists()
    result = srv.ssh(srv.admin_key, f"$(touch {marker})")
    assert "unknown command" in one_error_line(result)
    assert not marker.exists()


def test_malformed_quoting_gets_one_clear_line(srv: CrewshipServer) -> None:
    before = snapshot(srv)
    line = one_error_line(srv.ssh(srv.admin_key, "apps:create 'oops"))
    assert line == "error: cannot parse the command (No closing quotation)"
    assert snapshot(srv) == before


def test_bad_arguments_get_one_clear_line(srv: CrewshipServer) -> None:
    line = one_error_line(srv.ssh(srv.admin_key, "apps:create"))
    assert "usage: apps:create" in line
    line = one_error_line(srv.ssh(srv.admin_key, "git-upload-pack"))
    assert "usage: git-upload-pack" in line
