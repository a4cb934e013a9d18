"""The supervisor: runtime policy over a backend's mechanism.

Per app it holds the desired state (release, a spec factory, scale) and the live
instances, and keeps the two together:

- deploy/restart: start the new instances beside the old, health-check each
  (``GET /healthz`` answers 200 within ``health_timeout``; exiting first fails at
  once), switch ``endpoints()`` to them, retire the old in the background
  (SIGTERM, ``drain_timeout`` for running kickoffs, SIGKILL). A failed check stops
  the new instances and raises ``InstanceFailedError`` (a ``DeployError``) with
  the instance's last lines; the old ones keep serving untouched.
- crashes: a watcher per instance; an unexpected exit is reported
  (``InstanceExited``) and the slot restarted on a fresh port after the backoff of
  ``runtime.backoff``; a crash loop makes the app ``crashed`` (``AppCrashed``).
- adopt: after a daemon restart, take over what the backend still runs.

The pusher's progress goes through the ``Reporter``; ``[system]`` lines go into the
app's log; events for the daemon go to structlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from crewship.config import Layout
from crewship.errors import ConflictError, CrewshipError, InvalidInputError
from crewship.errors import NotFoundError as _NotFound
from crewship.log import get as get_logger
from crewship.reporter import NullReporter, Reporter
from runtime.backend import (
    STATUS_UNKNOWN,
    Backend,
    InstanceRef,
    free_port,
    instance_name,
)
from runtime.backoff import BackoffPolicy, RestartBackoff
from runtime.channel import SecretStore, new_secret
from runtime.events import (
    AppCrashed,
    AppState,
    Endpoint,
    HttpProbe,
    InstanceExited,
    InstanceFailedError,
    InstanceRetired,
    InstanceStatus,
    MakeSpec,
    Probe,
    RuntimeStatus,
    SupervisorEvent,
    exit_text,
)
from runtime.logs import AppLog

log = get_logger(__name__)
# A forked instance is healthy in a few hundred ms, a cold one in seconds: probe every 20 ms
# for the first 2 s, then back off (x1.5 a probe) to the supervisor's health_interval.
HEALTH_FIRST_INTERVAL = 0.02
HEALTH_FAST_FOR = 2.0
HEALTH_BACKOFF = 1.5



@dataclass(eq=False)
class _Instance:
    ref: InstanceRef
    up_since: float | None = None         # supervisor clock
    restarts: int = 0
    stopping: bool = False
    watcher: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _App:
    name: str
    log: AppLog
    backoff: RestartBackoff
    release: int | None = None
    make_spec: MakeSpec | None = None
    scale: int = 0
    live: dict[int, _Instance] = field(default_factory=dict)
    recovering: dict[int, asyncio.Task[Any]] = field(default_factory=dict)
    pending: dict[int, float] = field(default_factory=dict)   # index -> wall time of retry
    retiring: dict[_Instance, asyncio.Task[None]] = field(default_factory=dict)
    deploying: bool = False
    state: AppState = "idle"
    since: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Supervisor:
    def __init__(self, backend: Backend, layout: Layout, *, health_timeout: float = 30.0,
                 drain_timeout: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 on_event: Callable[[SupervisorEvent], None] | None = None,
                 backoff: BackoffPolicy | None = None, health_interval: float = 0.2,
                 stop_grace: float = 5.0, probe: Probe | None = None,
                 rotate_interval: float = 30.0) -> None:
        self._backend = backend
        self._layout = layout
        self._health_timeout = health_timeout
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._on_event = on_event
        self._policy = backoff or BackoffPolicy()
        self._health_interval = health_interval
        self._stop_grace = stop_grace            # for new instances that failed
        self._secrets = SecretStore(layout.secrets)
        self._http_probe: HttpProbe | None = None
        if probe is None:
            probe = self._http_probe = HttpProbe(self.secret_of)
        self._probe = probe
        self._rotate_interval = rotate_interval
        self._apps: dict[str, _App] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recent_ports: deque[int] = deque(maxlen=64)
        self._housekeeper: asyncio.Task[None] | None = None

    # -- queries -----------------------------------------------------------

    def secret_of(self, ref: InstanceRef) -> str | None:
        """The runner channel's secret of an instance (runtime/channel.py)."""
        return self._secrets.get(ref.id)

    def _endpoint(self, ref: InstanceRef) -> Endpoint:
        return Endpoint(ref.id, ref.host, ref.port, self._secrets.get(ref.id) or "")

    def endpoints(self, app: str) -> list[Endpoint]:
        """Healthy live instances, for routing kickoffs."""
        st = self._apps.get(app)
        if st is None:
            return []
        return [self._endpoint(i.ref) for _, i in sorted(st.live.items()) if not i.stopping]

    def endpoint(self, app: str, instance_id: str) -> Endpoint | None:
        """A live or retiring (draining) instance: its kickoffs' results are still there."""
        st = self._apps.get(app)
        if st is None:
            return None
        for inst in (*st.live.values(), *st.retiring):
            if inst.ref.id == instance_id:
                return self._endpoint(inst.ref)
        return None

    def crash_reason(self, app: str) -> str | None:
        """Why ``app`` takes no kickoffs (crash loop), or None."""
        st = self._apps.get(app)
        if st is None or not st.backoff.crashed:
            return None
        return (f"{app} crashed ({st.backoff.policy.describe()}): see 'logs {app}', "
                f"then push a fix or 'restart {app}'")

    def status(self, app: str) -> RuntimeStatus:
        st = self._apps.get(app)
        if st is None:
            return RuntimeStatus("idle", None, 0, [], 0, time.time())
        rows = [InstanceStatus(i.ref.id, i.ref.port, i.ref.pid, "up", i.ref.started_at,
                               i.restarts) for i in st.live.values()]
        for index in range(1, st.scale + 1):
            if index in st.live:
                continue
            name = instance_name(st.release or 0, index)
            if index in st.pending:
                rows.append(InstanceStatus(name, None, None, "restarting", None, 0,
                                           st.pending[index]))
            else:
                down = "crashed" if st.backoff.crashed else "starting"
                rows.append(InstanceStatus(name, None, None, down, None, 0))
        rows += [InstanceStatus(i.ref.id, i.ref.port, i.ref.pid, "stopping", i.ref.started_at,
                                i.restarts) for i in st.retiring]
        return RuntimeStatus(st.state, st.release, st.scale, rows, st.backoff.restarts, st.since)

    # -- deploy, restart, scale, stop ---------------------------------------

    async def deploy(self, app: str, release: int, make_spec: MakeSpec, scale: int = 1,
                     report: Reporter | None = None) -> None:
        """Health-checked swap to ``release``; raises ``InstanceFailedError``."""
        if scale < 0:
            raise InvalidInputError(f"scale must be 0 or more, not {scale}")
        rep = report or NullReporter()
        st = self._app(app)
        async with st.lock:
            st.deploying = True
            self._refresh(st)
            try:
                await self._deploy_locked(st, release, make_spec, scale, rep)
            finally:
                st.deploying = False
                self._refresh(st)

    async def _deploy_locked(self, st: _App, release: int, make_spec: MakeSpec, scale: int,
                             rep: Reporter) -> None:
        st.log.system(f"deploy v{release} started")
        rep.step(f"Starting v{release}")
        try:
            new = await self._launch_all(st, make_spec, range(1, scale + 1))
        except InstanceFailedError as exc:
            st.log.system(f"deploy v{release} failed: {exc}")
            log.warning("deploy_failed", app=st.name, release=release, reason=str(exc))
            raise
        if scale:
            rep.step("Health check passed")
        else:
            rep.info("scale is 0: no instance started")
        old = list(st.live.values())
        self._cancel_recovery(st)
        st.release, st.make_spec, st.scale = release, make_spec, scale
        st.live = {inst.ref.index: inst for inst in new}
        st.backoff.reset()
        for inst in new:
            self._watch(st, inst)
        st.log.system(f"v{release} is live")
        log.info("release_live", app=st.name, release=release, scale=scale)
        self._retire(st, old)
        self._refresh(st)

    async def restart(self, app: str, report: Reporter | None = None) -> None:
        """The current release again, through the same health-checked swap."""
        st = self._deployed(app)
        if st.scale == 0:
            raise ConflictError(f"{app} is scaled to 0: scale it up instead")
        assert st.release is not None
        assert st.make_spec is not None
        await self.deploy(app, st.release, st.make_spec, st.scale, report)

    async def scale(self, app: str, n: int, report: Reporter | None = None) -> None:
        if n < 0:
            raise InvalidInputError(f"scale must be 0 or more, not {n}")
        rep = report or NullReporter()
        st = self._deployed(app)
        async with st.lock:
            assert st.make_spec is not None
            st.backoff.reset()
            self._cancel_recovery(st)
            self._retire(st, [i for index, i in st.live.items() if index > n])
            st.live = {index: i for index, i in st.live.items() if index <= n}
            missing = [index for index in range(1, n + 1) if index not in st.live]
            if missing:
                rep.step("Starting " + ", ".join(
                    instance_name(st.release or 0, i) for i in missing))
                for inst in await self._launch_all(st, st.make_spec, missing):
                    st.live[inst.ref.index] = inst
                    self._watch(st, inst)
                rep.step("Health check passed")
            st.scale = n
            st.log.system(f"scaled to {n}")
            self._refresh(st)

    async def stop(self, app: str) -> None:
        """Stop every instance of ``app`` (draining them) and forget it."""
        st = self._apps.get(app)
        if st is None:
            return
        async with st.lock:
            self._cancel_recovery(st)
            self._retire(st, list(st.live.values()))
            st.live.clear()
            await self._wait_retired(st)
            st.log.system("stopped")
            del self._apps[app]
        forget = getattr(self._backend, "stop_app", None)  # a preloaded parent, if any
        if forget is not None:
            forget(app)

    async def adopt(self, app: str, release: int, make_spec: MakeSpec, scale: int,
                    *, crashed: bool = False) -> None:
        """Take over the instances a previous daemon left running for ``release``.

        ``crashed``: the app was given up as a crash loop before the restart; it stays
        crashed (nothing started) until a deploy, restart or scale clears it.
        """
        st = self._app(app)
        async with st.lock:
            keep: dict[int, InstanceRef] = {}
            strays: list[InstanceRef] = []
            for ref in sorted(await self._backend.list(app), key=lambda r: -r.started_at):
                if ref.release == release and 1 <= ref.index <= scale \
                        and ref.index not in keep and not crashed:
                    keep[ref.index] = ref
                else:
                    strays.append(ref)
            st.release, st.make_spec, st.scale = release, make_spec, scale
            if crashed:
                st.backoff.crashed = True
                self._retire(st, [_Instance(ref) for ref in strays])
                st.log.system(f"still crashed after the server restart (v{release}): "
                              "push, restart or scale to start it again")
                self._refresh(st)
                return
            healthy = await asyncio.gather(*(self._healthy(ref) for ref in keep.values()))
            for ref, ok in zip(keep.values(), healthy, strict=True):
                if ok:
                    st.live[ref.index] = inst = _Instance(ref, up_since=self._clock())
                    self._watch(st, inst)
                else:
                    strays.append(ref)
            self._retire(st, [_Instance(ref) for ref in strays])
            st.log.system(f"adopted {len(st.live)} running instance(s) of v{release}")
            await self._fill_missing(st, make_spec, scale)
            self._refresh(st)

    async def stop_orphans(self, spare: frozenset[str] = frozenset()) -> list[str]:
        """Stop what the backend runs for apps nobody supervises (after ``adopt``),
        except those of the apps in ``spare``.

        An app destroyed mid-deploy, or a first deploy killed during its health check,
        leaves instances no database row knows; they are stopped, never adopted.
        """
        orphans = [ref for ref in await self._backend.list(None)
                   if ref.app not in self._apps and ref.app not in spare]
        await asyncio.gather(*(self._stop_quietly(ref, self._stop_grace) for ref in orphans))
        for ref in orphans:
            log.info("orphan_stopped", app=ref.app, instance=ref.id, release=ref.release)
        prune = getattr(self._backend, "prune_apps", None)  # preloaded parents, if any
        if prune is not None:
            prune(set(self._apps) | set(spare))
        return [ref.id for ref in orphans]

    async def _fill_missing(self, st: _App, make_spec: MakeSpec, scale: int) -> None:
        """Start the slots nobody runs; a slot that fails goes to crash recovery."""
        missing = [index for index in range(1, scale + 1) if index not in st.live]
        results = await asyncio.gather(*(self._launch(st, make_spec, i) for i in missing),
                                       return_exceptions=True)
        for index, result in zip(missing, results, strict=True):
            if isinstance(result, _Instance):
                st.live[index] = result
                self._watch(st, result)
            elif isinstance(result, InstanceFailedError):
                self._start_recovery(st, index, f"failed to start ({result.reason})", None)
            else:
                raise result

    async def aclose(self, stop_instances: bool = False) -> None:
        """Stop supervising; instances keep running (adopted next time) unless asked."""
        for st in list(self._apps.values()):
            self._cancel_recovery(st)
            for inst in st.live.values():
                if inst.watcher is not None:
                    inst.watcher.cancel()
            if stop_instances:
                self._retire(st, list(st.live.values()))
                await self._wait_retired(st)
        pending = [t for t in self._tasks if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._http_probe is not None:
            await self._http_probe.aclose()

    # -- starting and checking instances -------------------------------------

    async def _launch_all(self, st: _App, make_spec: MakeSpec,
                          indices: Iterable[int]) -> list[_Instance]:
        results = await asyncio.gather(*(self._launch(st, make_spec, i) for i in indices),
                                       return_exceptions=True)
        started = [r for r in results if isinstance(r, _Instance)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(self._stop_quietly(i.ref, self._stop_grace)
                                   for i in started))
            raise failures[0]
        return started

    async def _launch(self, st: _App, make_spec: MakeSpec, index: int) -> _Instance:
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
        return _Instance(ref, up_since=self._clock())

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

    def _watch(self, st: _App, inst: _Instance) -> None:
        inst.watcher = self._spawn(self._watch_instance(st, inst))

    async def _watch_instance(self, st: _App, inst: _Instance) -> None:
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

    def instance_refs(self) -> list[InstanceRef]:
        """Every live instance of every app (for the usage sampler)."""
        return [i.ref for st in self._apps.values() for i in st.live.values()]

    def _start_recovery(self, st: _App, index: int, reason: str,
                        up_since: float | None) -> None:
        st.recovering[index] = self._spawn(self._recover(st, index, reason, up_since, 0))

    async def _recover(self, st: _App, index: int, reason: str, up_since: float | None,
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

    def _give_up(self, st: _App, name: str, reason: str, crashes: int, already: bool) -> None:
        if already:
            st.log.system(f"{name} {reason}, not restarting (app crashed)")
            return
        st.log.system(f"crashed: {st.backoff.policy.describe()}, not restarting")
        log.error("app_crashed", app=st.name, release=st.release, crashes=crashes)
        self._emit(AppCrashed(st.name, st.release, crashes))

    def _cancel_recovery(self, st: _App) -> None:
        for task in st.recovering.values():
            task.cancel()
        st.recovering.clear()
        st.pending.clear()

    def _retire(self, st: _App, instances: list[_Instance]) -> None:
        for inst in instances:
            inst.stopping = True
            if inst.watcher is not None:
                inst.watcher.cancel()
            st.retiring[inst] = self._spawn(self._retire_one(st, inst))

    async def _retire_one(self, st: _App, inst: _Instance) -> None:
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

    async def _wait_retired(self, st: _App) -> None:
        await asyncio.gather(*st.retiring.values(), return_exceptions=True)

    # -- bookkeeping --------------------------------------------------------

    def _app(self, app: str) -> _App:
        st = self._apps.get(app)
        if st is None:
            st = _App(app, AppLog(self._layout.app_logs(app)),
                      RestartBackoff(self._policy, self._clock))
            self._apps[app] = st
        if self._housekeeper is None:
            self._housekeeper = self._spawn(self._housekeep())
        return st

    def _deployed(self, app: str) -> _App:
        st = self._apps.get(app)
        if st is None or st.make_spec is None:
            raise _NotFound(f"{app} has no running release: deploy it first")
        return st

    def _refresh(self, st: _App) -> None:
        state: AppState
        if st.deploying:
            state = "deploying"
        elif st.backoff.crashed:
            state = "crashed"
        elif st.release is None:
            state = "idle"
        elif st.scale == 0:
            state = "stopped"
        elif st.live:
            state = "running"
        else:
            state = "starting"
        if state != st.state:
            st.state, st.since = state, time.time()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _emit(self, event: SupervisorEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("event_handler_failed", event=type(event).__name__)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(self._rotate_interval)
            for st in list(self._apps.values()):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(st.log.rotate_if_needed)
