"""End-to-end harness: a real ``crewship server`` subprocess driven by real OpenSSH and git.

    with CrewshipServer(tmp_path) as srv:          # data dir, free ports, admin key, started
        srv.ssh(srv.admin_key, "whoami")           # CompletedProcess (text)
        bob = srv.add_user("bob")                  # a new user's key, added by the admin
        srv.git(bob, "push", srv.git_url("demo"), "main", cwd=work)
        srv.wait_for_log("command_finished", command="git-receive-pack")

Only 127.0.0.1 is used. The server runs in its own process group; ``stop`` sends
SIGTERM to it (then SIGKILL) and kills any descendant it left behind, by PID.
Its stderr (JSON log lines and the start banner) goes to ``server.log``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
SSH_OPTIONS = ("-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "crewship test", "GIT_AUTHOR_EMAIL": "test@crewship.local",
                "GIT_COMMITTER_NAME": "crewship test",
                "GIT_COMMITTER_EMAIL": "test@crewship.local",
                "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, alive: Any = None) -> None:
    """Until ``port`` accepts a connection; ``alive()`` returning False aborts early."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        if alive is not None and not alive():
            raise RuntimeError(f"process exited before port {port} accepted connections")
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} did not accept connections within {timeout}s")
        time.sleep(0.02)


