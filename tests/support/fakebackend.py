"""A backend without processes, for the supervisor's unit tests.

Instances are futures; the test decides how each one behaves (healthy, never
healthy, exits at once) and crashes them by hand. ``events`` records what the
supervisor asked for, in order, so tests can assert the swap sequence.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.backend import BackendError, InstanceRef, InstanceSpec
from runtime.logs import LOG_NAME, open_append, timestamp


@dataclass
class Behaviour:
    healthy: bool = True
    probes_before_healthy: int = 0
    exit_status: int | None = None          # exit right after starting
    output: list[str] = field(default_factory=lambda: ["starting", "listening"])


@dataclass
class FakeInstance:
    ref: InstanceRef
    behaviour: Behaviour
    exited: asyncio.Future[int]
    probes: int = 0
    stop_grace: float | None = None

    @property
    def alive(self) -> bool:
        return not self.exited.done()


class FakeBackend:
    def __init__(self, logs_root: Path | None = None) -> None:
        self.logs_root = logs_root
        self.instances: dict[str, FakeInstance] = {}
        self.events: list[tuple[str, str]] = []   # (what, instance name)
        self.behaviour: Callable[[InstanceSpec], Behaviour] = lambda _spec: Behaviour()
        self.on_stop: Callable[[InstanceRef], None] | None = None
        self.closed = False
        self._pids = itertools.count(1000)
        self._ids = itertools.count(1)

    # -- Backend ----------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> InstanceRef:
        behaviour = self.behaviour(spec)
        inst = self.add(spec.app, spec.release, spec.index, spec.port, behaviour)
        self.events.append(("start", spec.name))
        self._write(spec.app, spec.name, behaviour.output)
        if behaviour.exit_status is not None:
            self._exit(inst, behaviour.exit_status)
        return inst.ref

    async def stop(self, ref: InstanceRef, grace: float) -> None:
        inst = self.instances.get(ref.id)
        if inst is None:
            raise BackendError(f"unknown instance {ref.id}")
        if not inst.alive:
            return
        self.events.append(("stop", ref.name))
        if self.on_stop is not None:
            self.on_stop(ref)
        inst.stop_grace = grace
        self._exit(inst, 0)

    async def wait(self, ref: InstanceRef) -> int:
        inst = self.instances.get(ref.id)
        if inst is None:
            raise BackendError(f"unknown instance {ref.id}")
        return await asyncio.shield(inst.exited)

    async def list(self, app: str | None = None) -> list[InstanceRef]:
        return [i.ref for i in self.instances.values()
                if i.alive and (app is None or i.ref.app == app)]

    async def aclose(self) -> None:
        self.closed = True

    # -- test controls --------------------------------------------------------

    async def probe(self, ref: InstanceRef) -> bool:
        inst = self.instances[ref.id]
        inst.probes += 1
        ok = inst.alive and inst.behaviour.healthy \
            and inst.probes > inst.behaviour.probes_before_healthy
        if ok and ("healthy", ref.name) not in self.events[-1:]:
            self.events.append(("healthy", ref.name))
        return ok

    def add(self, app: str, release: int, index: int, port: int,
            behaviour: Behaviour | None = None) -> FakeInstance:
        """An instance as if started earlier (by a previous daemon, for adoption)."""
        ref = InstanceRef(id=f"{app}-v{release}.{index}-{next(self._ids)}", app=app,
                          release=release, index=index, host="127.0.0.1", port=port,
                          pid=next(self._pids), started_at=time.time())
        inst = FakeInstance(ref, behaviour or Behaviour(),
                            asyncio.get_running_loop().create_future())
        self.instances[ref.id] = inst
        return inst

    def crash(self, instance_id: str, status: int = -9) -> None:
        inst = self.instances[instance_id]
        self.events.append(("crash", inst.ref.name))
        self._write(inst.ref.app, inst.ref.name, [f"Traceback: killed ({status})"])
        self._exit(inst, status)

    def alive(self, app: str | None = None) -> builtins.list[FakeInstance]:
        return [i for i in self.instances.values()
                if i.alive and (app is None or i.ref.app == app)]

    def names(self, what: str) -> builtins.list[str]:
        return [name for kind, name in self.events if kind == what]

    def _exit(self, inst: FakeInstance, status: int) -> None:
        if not inst.exited.done():
            inst.exited.set_result(status)

    def _write(self, app: str, name: str, lines: builtins.list[str]) -> None:
        if self.logs_root is None:
            return
        fd = open_append(self.logs_root / app / LOG_NAME)
        try:
            os.write(fd, "".join(f"{timestamp()} [{name}] {line}\n" for line in lines).encode())
        finally:
            os.close(fd)
