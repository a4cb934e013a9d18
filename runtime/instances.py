"""The supervisor's instances: start, health-check, watch, restart, retire.

``InstanceKeeper`` (the base of ``runtime.supervisor.Supervisor``) holds per app the live
instances (``SupervisedApp``, one ``Instance`` per slot) and what happens to each one:

- start: slot ``index`` on a fresh port with a fresh channel secret, then probe it until
  healthy (``GET /healthz`` answers 200 within ``health_timeout``; exiting first fails at
  once with ``InstanceFailedError`` carrying its last lines, and the instance is stopped).
- watch: one watcher per live instance; an unexpected exit is reported
  (``InstanceExited``) and the slot restarted on a fresh port after the backoff of
  ``runtime.backoff``, until a crash loop gives the app up (``AppCrashed``).
- retire: SIGTERM, ``drain_timeout`` for running kickoffs, SIGKILL, in the background,
  then ``InstanceRetired``.
- housekeeping: the app logs are rotated every ``rotate_interval`` seconds.

What to run (deploy, scale, adopt, stop) is decided in runtime/supervisor.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from crewship.config import Layout
from crewship.errors import CrewshipError
from crewship.log import get as get_logger
from runtime.backend import (
    STATUS_UNKNOWN,
    Backend,
    InstanceRef,
    free_port,
    instance_name,
)
from runtime.backoff import BackoffPolicy, RestartBackoff
from runtime.channel import new_secret
from runtime.events import (
    HttpProbe,
    InstanceExited,
    InstanceFailedError,
    InstanceRetired,
    MakeSpec,
    Probe,
    SupervisorEvent,
    exit_text,
)
from runtime.logs import AppLog
from runtime.supervision import AppRecord, SupervisorBase

log = get_logger(__name__)
# A forked instance is healthy in a few hundred ms, a cold one in seconds: probe every 20 ms
# for the first 2 s, then back off (x1.5 a probe) to the supervisor's health_interval.
HEALTH_FIRST_INTERVAL = 0.02
HEALTH_FAST_FOR = 2.0
HEALTH_BACKOFF = 1.5


@dataclass(eq=False)
class Instance:
    ref: InstanceRef
    up_since: float | None = None         # supervisor clock
    restarts: int = 0
    stopping: bool = False
    watcher: asyncio.Task[None] | None = None


@dataclass(eq=False, kw_only=True)
class SupervisedApp(AppRecord):
    backoff: RestartBackoff
    live: dict[int, Instance] = field(default_factory=dict)
    recovering: dict[int, asyncio.Task[Any]] = field(default_factory=dict)
    pending: dict[int, float] = field(default_factory=dict)   # index -> wall time of retry
    retiring: dict[Instance, asyncio.Task[None]] = field(default_factory=dict)


class InstanceKeeper(SupervisorBase[SupervisedApp]):
    """Each app's live instances and their life (see the module docstring)."""

    def __init__(self, backend: Backend, layout: Layout, *, health_timeout: float = 30.0,
                 drain_timeout: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 on_event: Callable[[SupervisorEvent], None] | None = None,
                 backoff: BackoffPolicy | None = None, health_interval: float = 0.2,
                 stop_grace: float = 5.0, probe: Probe | None = None,
                 rotate_interval: float = 30.0) -> None:
        super().__init__(layout, backoff, on_event)
        self._backend = backend
        self._health_timeout = health_timeout
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._health_interval = health_interval
        self._stop_grace = stop_grace            # for new instances that failed
        self._http_probe: HttpProbe | None = None
        if probe is None:
            probe = self._http_probe = HttpProbe(self.secret_of)
        self._probe = probe
        self._rotate_interval = rotate_interval
        self._recent_ports: deque[int] = deque(maxlen=64)
        self._housekeeper: asyncio.Task[None] | None = None

    def secret_of(self, ref: InstanceRef) -> str | None:
        """The runner channel's secret of an instance (runtime/channel.py)."""
        return self._secrets.get(ref.id)

    # -- the app records ----------------------------------------------------------

    def _new_app(self, app: str) -> SupervisedApp:
        return SupervisedApp(app, AppLog(self._layout.app_logs(app)),
                             backoff=RestartBackoff(self._policy, self._clock))

    def _app(self, app: str) -> SupervisedApp:
        st = super()._app(app)
        if self._housekeeper is None:
            self._housekeeper = self._spawn(self._housekeep())
        return st

    def _crashed(self, st: SupervisedApp) -> bool:
        return st.backoff.crashed

    def _running(self, st: SupervisedApp) -> bool:
        return bool(st.live)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(self._rotate_interval)
            for st in list(self._apps.values()):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(st.log.rotate_if_needed)

    # -- starting and checking instances -------------------------------------

    async def _launch_all(self, st: SupervisedApp, make_spec: MakeSpec,
                          indices: Iterable[int]) -> list[Instance]:
        results = await asyncio.gather(*(self._launch(st, make_spec, i) for i in indices),
                                       return_exceptions=True)
        started = [r for r in results if isinstance(r, Instance)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(self._stop_quietly(i.ref, self._stop_grace)
                                   for i in started))
            raise failures[0]
        return started

    async def _launch(self, st: SupervisedApp, make_spec: MakeSpec, index: int) -> Instance:
        """Start slot ``index`` on a fresh port and wait until it is healthy."""
        port = free_port(avoid=self._ports_in_use())
        self._recent_ports.append(port)
        spec = dataclasses.replace(make_spec(index, port), secret=new_secret())
        offset = st.log.size()
        started = time.monotonic()
        try:
            ref = await self._backend.start(spec)
        except CrewshipError as exc:
            raise InstanceFailedError(f"{spec.name} could not start: {exc}",
                                      instance=spec.name, reason=str(exc)) from exc
        self._secrets.put(ref.id, spec.secret)
        spawned = time.monotonic()
        try:
            await self._await_healthy(ref)
        except InstanceFailedError as exc:
            await self._stop_quietly(ref, self._stop_grace)
            self._secrets.remove(ref.id)
            lines = await asyncio.to_thread(st.log.instance_output, ref.name, 40, offset)
            exc.output = "\n".join(lines)
            raise
        except BaseException:  # cancelled (a newer deploy or a stop): clean up behind us
            self._spawn(self._stop_quietly(ref, self._stop_grace))
            raise
        healthy = time.monotonic()
        log.info("instance_healthy", app=st.name, instance=ref.id,
                 start_ms=round((spawned - started) * 1000),
                 health_ms=round((healthy - spawned) * 1000))
        return Instance(ref, up_since=self._clock())

    async def _await_healthy(self, ref: InstanceRef) -> None:
        """Probe until healthy: often at first (``HEALTH_FIRST_INTERVAL``), then backing off
        to ``health_interval``."""
        exited = asyncio.ensure_future(self._backend.wait(ref))
        interval = min(HEALTH_FIRST_INTERVAL, self._health_interval)
        fast_until = time.monotonic() + HEALTH_FAST_FOR
        try:
            async with asyncio.timeout(self._health_timeout):
                while True:
                    if exited.done():
                        failed = exited.exception() is not None
                        status = STATUS_UNKNOWN if failed else exited.result()
                        why = self._exit_reason(ref)   # memory_exceeded while starting
                        text = exit_text(status)
                        raise self._unhealthy(ref, f"{why} ({text})" if why else text)
                    if await self._probe(ref):
                        return
                    await asyncio.wait({exited}, timeout=interval)
                    if time.monotonic() > fast_until:
                        interval = min(interval * HEALTH_BACKOFF, self._health_interval)
        except TimeoutError:
            raise self._unhealthy(ref, f"timed out after {self._health_timeout:g} s") from None
        finally:
            exited.cancel()
            if exited.done() and not exited.cancelled():
                exited.exception()  # retrieved: no "never retrieved" noise

    @staticmethod
    def _unhealthy(ref: InstanceRef, reason: str) -> InstanceFailedError:
        return InstanceFailedError(f"health check failed: {ref.name} {reason}",
                                   instance=ref.name, reason=reason)

    async def _healthy(self, ref: InstanceRef) -> bool:
        try:
            await self._await_healthy(ref)
        except InstanceFailedError:
            return False
        return True

    async def _stop_quietly(self, ref: InstanceRef, grace: float) -> None:
        try:
            await self._backend.stop(ref, grace)
        except CrewshipError as exc:
            log.warning("instance_stop_failed", app=ref.app, instance=ref.id, error=str(exc))
        else:
            self._secrets.remove(ref.id)

    def _ports_in_use(self) -> set[int]:
        ports = set(self._recent_ports)
        for st in self._apps.values():
            ports.update(i.ref.port for i in (*st.live.values(), *st.retiring))
        return ports

    # -- watching, crashes and retiring ---------------------------------------

    def _watch(self, st: SupervisedApp, inst: Instance) -> None:
        inst.watcher = self._spawn(self._watch_instance(st, inst))

    async def _watch_instance(self, st: SupervisedApp, inst: Instance) -> None:
        try:
            status = await self._backend.wait(inst.ref)
        except CrewshipError:
            status = STATUS_UNKNOWN
        index = inst.ref.index
        if inst.stopping or st.live.get(index) is not inst:
            return
        del st.live[index]
        self._secrets.remove(inst.ref.id)
        reason = self._exit_reason(inst.ref)
        log.warning("instance_crashed", app=st.name, instance=inst.ref.id, status=status,
                    reason=reason)
        self._emit(InstanceExited(st.name, inst.ref.id, inst.ref.release, status, reason))
        task = asyncio.current_task()
        assert task is not None
        st.recovering[index] = task
        text = exit_text(status) if reason is None else f"{reason} ({exit_text(status)})"
        await self._recover(st, index, text, inst.up_since, inst.restarts)

    def _exit_reason(self, ref: InstanceRef) -> str | None:
        """Why the backend says ``ref`` ended (``memory_exceeded``), if it knows."""
        explain = getattr(self._backend, "exit_reason", None)
        return explain(ref) if explain is not None else None

    async def _fill_missing(self, st: SupervisedApp, make_spec: MakeSpec, scale: int) -> None:
        """Start the slots nobody runs; a slot that fails goes to crash recovery."""
        missing = [index for index in range(1, scale + 1) if index not in st.live]
        results = await asyncio.gather(*(self._launch(st, make_spec, i) for i in missing),
                                       return_exceptions=True)
        for index, result in zip(missing, results, strict=True):
            if isinstance(result, Instance):
                st.live[index] = result
                self._watch(st, result)
            elif isinstance(result, InstanceFailedError):
                self._start_recovery(st, index, f"failed to start ({result.reason})", None)
            else:
                raise result

    def _start_recovery(self, st: SupervisedApp, index: int, reason: str,
                        up_since: float | None) -> None:
        st.recovering[index] = self._spawn(self._recover(st, index, reason, up_since, 0))

    async def _recover(self, st: SupervisedApp, index: int, reason: str, up_since: float | None,
                       restarts: int) -> None:
        """Restart slot ``index`` with backoff until it is healthy or the app crashed."""
        name = instance_name(st.release or 0, index)
        try:
            while True:
                already = st.backoff.crashed
                decision = st.backoff.on_crash(index, up_since)
                if not decision.restart:
                    self._give_up(st, name, reason, decision.crashes, already)
                    return
                st.log.system(f"{name} {reason}, restarting in {decision.delay:g}s")
                st.pending[index] = time.time() + decision.delay
                self._refresh(st)
                await asyncio.sleep(decision.delay)
                restarts += 1
                assert st.make_spec is not None
                try:
                    inst = await self._launch(st, st.make_spec, index)
                except InstanceFailedError as exc:
                    reason, up_since = f"failed to start ({exc.reason})", None
                    continue
                inst.restarts = restarts
                st.live[index] = inst
                self._watch(st, inst)
                st.log.system(f"{name} restarted and healthy")
                log.info("instance_restarted", app=st.name, release=st.release,
                         instance=inst.ref.id, restarts=restarts)
                return
        finally:
            st.pending.pop(index, None)
            if st.recovering.get(index) is asyncio.current_task():
                del st.recovering[index]
            self._refresh(st)

    def _give_up(self, st: SupervisedApp, name: str, reason: str, crashes: int, already: bool) -> None:
        if already:
            st.log.system(f"{name} {reason}, not restarting (app crashed)")
            return
        self._report_crash_loop(st, crashes)

    def _cancel_recovery(self, st: SupervisedApp) -> None:
        for task in st.recovering.values():
            task.cancel()
        st.recovering.clear()
        st.pending.clear()

    def _retire(self, st: SupervisedApp, instances: list[Instance]) -> None:
        for inst in instances:
            inst.stopping = True
            if inst.watcher is not None:
                inst.watcher.cancel()
            st.retiring[inst] = self._spawn(self._retire_one(st, inst))

    async def _retire_one(self, st: SupervisedApp, inst: Instance) -> None:
        status = STATUS_UNKNOWN
        try:
            await self._backend.stop(inst.ref, self._drain_timeout)
            status = await self._backend.wait(inst.ref)
        except CrewshipError as exc:
            log.warning("instance_stop_failed", app=st.name, instance=inst.ref.id,
                        error=str(exc))
        finally:
            st.retiring.pop(inst, None)
        self._secrets.remove(inst.ref.id)
        st.log.system(f"{inst.ref.name} retired ({exit_text(status)})")
        self._emit(InstanceRetired(st.name, inst.ref.id, inst.ref.release, status))

    async def _wait_retired(self, st: SupervisedApp) -> None:
        await asyncio.gather(*st.retiring.values(), return_exceptions=True)
