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

This module holds the operations (deploy, scale, stop, adopt) and the queries the
service layer makes; how one instance is started, health-checked, watched, restarted
and retired is runtime/instances.py (``InstanceKeeper``, this class's base), and what
it shares with the swarm runtime's policy is runtime/supervision.py.

The pusher's progress goes through the ``Reporter``; ``[system]`` lines go into the
app's log; events for the daemon go to structlog.
"""

from __future__ import annotations

import asyncio

from crewship.log import get as get_logger
from crewship.reporter import Reporter
from runtime.backend import InstanceRef, instance_name
from runtime.events import (
    Endpoint,
    InstanceFailedError,
    InstanceStatus,
    MakeSpec,
)
from runtime.instances import Instance, InstanceKeeper, SupervisedApp

log = get_logger(__name__)


class Supervisor(InstanceKeeper):
    """The process and docker runtimes' policy (see the module docstring)."""

    async def start(self) -> None:
        """Nothing to prepare: the backend connects on first use."""

    # -- queries -----------------------------------------------------------

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

    def _status_rows(self, st: SupervisedApp) -> tuple[list[InstanceStatus], int]:
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
        return rows, st.backoff.restarts

    def instance_refs(self) -> list[InstanceRef]:
        """Every live instance of every app (for the usage sampler)."""
        return [i.ref for st in self._apps.values() for i in st.live.values()]

    # -- deploy, scale, stop, adopt ---------------------------------------------

    async def _deploy_locked(self, st: SupervisedApp, release: int, make_spec: MakeSpec, scale: int,
                             rep: Reporter) -> None:
        """The health-checked swap: new instances up and healthy, then the old retired."""
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

    async def _scale_locked(self, st: SupervisedApp, n: int, rep: Reporter) -> None:
        """Retire the slots above ``n``, start (health-checked) the missing ones."""
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

    async def purge(self, app: str) -> None:
        """After ``stop`` on apps:destroy: nothing beyond the builder's own images here."""

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
                self._retire(st, [Instance(ref) for ref in strays])
                st.log.system(f"still crashed after the server restart (v{release}): "
                              "push, restart or scale to start it again")
                self._refresh(st)
                return
            healthy = await asyncio.gather(*(self._healthy(ref) for ref in keep.values()))
            for ref, ok in zip(keep.values(), healthy, strict=True):
                if ok:
                    st.live[ref.index] = inst = Instance(ref, up_since=self._clock())
                    self._watch(st, inst)
                else:
                    strays.append(ref)
            self._retire(st, [Instance(ref) for ref in strays])
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
