"""Settings (flags and ``CREWSHIP_*`` variables) and the data directory layout."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crewship.urls import Policy

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
    # The process runtime runs crews under bubblewrap unless this is set (DESIGN.md 5).
    insecure_no_sandbox: bool = False
    # The process runtime forks instances from a preloaded parent per app and environment
    # (runtime/preload.py); off: every instance is a cold start.
    preload: bool = True
    # Deploys (build + health-checked start) running at once across apps; 0: the core count.
    deploy_concurrency: int = 0
    # Log where the event loop was stuck whenever it answers later than this (0: off).
    loop_watchdog: float = 0.0
    # Usage sampling (crewship/service/usage.py): seconds between samples of every instance,
    # and between the points of each app's 24 h chart.
    usage_interval: float = 3.0
    usage_point_interval: float = 60.0
    # Default quotas of a user who is not an admin (0 or "": none); quotas:set overrides them.
    quota_apps: int = 0
    quota_instances: int = 0
    quota_memory: str = ""
    # Outbound URLs (crewship/urls.py): private/loopback targets and local clone paths.
    allow_private_urls: bool = False
    allow_local_clone: bool = False
    # Who gets in, and how much they may send (README "Security").
    api_token_days: int = 90              # default lifetime of a new API token; 0: never expires
    max_body: int = 1024 * 1024 + 4096    # any request body but a ZIP upload, bytes
    max_kickoff_inputs: int = 256 * 1024  # a kickoff's inputs as JSON, bytes
    max_requests_per_token: int = 16      # requests in flight per bearer token (then 429)
    metrics_token: str = ""               # the Prometheus scrape token for GET /metrics
    otlp_endpoint: str = ""               # an OTLP/HTTP collector for kickoff traces (optional)
    trusted_proxies: tuple[str, ...] = ()  # proxies whose X-Forwarded-Proto is believed
    # Backups (crewship/service/backups.py): every backup_interval seconds, the newest
    # backup_keep kept; also stored in a restic repository when both restic settings are set.
    backup_interval: float = 86400.0
    backup_keep: int = 7
    backup_restic_repo: str = ""
    backup_restic_password_file: Path | None = None
    backup_restic_options: tuple[str, ...] = ()
    # Kickoffs (DESIGN.md section 4): runs at once per instance, PENDING kickoffs per app
    # before 429, and the deadline of one run (FAILURE "timed out after N s", run stopped).
    kickoff_concurrency: int = 4
    kickoff_queue: int = 100
    kickoff_timeout: float = 3600.0
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def sandboxed(self) -> bool:
        """Crews run sandboxed: bubblewrap (process) or a locked-down container (docker)."""
        return self.runtime != "process" or not self.insecure_no_sandbox

    @property
    def sandbox_note(self) -> str:
        """What confines a crew, in plain words (status, dashboard, start banner)."""
        if self.runtime != "process":
            return ("locked-down container: read-only root, no capabilities, "
                    "no new privileges, no data dir")
        if self.insecure_no_sandbox:
            return ("OFF (--insecure-no-sandbox): crews run unsandboxed with the server's "
                    "own rights and can read state.db, host keys and other apps' files")
        return ("bubblewrap: own release and environment read-only, own HOME and /tmp, "
                "nothing else of the data dir" + (", own uid per app" if os.geteuid() == 0
                                                   else ""))

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

    def url_policy(self) -> Policy:
        """What outbound URLs may reach (webhooks, alerts, clone URLs)."""
        from crewship.urls import Policy

        return Policy(allow_private=self.allow_private_urls,
                      allow_local_clone=self.allow_local_clone,
                      own_ports=frozenset({self.ssh_port, self.http_port}),
                      own_hosts=frozenset({self.host, self.url_host}))


def parse_flag(value: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (ValueError otherwise)."""
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)



DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` -> seconds (more than 0)."""
    value = text.strip().lower()
    unit = DURATION_UNITS.get(value[-1:]) if value else None
    number = float(value[:-1] if unit else value)
    return float(_at_least(number * (unit or 1.0), 1e-3))


def _at_least(value: float, low: float) -> Any:
    if not value >= low:
        raise ValueError(f"{value} is below {low}")
    return value


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
    "CREWSHIP_INSECURE_NO_SANDBOX": ("insecure_no_sandbox", parse_flag),
    "CREWSHIP_PRELOAD": ("preload", parse_flag),
    "CREWSHIP_LOOP_WATCHDOG": ("loop_watchdog", float),
    "CREWSHIP_USAGE_INTERVAL": ("usage_interval", float),
    "CREWSHIP_USAGE_POINT_INTERVAL": ("usage_point_interval", float),
    "CREWSHIP_QUOTA_APPS": ("quota_apps", int),
    "CREWSHIP_QUOTA_INSTANCES": ("quota_instances", int),
    "CREWSHIP_QUOTA_MEMORY": ("quota_memory", str),
    "CREWSHIP_DEPLOY_CONCURRENCY": ("deploy_concurrency", int),
    "CREWSHIP_ALLOW_PRIVATE_URLS": ("allow_private_urls", parse_flag),
    "CREWSHIP_ALLOW_LOCAL_CLONE": ("allow_local_clone", parse_flag),
    "CREWSHIP_API_TOKEN_DAYS": ("api_token_days", int),
    "CREWSHIP_MAX_BODY": ("max_body", int),
    "CREWSHIP_MAX_KICKOFF_INPUTS": ("max_kickoff_inputs", int),
    "CREWSHIP_MAX_REQUESTS_PER_TOKEN": ("max_requests_per_token", int),
    "CREWSHIP_METRICS_TOKEN": ("metrics_token", str),
    "CREWSHIP_OTLP_ENDPOINT": ("otlp_endpoint", str),
    "CREWSHIP_TRUSTED_PROXIES": ("trusted_proxies",
                                 lambda v: tuple(p.strip() for p in v.split(",") if p.strip())),
    "CREWSHIP_BACKUP_INTERVAL": ("backup_interval", parse_duration),
    "CREWSHIP_BACKUP_KEEP": ("backup_keep", lambda v: _at_least(int(v), 1)),
    "CREWSHIP_BACKUP_RESTIC_REPO": ("backup_restic_repo", str),
    "CREWSHIP_BACKUP_RESTIC_PASSWORD_FILE": ("backup_restic_password_file", Path),
    "CREWSHIP_BACKUP_RESTIC_OPTIONS": ("backup_restic_options", lambda v: tuple(shlex.split(v))),
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

    def backup_archive(self, backup_id: str) -> Path:
        return self.backups / f"crewship-backup-{backup_id}.tar"

    @property
    def secrets_key(self) -> Path:
        """The key config values are encrypted with at rest (kept in every backup)."""
        return self.root / "secrets.key"

    @property
    def rebuild_marker(self) -> Path:
        """Apps a restore left to rebuild: the next server start rebuilds their live release."""
        return self.root / "rebuild.json"

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
