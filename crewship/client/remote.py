"""Where the crewship server is, and the project's git repository.

The server is ``ssh://USER@HOST[:PORT]`` (user ``git``, port 2222 by default), taken
from, in order: ``$CREWSHIP_SERVER``; ``git config crewship.server`` of the project
(written by ``crewship remote add``); the host of an existing ``crewship`` git remote.
Git runs as a child process with an argv list and a timeout, never through a shell.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from crewship.client.errors import ClientError, NoServerError
from crewship.errors import InvalidInputError

DEFAULT_USER = "git"
DEFAULT_PORT = 2222
CONFIG_KEY = "crewship.server"
REMOTE_NAME = "crewship"
ENV_VAR = "CREWSHIP_SERVER"
GIT_TIMEOUT = 60.0
EXAMPLE = "ssh://git@HOST:2222"


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int = DEFAULT_PORT
    user: str = DEFAULT_USER

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self._host_part}:{self.port}"

    @property
    def _host_part(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def display(self) -> str:
        return f"{self._host_part}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this host in known_hosts: ``[host]:port`` unless port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def git_url(self, app: str) -> str:
        return f"{self.url}/{app}.git"

    def ssh_hint(self, command: str) -> str:
        """The plain OpenSSH command line for ``command`` on this server."""
        return f"ssh -p {self.port} {self.user}@{self.host} {command}"


def parse_server_url(url: str, *, allow_path: bool = False) -> ServerAddress:
    """``ssh://[USER@]HOST[:PORT][/]``; with ``allow_path`` also an app's git URL."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme != "ssh" or not parts.hostname:
        raise InvalidInputError(f"not a crewship server URL: {text[:80]!r} (expected {EXAMPLE})")
    if parts.password is not None or parts.query or parts.fragment:
        raise InvalidInputError(f"not a crewship server URL: {text[:80]!r} (expected {EXAMPLE})")
    if parts.path not in ("", "/") and not allow_path:
        raise InvalidInputError(
            f"give the server, not an app: {text[:80]!r} (expected {EXAMPLE}, without a path)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise InvalidInputError(f"bad port in {text[:80]!r} (expected {EXAMPLE})") from None
    return ServerAddress(parts.hostname, port, parts.username or DEFAULT_USER)


# ------------------------------------------------------------------------- git
def git(args: Sequence[str], cwd: Path, *, check: bool = True,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``git ARGS`` in ``cwd``, captured; a failure raises ``ClientError`` with git's words."""
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                timeout=GIT_TIMEOUT, env=dict(env) if env else None,
                                stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise ClientError("git is not installed: install git and try again") from None
    except subprocess.TimeoutExpired:
        raise ClientError(f"git {' '.join(args)} did not finish in {GIT_TIMEOUT:.0f}s") from None
    if check and result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise ClientError(f"git {' '.join(args)} failed: {said[-1] if said else result.returncode}")
    return result


def is_git_repo(cwd: Path) -> bool:
    return git(["rev-parse", "--git-dir"], cwd, check=False).returncode == 0


def git_config_get(cwd: Path, key: str) -> str | None:
    if not is_git_repo(cwd):
        return None
    result = git(["config", "--get", key], cwd, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def remote_url(cwd: Path, name: str = REMOTE_NAME) -> str | None:
    if not is_git_repo(cwd):
        return None
    result = git(["remote", "get-url", name], cwd, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def app_from_remote(cwd: Path, name: str = REMOTE_NAME) -> str | None:
    """The app a ``ssh://.../NAME.git`` git remote points at, if there is one."""
    url = remote_url(cwd, name)
    if not url or not url.startswith("ssh://"):
        return None
    path = urlsplit(url).path.strip("/")
    return path.removesuffix(".git") if path.endswith(".git") and "/" not in path else None


def set_remote(cwd: Path, url: str, name: str = REMOTE_NAME) -> str:
    """Point the git remote ``name`` at ``url``; returns what was done, for the user."""
    current = remote_url(cwd, name)
    if current == url:
        return f"git remote {name} is {url}"
    if current is None:
        git(["remote", "add", name, url], cwd)
        return f"added git remote {name} -> {url}"
    git(["remote", "set-url", name, url], cwd)
    return f"git remote {name} now points at {url} (was {current})"


# ---------------------------------------------------------------------- server
def store_server(cwd: Path, address: ServerAddress) -> None:
    """Keep the server in the project's git config (``crewship.server``)."""
    git(["config", "--local", CONFIG_KEY, address.url], cwd)


def resolve_server(cwd: Path, environ: Mapping[str, str] | None = None) -> ServerAddress:
    """The configured server, or ``NoServerError`` saying how to configure one."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return parse_server_url(env[ENV_VAR])
    stored = git_config_get(cwd, CONFIG_KEY)
    if stored:
        return parse_server_url(stored)
    existing = remote_url(cwd)
    if existing and existing.startswith("ssh://"):
        return parse_server_url(existing, allow_path=True)
    raise NoServerError(
        f"no crewship server configured: run 'crewship remote add {EXAMPLE}' in the project "
        f"(kept in its git config) or set {ENV_VAR}={EXAMPLE}")
