"""The supervisor's value types, events and health probe (see runtime/supervisor.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from crewship.errors import DeployError
from runtime.backend import STATUS_UNKNOWN, InstanceRef, InstanceSpec
from runtime.channel import ChannelError, Peer, RunnerClient

MakeSpec = Callable[[int, int], InstanceSpec]            # (index, port) -> spec
Probe = Callable[[InstanceRef], Awaitable[bool]]          # healthy right now?
AppState = Literal["running", "starting", "crashed", "stopped", "idle", "deploying"]


@dataclass(frozen=True)
class Endpoint:
    instance_id: str
    host: str
    port: int
    secret: str = field(default="", repr=False, compare=False)

    @property
    def peer(self) -> Peer:
        return Peer(self.host, self.port, self.secret)


@dataclass(frozen=True)
class InstanceStatus:
    id: str
    port: int | None
    pid: int | None
    state: str            # "up" | "starting" | "restarting" | "crashed" | "stopping"
    started_at: float | None
    restarts: int
    next_restart_at: float | None = None   # wall-clock time, while "restarting"
    node: str | None = None                # the swarm node a task runs on (swarm runtime)


@dataclass(frozen=True)
class RuntimeStatus:
    state: AppState
    release: int | None
    scale: int
    instances: list[InstanceStatus]
    restarts: int
    since: float          # wall-clock time the app entered ``state``


@dataclass(frozen=True)
class InstanceExited:
    """An instance exited on its own; its running kickoffs are lost."""
    app: str
    instance_id: str
    release: int
    status: int
    reason: str | None = None     # "memory_exceeded": killed for going over its limit


@dataclass(frozen=True)
class InstanceRetired:
    """An instance we stopped (retired, scaled down, app stopped) has exited."""
    app: str
    instance_id: str
    release: int
    status: int


@dataclass(frozen=True)
class AppCrashed:
    app: str
    release: int | None
    crashes: int


SupervisorEvent = InstanceExited | InstanceRetired | AppCrashed


class Orchestrator(Protocol):
    """What the service layer asks of the runtime's policy: ``runtime.supervisor.Supervisor``
    (process and docker runtimes: crewship restarts and swaps) or
    ``runtime.swarm.SwarmSupervisor`` (Swarm restarts and rolls out)."""

    async def start(self) -> None: ...
    def secret_of(self, ref: InstanceRef) -> str | None: ...
    def endpoints(self, app: str) -> list[Endpoint]: ...
    def endpoint(self, app: str, instance_id: str) -> Endpoint | None: ...
    def crash_reason(self, app: str) -> str | None: ...
    def status(self, app: str) -> RuntimeStatus: ...
    def instance_refs(self) -> list[InstanceRef]: ...

    async def deploy(self, app: str, release: int, make_spec: MakeSpec, scale: int = 1,
                     report: Any = None) -> None: ...
    async def restart(self, app: str, report: Any = None) -> None: ...
    async def scale(self, app: str, n: int, report: Any = None) -> None: ...
    async def stop(self, app: str) -> None: ...
    async def purge(self, app: str) -> None: ...
    async def adopt(self, app: str, release: int, make_spec: MakeSpec, scale: int,
                    *, crashed: bool = False) -> None: ...
    async def stop_orphans(self, spare: frozenset[str] = frozenset()) -> list[str]: ...
    async def aclose(self, stop_instances: bool = False) -> None: ...


class InstanceFailedError(DeployError):
    """A new instance did not become healthy; ``output`` is its last lines."""

    def __init__(self, message: str, *, instance: str, reason: str, output: str = "") -> None:
        super().__init__(message)
        self.instance = instance
        self.reason = reason
        self.output = output


class HttpProbe:
    """A signed ``GET /healthz`` answers 200 with the runner's proof. Never through a proxy.

    Without the instance's secret (``secret_of`` gives none) nothing is healthy: a
    process that took the port cannot prove it holds the secret.
    """

    def __init__(self, secret_of: Callable[[InstanceRef], str | None],
                 timeout: float = 2.0) -> None:
        self._secret_of = secret_of
        self._client = RunnerClient(timeout=timeout)

    async def __call__(self, ref: InstanceRef) -> bool:
        secret = self._secret_of(ref)
        if not secret:
            return False
        try:
            reply = await self._client.call(Peer(ref.host, ref.port, secret), "GET", "/healthz")
        except ChannelError:
            return False
        return reply.status == 200

    async def aclose(self) -> None:
        await self._client.aclose()


def exit_text(status: int) -> str:
    if status == STATUS_UNKNOWN:
        return "exited (status unknown)"
    return f"exited with status {status}"
