"""The supervisor's value types, events and health probe (see runtime/supervisor.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import anyio._backends._asyncio  # noqa: F401  # loaded lazily, it stalled the loop ~0.25 s
import httpx

from crewship.errors import DeployError
from runtime.backend import STATUS_UNKNOWN, InstanceRef, InstanceSpec

MakeSpec = Callable[[int, int], InstanceSpec]            # (index, port) -> spec
Probe = Callable[[InstanceRef], Awaitable[bool]]          # healthy right now?
AppState = Literal["running", "starting", "crashed", "stopped", "idle", "deploying"]


@dataclass(frozen=True)
class Endpoint:
    instance_id: str
    host: str
    port: int


@dataclass(frozen=True)
class InstanceStatus:
    id: str
    port: int | None
    pid: int | None
    state: str            # "up" | "starting" | "restarting" | "crashed" | "stopping"
    started_at: float | None
    restarts: int
    next_restart_at: float | None = None   # wall-clock time, while "restarting"


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


class InstanceFailedError(DeployError):
    """A new instance did not become healthy; ``output`` is its last lines."""

    def __init__(self, message: str, *, instance: str, reason: str, output: str = "") -> None:
        super().__init__(message)
        self.instance = instance
        self.reason = reason
        self.output = output


class HttpProbe:
    """``GET http://host:port/healthz`` answers 200. Never through a proxy."""

    def __init__(self, timeout: float = 2.0) -> None:
        self._client = httpx.AsyncClient(timeout=timeout, trust_env=False)

    async def __call__(self, ref: InstanceRef) -> bool:
        try:
            response = await self._client.get(f"http://{ref.host}:{ref.port}/healthz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()


def exit_text(status: int) -> str:
    if status == STATUS_UNKNOWN:
        return "exited (status unknown)"
    return f"exited with status {status}"
