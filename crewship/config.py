"""Settings (flags and ``CREWSHIP_*`` variables) and the data directory layout."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

RUNTIMES = ("process", "docker", "swarm")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".crewship")
    host: str = "127.0.0.1"
    ssh_port: int = 2222
    http_port: int = 8000
    runtime: str = "process"
    admin_keys: tuple[str, ...] = ()
    # The interpreter crew environments are built with (uv never downloads one).
    python: str = sys.executable
    public_host: str = ""
    health_timeout: float = 30.0
    drain_timeout: float = 60.0
    deploy_lock_timeout: float = 600.0
    base_image: str = "python:3.12-slim"
    # Shared dependency environments (default: DATA_DIR/envs); servers may share one.
    envs_dir: Path | None = None
    # Execution history: kickoffs older than this many days, or beyond this many per app, go.
    kickoff_retention_days: float = 30.0
    kickoff_retention_max: int = 10_000
    kickoff_prune_interval: float = 3600.0
    # Crash policy (DESIGN.md section 4): this many crashes within the window make an app
    # crashed; restarts after the first wait restart_delay seconds, doubling.
    crash_limit: int = 10
    crash_window: float = 600.0
    restart_delay: float = 1.0
    # Kickoffs (DESIGN.md section 4): runs at once per instance, PENDING kickoffs per app
    # before 429, and the deadline of one run (FAILURE "timed out after N s", run stopped).
    kickoff_concurrency: int = 4
    kickoff_queue: int = 100
    kickoff_timeout: float = 3600.0
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def url_host(self) -> str:
        return self.public_host or self.host

    @property
    def http_base(self) -> str:
        return f"http://{self.url_host}:{self.http_port}"

    def app_url(self, app: str) -> str:
        return f"{self.http_base}/apps/{app}"

    def git_url(self, app: str) -> str:
        return f"ssh://git@{self.url_host}:{self.ssh_port}/{app}.git"


_ENV_FIELDS: dict[str, tuple[str, Callable[[str], object]]] = {
    "CREWSHIP_DATA_DIR": ("data_dir", Path),
    "CREWSHIP_HOST": ("host", str),
    "CREWSHIP_SSH_PORT": ("ssh_port", int),
    "CREWSHIP_HTTP_PORT": ("http_port", int),
    "CREWSHIP_RUNTIME": ("runtime", str),
    "CREWSHIP_ADMIN_KEYS": ("admin_keys", lambda v: tuple(k for k in v.split(":") if k)),
    "CREWSHIP_PYTHON": ("python", str),
    "CREWSHIP_PUBLIC_HOST": ("public_host", str),
    "CREWSHIP_HEALTH_TIMEOUT": ("health_timeout", float),
    "CREWSHIP_DRAIN_TIMEOUT": ("drain_timeout", float),
    "CREWSHIP_DEPLOY_LOCK_TIMEOUT": ("deploy_lock_timeout", float),
    "CREWSHIP_BASE_IMAGE": ("base_image", str),
    "CREWSHIP_ENVS_DIR": ("envs_dir", Path),
    "CREWSHIP_KICKOFF_RETENTION_DAYS": ("kickoff_retention_days", float),
    "CREWSHIP_KICKOFF_RETENTION_MAX": ("kickoff_retention_max", int),
    "CREWSHIP_KICKOFF_PRUNE_INTERVAL": ("kickoff_prune_interval", float),
    "CREWSHIP_CRASH_LIMIT": ("crash_limit", int),
    "CREWSHIP_CRASH_WINDOW": ("crash_window", float),
    "CREWSHIP_RESTART_DELAY": ("restart_delay", float),
    "CREWSHIP_KICKOFF_CONCURRENCY": ("kickoff_concurrency", int),
    "CREWSHIP_KICKOFF_QUEUE": ("kickoff_queue", int),
    "CREWSHIP_KICKOFF_TIMEOUT": ("kickoff_timeout", float),
}


def from_env(env: Mapping[str, str] | None = None, **flags: object) -> Settings:
    """Settings from ``CREWSHIP_*`` variables, overridden by explicit flags (not None)."""
    from crewship.errors import InvalidInputError

    e = os.environ if env is None else env
    values: dict[str, object] = {}
    for var, (name, convert) in _ENV_FIELDS.items():
        if e.get(var):
            try:
                values[name] = convert(e[var])
            except ValueError:
                raise InvalidInputError(f"{var}={e[var]!r} is not a valid {name}") from None
    values.update({k: v for k, v in flags.items() if v is not None})
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.kickoff_concurrency < 1 or settings.kickoff_queue < 1 \
            or settings.kickoff_timeout <= 0:
        raise InvalidInputError("CREWSHIP_KICKOFF_CONCURRENCY and CREWSHIP_KICKOFF_QUEUE must "
                                "be 1 or more, CREWSHIP_KICKOFF_TIMEOUT more than 0")
    if settings.runtime not in RUNTIMES:
        raise InvalidInputError(
            f"unknown runtime {settings.runtime!r}: use one of {', '.join(RUNTIMES)}")
    return settings


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the data directory (DESIGN.md section 3)."""

    root: Path

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def repos(self) -> Path:
        return self.root / "repos"

    def repo(self, app: str) -> Path:
        return self.repos / f"{app}.git"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    def release_dir(self, app: str, version: int) -> Path:
        return self.releases / app / f"v{version}"

    @property
    def envs(self) -> Path:
        return self.root / "envs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def app_logs(self, app: str) -> Path:
        return self.logs / app

    @property
    def host_keys(self) -> Path:
        return self.root / "host_keys"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def run(self) -> Path:
        """Sockets and pid files of the running daemon."""
        return self.root / "run"

    @property
    def hook_socket(self) -> Path:
        return self.run / "hook.sock"

    @property
    def homes(self) -> Path:
        """Each app's own HOME for its crew processes."""
        return self.root / "homes"

    def app_home(self, app: str) -> Path:
        return self.homes / app

    @property
    def instances(self) -> Path:
        """Records of running instances, so a restarted daemon adopts them."""
        return self.root / "instances"

    @property
    def secrets(self) -> Path:
        """The runner channel's per-instance secrets (0700; files 0600): daemon only."""
        return self.root / "secrets"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def ensure(self) -> None:
        for path in (self.root, self.repos, self.releases, self.envs, self.logs,
                     self.host_keys, self.backups, self.run, self.homes,
                     self.instances, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        self.secrets.chmod(0o700)
