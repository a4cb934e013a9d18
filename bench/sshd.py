"""The baseline: OpenSSH's own ``sshd`` on a free port, with ``git-receive-pack`` behind it.

A second sshd, entirely in a temp dir (config, host key, authorized_keys, pid file),
started as our child with ``-D -e -f CONFIG`` and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shlex
import signal
import subprocess
from pathlib import Path

from tests.support.server import HOST, SSH_OPTIONS, free_port, make_key, wait_for_port

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")

CONFIG = """\
Port {port}
ListenAddress {host}
HostKey {dir}/ssh_host_ed25519_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers {user}
AcceptEnv GIT_PROTOCOL
PrintMotd no
PrintLastLog no
UseDNS no
LogLevel ERROR
"""


class OpenSSHServer:
    """``sshd -D -e -f CONFIG`` for the current user, authorizing one client key."""

    def __init__(self, root: Path, client_key: Path, extra_config: str = "") -> None:
        self.root = root
        self.extra_config = extra_config  # e.g. "Subsystem sftp internal-sftp\n"
        self.port = free_port()
        self.user = getpass.getuser()
        self.client_key = client_key
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OpenSSHServer:
        self.root.mkdir(parents=True, exist_ok=True)
        make_key(self.root / "ssh_host_ed25519_key", comment="bench sshd")
        pub = self.client_key.with_name(self.client_key.name + ".pub").read_text()
        (self.root / "authorized_keys").write_text(pub)
        config = self.root / "sshd_config"
        config.write_text(CONFIG.format(port=self.port, host=HOST, dir=self.root, user=self.user)
                          + self.extra_config)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd refuses to start without it
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True, capture_output=True)
        with (self.root / "sshd.log").open("ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        wait_for_port(self.port, 30, alive=lambda: self.proc is not None and self.proc.poll() is None)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def git_url(self, repo: Path) -> str:
        return f"ssh://{self.user}@{HOST}:{self.port}{repo}"

    def git_ssh_command(self) -> str:
        return " ".join(shlex.quote(a) for a in ["ssh", "-i", str(self.client_key), *SSH_OPTIONS])

    def __enter__(self) -> OpenSSHServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
