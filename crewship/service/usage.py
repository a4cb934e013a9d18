"""The daemon's usage sampler: the latest figures per instance and a 24 h chart per app.

Every ``interval`` seconds it samples every live instance (runtime/usage.py, in a
thread), keeps the latest figures for ``status``, ``ps``, the dashboard and
``/metrics``, and every ``point_interval`` seconds appends one point per app (memory
and CPU summed over its instances) to a ring of 24 h, in memory: a restarted daemon
starts a new chart.

It is also the memory watchdog of the process runtime without cgroups v2: an
instance whose resident memory is over its app's limit is killed by the backend
(``kill_for_memory``) and reported as ``memory_exceeded``. This bounds what it keeps
(RSS, like a cgroup's ``memory.max``) rather than its address space (``RLIMIT_AS``,
which Python and crewai exceed by far without using it), but only at sample time: a
crew can go past its limit for up to ``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crewship import log
from runtime.backend import InstanceRef
from runtime.events import InstanceExited
from runtime.usage import Sampler, Usage

if TYPE_CHECKING:
    from crewship.store.apps import AppStore
    from runtime.events import Orchestrator

logger = log.get("crewship.service.usage")

DAY = 86_400.0
KEPT_EXITS = 20
MIN_INTERVAL = 0.5


@dataclass(frozen=True)
class Point:
    at: float
    memory_bytes: int
    cpu_percent: float


@dataclass
class _AppUsage:
    points: deque[Point]
    last_point: float = 0.0
    exits: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=KEPT_EXITS))


class UsageMonitor:
    def __init__(self, supervisor: Orchestrator, sampler: Sampler, apps: AppStore, *,
                 interval: float = 3.0, point_interval: float = 60.0,
                 kill_for_memory: Callable[[InstanceRef], None] | None = None,
                 enforcement: str = "") -> None:
        """``kill_for_memory``: the backend's, when nothing else enforces memory limits;
        ``enforcement``: how limits are applied, for ``ps:limits``."""
        self.enforcement = enforcement or (
            f"usage watchdog: an instance over its memory (RSS) is stopped within "
            f"{max(interval, MIN_INTERVAL):g}s; cpus is not enforced without cgroups v2"
            if kill_for_memory else "")
        self._supervisor = supervisor
        self._sampler = sampler
        self._apps = apps
        self.interval = max(interval, MIN_INTERVAL)   # 0 would spin the loop
        self.point_interval = max(point_interval, MIN_INTERVAL)
        self._kill_for_memory = kill_for_memory
        self._latest: dict[str, tuple[InstanceRef, Usage]] = {}
        self._per_app: dict[str, _AppUsage] = {}
        self._task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- queries
    def latest(self, instance_id: str) -> Usage | None:
        found = self._latest.get(instance_id)
        return found[1] if found else None

    def current(self) -> list[tuple[InstanceRef, Usage]]:
        """The latest figures of every instance still live, for ``/metrics``."""
        return sorted(self._latest.values(), key=lambda item: item[0].id)

    def chart(self, app: str) -> list[Point]:
        state = self._per_app.get(app)
        return list(state.points) if state else []

    def memory_exits(self, app: str) -> list[dict[str, Any]]:
        """The app's recent instances killed for their memory, newest first."""
        state = self._per_app.get(app)
        return list(reversed(state.exits)) if state else []

    # ---------------------------------------------------------------- sampling
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-sampler")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:  # a bad sample must not end sampling
                logger.exception("usage_sample_failed")
            await asyncio.sleep(self.interval)

    async def sample_once(self) -> None:
        refs = self._supervisor.instance_refs()
        figures, limits = await asyncio.to_thread(self._sample, refs)
        self._latest = {ref.id: (ref, figures[ref.id]) for ref in refs if ref.id in figures}
        self._enforce(limits)
        self._add_points(time.time())

    def _sample(self, refs: list[InstanceRef]) -> tuple[dict[str, Usage], dict[str, int]]:
        figures = self._sampler.sample(refs)
        limits: dict[str, int] = {}
        if self._kill_for_memory is not None:
            for name in {ref.app for ref in refs}:
                app = self._apps.get(name)
                if app is not None and app.memory_limit:
                    limits[name] = app.memory_limit
        return figures, limits

    def _enforce(self, limits: dict[str, int]) -> None:
        if self._kill_for_memory is None:
            return
        for ref, usage in self._latest.values():
            limit = limits.get(ref.app)
            if limit and usage.memory_bytes > limit:
                logger.warning("instance_memory_exceeded", app=ref.app, instance=ref.id,
                               memory_bytes=usage.memory_bytes, limit=limit)
                self._kill_for_memory(ref)

    def _add_points(self, now: float) -> None:
        totals: dict[str, tuple[int, float]] = {}
        for ref, usage in self._latest.values():
            memory, cpu = totals.get(ref.app, (0, 0.0))
            totals[ref.app] = (memory + usage.memory_bytes, cpu + usage.cpu_percent)
        kept = max(1, int(DAY / max(self.point_interval, 1.0)))
        for app, (memory, cpu) in totals.items():
            state = self._per_app.setdefault(app, _AppUsage(deque(maxlen=kept)))
            if now - state.last_point >= self.point_interval:
                state.points.append(Point(now, memory, cpu))
                state.last_point = now

    # ------------------------------------------------------------------ events
    def instance_exited(self, event: InstanceExited) -> None:
        """Remember an instance killed for its memory (``status`` shows the recent ones)."""
        if event.reason != "memory_exceeded":
            return
        last = self._latest.pop(event.instance_id, None)
        app = self._apps.get(event.app)
        state = self._per_app.setdefault(event.app, _AppUsage(deque(maxlen=int(DAY / 60))))
        state.exits.append({"instance": event.instance_id, "release": f"v{event.release}",
                            "at": time.time(), "reason": event.reason,
                            "memory_bytes": last[1].memory_bytes if last else None,
                            "limit_bytes": app.memory_limit if app else None})


def usage_row(usage: Usage | None) -> dict[str, Any]:
    """The usage fields of one instance in ``status --json`` and ``ps --json``."""
    if usage is None:
        return {"memory_bytes": None, "cpu_percent": None, "fds": None, "threads": None,
                "processes": None}
    row = usage.as_dict()
    row.pop("uptime_seconds")
    return row