def make_key(path: Path, comment: str = "") -> Path:
    """An ed25519 key pair made with ``ssh-keygen``; returns the private key's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment or path.name,
                    "-f", str(path)], check=True, capture_output=True, timeout=30)
    return path


def key_fingerprint(key: Path) -> str:
    """``SHA256:...`` of a key pair (given the private or the .pub path)."""
    pub = key if key.suffix == ".pub" else key.with_name(key.name + ".pub")
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    return out.split()[1]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class CrewshipServer:
    """One ``crewship server`` with its own data dir, ports, keys and log file."""

    def __init__(self, root: Path, *, env: Mapping[str, str] | None = None,
                 args: Sequence[str] = (), admin: str = "admin",
                 shared_envs: bool = False) -> None:
        """``shared_envs``: build crew environments into the cache every test server shares
        (``tests/support/crewenv.py``), so a uv.lock seen before installs nothing; the
        fixtures' one is built there first, under a file lock. Without it (the default,
        and what the benchmarks measure) the server builds into its own data dir."""
        self.root = root
        self.data_dir = root / "data"
        self.keys_dir = root / "keys"
        self.log_path = root / "server.log"
        self.ssh_port = free_port()
        self.http_port = free_port()
        self.extra_env = dict(env or {})
        self._use_shared_envs(shared_envs)
        self.extra_args = list(args)
        self.admin_name = admin
        self.proc: subprocess.Popen[bytes] | None = None
        self._leftovers: set[int] = set()
        self._log_offset = 0
        self.admin_key = self.make_key(admin)
        self.admin_add_key(admin, self.admin_key)

    def _use_shared_envs(self, asked: bool) -> None:
        """Point the server at the shared envs dir if asked, and when it is pointed there
        (also by an explicit ``CREWSHIP_ENVS_DIR``), build the fixtures' env first, under
        the cache's file lock, so no two servers or test workers ever build it at once."""
        from tests.support import crewenv

        shared = str(crewenv.shared_envs_dir())
        if asked:
            self.extra_env.setdefault("CREWSHIP_ENVS_DIR", shared)
        envs = self.extra_env.get("CREWSHIP_ENVS_DIR")
        if envs is not None and os.path.realpath(envs) == os.path.realpath(shared):
            crewenv.warm()

    # ---------------------------------------------------------------- keys/users
    def make_key(self, name: str) -> Path:
        """A fresh ed25519 key pair under ``keys/`` (not registered anywhere)."""
        return make_key(self.keys_dir / name, comment=f"{name}@crewship-test")

    def admin_add_key(self, name: str, key: Path) -> str:
        """``crewship admin add-key`` (offline, works whether or not the server runs), in
        this process: the CLI's own function, without an interpreter start for every server
        (tests/e2e/test_admin.py runs the command itself)."""
        from crewship import cli

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli.admin_add_key(name, key.with_name(key.name + ".pub"), self.data_dir)
        return out.getvalue().strip()

    def add_user(self, user: str, key_name: str = "laptop", *, by: Path | None = None) -> Path:
        """Make a key for ``user`` and have the admin add it (creating the user)."""
        key = self.make_key(f"{user}-{key_name}")
        self.ssh(by or self.admin_key, "keys:add", key_name, "--user", user,
                 input=key.with_name(key.name + ".pub").read_text(), check=True)
        return key

    # ------------------------------------------------------------------ process
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREWSHIP_")}
        env.update({"CREWSHIP_DATA_DIR": str(self.data_dir), "CREWSHIP_HOST": HOST,
                    "CREWSHIP_SSH_PORT": str(self.ssh_port),
                    "CREWSHIP_HTTP_PORT": str(self.http_port), "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``python -m crewship.cli ARGS`` with this server's environment."""
        result = subprocess.run([sys.executable, "-m", "crewship.cli", *args], env=self.env(),
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"crewship {' '.join(args)} failed: {result.stderr}")
        return result

    def start(self, timeout: float = 30.0) -> CrewshipServer:
        assert self.proc is None, "already started"
        self.root.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crewship.cli", "server", *self.extra_args],
                env=self.env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(self.ssh_port, timeout, alive=lambda: self.proc.poll() is None)
            self.wait_for_log("server_started", timeout=timeout, since_start=True)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"crewship server did not start: {exc}\n{self.log_text()}") from exc
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0, *, leave_children: bool = False) -> int | None:
        """SIGTERM, then SIGKILL; kill leftover descendants unless ``leave_children``.

        Left children (e.g. crew instances a restarted daemon should adopt) are still
        killed by ``close()``. Returns the server's exit status.
        """
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            family = descendants(proc.pid)
            self._leftovers.update(family)
            if leave_children:
                proc.send_signal(signal.SIGTERM)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if not leave_children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            kill_pids(self._leftovers)
            self._leftovers.clear()
        return proc.returncode

    def restart(self, *, leave_children: bool = False) -> CrewshipServer:
        self.stop(leave_children=leave_children)
        return self.start()

    def close(self) -> None:
        self.stop()
        kill_pids(self._leftovers)
        self._leftovers.clear()
        from tests.support.sandboxes import kill_preload_sandboxes

        kill_preload_sandboxes(self.data_dir)  # parents a killed daemon left outside its tree

    def __enter__(self) -> CrewshipServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- clients
    def ssh_argv(self, key: Path, *options: str) -> list[str]:
        """``ssh ... git@127.0.0.1``; ``options`` come first, so they win over the defaults."""
        return ["ssh", "-p", str(self.ssh_port), "-i", str(key), *options, *SSH_OPTIONS,
                f"git@{HOST}"]

    def ssh(self, key: Path, *args: str, input: str | None = None, check: bool = False,
            options: Sequence[str] = (), timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run an SSH command as the owner of ``key`` with the real OpenSSH client."""
        result = subprocess.run(self.ssh_argv(key, *options) + list(args), input=input,
                                stdin=None if input is not None else subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr}{result.stdout}")
        return result

    def ssh_json(self, key: Path, *args: str) -> Any:
        return json.loads(self.ssh(key, *args, "--json", check=True).stdout)

    def git_env(self, key: Path) -> dict[str, str]:
        ssh_cmd = " ".join(shlex.quote(a) for a in ["ssh", "-i", str(key), *SSH_OPTIONS])
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(GIT_IDENTITY)
        env["GIT_SSH_COMMAND"] = ssh_cmd
        return env

    def git(self, key: Path | None, *args: str, cwd: Path, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``git ARGS`` in ``cwd``, reaching the server as the owner of ``key``."""
        env = self.git_env(key) if key is not None else {**os.environ, **GIT_IDENTITY}
        result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr}{result.stdout}")
        return result

    def init_repo(self, path: Path, files: Mapping[str, str | bytes], message: str = "initial",
                  *, branch: str = "main") -> str:
        """``git init -b BRANCH`` in ``path`` and commit ``files``; returns the commit."""
        path.mkdir(parents=True, exist_ok=True)
        self.git(None, "init", "-q", "-b", branch, cwd=path)
        return self.commit(path, files, message)

    def commit(self, path: Path, files: Mapping[str, str | bytes], message: str = "update") -> str:
        """Write ``files`` (relative paths) into the work tree and commit everything."""
        for rel, content in files.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        self.git(None, "add", "-A", cwd=path)
        self.git(None, "commit", "-q", "-m", message, cwd=path)
        return self.git(None, "rev-parse", "HEAD", cwd=path).stdout.strip()

    def git_url(self, app: str) -> str:
        return f"ssh://git@{HOST}:{self.ssh_port}/{app}.git"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def repo_path(self, app: str) -> Path:
        return self.data_dir / "repos" / f"{app}.git"

    # ------------------------------------------------------------------- logs
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logs(self, event: str | None = None, *, since_start: bool = False,
             **match: Any) -> list[dict[str, Any]]:
        """The server's JSON log lines (every run, or only the current one), filtered."""
        text = self.log_text()
        if since_start:
            text = text.encode()[self._log_offset:].decode(errors="replace")
        found = []
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if event is not None and entry.get("event") != event:
                continue
            if all(entry.get(k) == v for k, v in match.items()):
                found.append(entry)
        return found

    def wait_for_log(self, event: str, *, timeout: float = 10.0, since_start: bool = False,
                     **match: Any) -> dict[str, Any]:
        """The first log line of ``event`` matching ``match``, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.logs(event, since_start=since_start, **match)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} {match} log line within {timeout}s:\n"
                                     f"{self.log_text()[-4000:]}")
            time.sleep(0.02)

    @property
    def host_fingerprint(self) -> str:
        """The host key fingerprint the current run printed in its start banner."""
        text = self.log_text().encode()[self._log_offset:].decode(errors="replace")
        found = re.search(r"host key (SHA256:\S+)", text)
        assert found, f"no host key in the start banner:\n{text}"
        return found.group(1)


@contextlib.contextmanager
def shared_envs_server(root: Path, env: dict[str, str] | None = None,
                       args: Sequence[str] = ()) -> Iterator[CrewshipServer]:
    """A started server whose crew environments live in the cache every test server shares
    (as the apps of one server share them); closed, with the crews it started, afterwards."""
    server = CrewshipServer(root, env=env, args=args, shared_envs=True)
    server.start()
    try:
        yield server
    finally:
        server.close()
