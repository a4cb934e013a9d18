"""The runtime backend seam: mechanism for single instances, no policy.

A backend starts, stops, waits for and lists instances of a release. It never
restarts anything on its own (that is the supervisor's policy) and an operation
it cannot do raises ``BackendError``; it never silently does nothing.

    CrewshipError
    └── BackendError           an instance could not be started, stopped or found

Everything a backend creates is labelled with app, release and index, so a
restarted daemon can ``list()`` and adopt what is still running instead of
starting duplicates.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from crewship.errors import CrewshipError

# ``wait()`` returns this when an instance exited but its status cannot be known
# (an adopted process is not our child, so nobody tells us how it ended).
STATUS_UNKNOWN = -1000


class BackendError(CrewshipError):
    """A backend could not do what was asked of it."""


def instance_name(release: int, index: int) -> str:
    """``v3.1``: the tag the runner prints on its lines and status shows."""
    return f"v{release}.{index}"


@dataclass(frozen=True)
class PreloadSpec:
    """What the process runtime needs to fork an instance from a preloaded parent
    (runtime/preload.py): one parent per app and ``key`` (the dependency environment)."""

    key: str
    python: str                # the environment's interpreter
    runner: Path               # a release's runner package (the parent runs it)
    releases: Path             # releases/<app>: every release the parent may fork
    env_path: Path
    env: dict[str, str] = field(repr=False)  # the base environment: no config values


@dataclass(frozen=True)
class InstanceSpec:
    """What to run for one instance: the caller builds argv and env."""

    app: str
    release: int
    index: int
    argv: list[str]
    env: dict[str, str] = field(repr=False)  # config values: never print them
    cwd: Path
    port: int
    host: str = "127.0.0.1"
    # The docker runtime: the release's image, and the app's limits (None: unlimited).
    image: str | None = None
    memory: int | None = None     # bytes
    cpus: float | None = None
    # The process runtime's sandbox: what the instance may read (its release and
    # environment), its writable HOME, and its app's own uid (used when the daemon is root).
    readonly: tuple[Path, ...] = ()
    home: Path | None = None
    uid: int | None = None
    # The runner channel's secret (runtime/channel.py): the backend hands it to the runner
    # out of band (stdin, a read-only file), never in argv or env. Never print it.
    secret: str = field(default="", repr=False)
    # Set: the process runtime may fork this instance from a preloaded parent.
    preload: PreloadSpec | None = None
    # Directories bound writable into the sandbox besides HOME (a parent's control dir).
    writable: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return instance_name(self.release, self.index)


@dataclass(frozen=True)
class InstanceRef:
    """A started instance. ``started_at`` is wall-clock time (``time.time()``)."""

    id: str
    app: str
    release: int
    index: int
    host: str
    port: int
    pid: int | None
    started_at: float

    @property
    def name(self) -> str:
        return instance_name(self.release, self.index)


class Backend(Protocol):
    """Mechanism for single instances (STYLE.md "Runtime backend seam")."""

    async def start(self, spec: InstanceSpec) -> InstanceRef:
        """Start one instance; returns as soon as it is running (not yet healthy)."""
        ...

    async def stop(self, ref: InstanceRef, grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, SIGKILL. Idempotent."""
        ...

    async def wait(self, ref: InstanceRef) -> int:
        """Wait for the instance to exit; its status (negative: killed by that signal)."""
        ...

    async def list(self, app: str | None = None) -> list[InstanceRef]:
        """Running labelled instances, including ones a previous daemon started."""
        ...

    async def aclose(self) -> None:
        """Release the backend's own resources; instances keep running."""
        ...


def free_port(host: str = "127.0.0.1", avoid: set[int] | None = None) -> int:
    """A port nobody listens on right now (the kernel's choice), not in ``avoid``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if not avoid or port not in avoid:
            return port
    raise BackendError(f"no free port on {host}")
