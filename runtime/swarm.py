"""SwarmSupervisor: each app is a Docker Swarm service; Swarm schedules, restarts and rolls out.

The process and docker runtimes pair a ``Backend`` (mechanism) with crewship's own
``Supervisor`` (policy). On a swarm the policy is Swarm's, so this class stands where the
supervisor stands (``runtime.events.Orchestrator``) and the service layer does not know
the difference:

- deploy (push, config:set, rollback, restart; the lock, state and validation around it
  are runtime/supervision.py's, shared with ``Supervisor``): the release's image is pushed to the
  registry (runtime/registry.py) and the service created or updated to run it by digest
  (runtime/swarmspec.py: replicas = ps:scale, ps:limits, ps:placement, the runner's health
  check as the container's). An update is Swarm's rolling update: one task at a time,
  ``start-first``, ``failure_action=rollback``; the push waits until every task of the new
  rollout is healthy, or raises ``InstanceFailedError`` with the failed task's last lines
  once Swarm rolled back (the old tasks never stopped serving).
- crashes: Swarm's restart policy restarts a task; a watcher per app reads the service's
  task history every second, reports each ended task (``InstanceExited`` for a crash,
  ``InstanceRetired`` for a task a rollout or scale-down stopped) and applies crewship's
  crash-loop rule (``crash_limit`` crashes of the current rollout within ``crash_window``
  -> replicas 0, ``crashed``, one ``AppCrashed``).
- kickoffs: ``endpoints()`` are the service's running (so healthy) tasks, each at its
  node's address and port, with the rollout's channel secret; a draining task stays an
  ``endpoint()`` until it exits, so its runs are collected.
- adopt: a restarted daemon finds the service by name and follows it again; stop
  removes it; purge deletes its images from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import time
import uuid
from typing import Any

import docker
import docker.errors

from crewship.dockerd import epoch
from crewship.errors import CrewshipError, DeployError
from crewship.log import get as get_logger
from crewship.reporter import Reporter
from runtime.backend import BackendError
from runtime.channel import new_secret
from runtime.events import (
    InstanceFailedError,
    InstanceRetired,
    MakeSpec,
)
from runtime.swarmspec import (
    LABEL_APP,
    LABEL_GENERATION,
    LABEL_RELEASE,
    LABEL_SERVER,
    SLOT_SPAN,
    STARTING_STATES,
    UPDATE_FAILED,
    Rollout,
    Task,
    service_options,
    task_template,
)
from runtime.swarmwatch import SwarmApp, SwarmWatch, replicas, why

log = get_logger(__name__)

CONVERGE_POLL = 0.25
SWARM_HINT = ("this Docker daemon is not a swarm manager: run `docker swarm init "
              "--advertise-addr <this machine's address>` (or join this machine to a swarm "
              "as a manager), or run the server with --runtime docker")


def repository(server: str, app: str) -> str:
    """The registry repository of ``app``'s images (``server``: dockerd.server_id)."""
    return f"crewship/{server[:8]}/{app}"


class SwarmSupervisor(SwarmWatch):
    """Apps as Swarm services (see the module docstring)."""


    async def start(self) -> None:
        """Connect, check this is a swarm manager, and run the local registry."""
        client = await self._docker()
        info = await asyncio.to_thread(client.info)
        if not (info.get("Swarm") or {}).get("ControlAvailable"):
            raise BackendError(SWARM_HINT)
        await self.registry.start()

    # -- deploy, restart, scale, stop ----------------------------------------------

    async def _deploy_locked(self, st: SwarmApp, release: int, make_spec: MakeSpec, scale: int,
                             rep: Reporter) -> None:
        spec = make_spec(1, 0)
        if not spec.image:
            raise DeployError(f"v{release} has no image (built for the process runtime): "
                              "push again to build one")
        st.log.system(f"deploy v{release} started")
        image = await self._publish(spec.image, st.name, release, rep)
        rollout = await self._rollout(st, release, image, scale)
        template = task_template(spec, rollout, self.server, self._bind, self._timings)
        options = service_options(spec, rollout, self.server, scale)
        current = await self._service(st)
        rolling = current is not None and replicas(current) > 0
        rep.step(f"Starting v{release}" + (" (Swarm rolling update, start-first)"
                                           if rolling else ""))
        offset, asked = st.log.size(), time.time()
        if current is None:
            await self._api("create_service", template, name=st.service, **options)
        else:
            await self._update(st, task_template=template, **options)
        self._watch(st, since=asked)
        try:
            await self._converge(st, rollout.generation, scale, rolling, asked, rep)
        except InstanceFailedError as exc:
            st.log.system(f"deploy v{release} failed: {exc}")
            await asyncio.sleep(1.0)  # the failed task's last lines reach the log
            exc.output = "\n".join(await asyncio.to_thread(st.log.instance_output,
                                                           exc.instance, 40, offset))
            if current is None:  # nothing served before: nothing is left running
                await self._remove(st)
            self._spawn(self._forget_secrets(st, keep=""))
            raise
        st.release, st.make_spec, st.scale, st.generation = release, make_spec, scale, \
            rollout.generation
        st.crashes.clear()
        st.crashed, st.restarts = False, 0
        rep.step("Health check passed" if scale else "scale is 0: no task started")
        st.log.system(f"v{release} is live ({scale} task(s))")
        log.info("release_live", app=st.name, release=release, scale=scale,
                 service=st.service)
        self._spawn(self._forget_secrets(st, keep=rollout.secret_name))

    async def _publish(self, image: str, app: str, release: int, rep: Reporter) -> str:
        if image not in self._published:
            client = await self._docker()
            self._published[image] = await self.registry.publish(
                client, image, self.repository(app), f"v{release}", rep)
        return self._published[image]

    def repository(self, app: str) -> str:
        return repository(self.server, app)

    async def _rollout(self, st: SwarmApp, release: int, image: str, scale: int) -> Rollout:
        """A fresh channel secret (a Docker secret) and port base for one rollout."""
        secret = new_secret()
        name = f"{st.service}-v{release}-{secrets.token_hex(3)}"
        labels = {LABEL_APP: st.name, LABEL_SERVER: self.server}
        created = await self._api("create_secret", name, secret.encode(), labels=labels)
        self._secrets.put(name, secret)
        return Rollout(uuid.uuid4().hex[:12], self._port_base(scale), str(created["ID"]),
                       name, image)

    def _port_base(self, scale: int) -> int:
        """A base whose slots' port spans (``max(scale, 10)`` of them) are free here and
        used by no task."""
        taken = {t.port for st in self._apps.values() for t in st.tasks.values()}
        width = (max(scale, 10) + 1) * SLOT_SPAN
        for _ in range(200):
            base = random.randrange(20000, 60000 - width)  # noqa: S311 (not a secret)
            ports = range(base + SLOT_SPAN, base + width)
            if not taken.intersection(ports) and all(_free(self._bind, p) for p in ports):
                return base
        raise BackendError(f"no {width} free ports in a row on {self._bind}: free some, or "
                           "scale down")

    async def _converge(self, st: SwarmApp, generation: str, scale: int, rolling: bool,
                        asked: float, rep: Reporter) -> None:
        """Until every task of ``generation`` is healthy, or the rollout failed."""
        loop = asyncio.get_running_loop()
        allowed = self._timings.health_timeout * max(scale, 1) + 30.0
        deadline = loop.time() + allowed
        told: set[str] = set()
        while True:
            tasks = await self._read_tasks(st)
            self._observe(st, tasks)
            mine = [t for t in tasks if t.generation == generation]
            for task in mine:
                if task.serving and task.id not in told:
                    told.add(task.id)
                    rep.info(f"{task.name} healthy on {self._node_name(task)} "
                             f"({self._host(task)}:{task.port})")
            serving = sum(t.serving for t in mine)
            failed = next((t for t in mine if t.crashed), None)
            update = (await self._service(st) or {}).get("UpdateStatus") or {}
            current = epoch(str(update.get("StartedAt") or "")) >= asked - 1.0
            if rolling and current and update.get("State") in UPDATE_FAILED:
                raise self._failed(failed, scale, "Swarm rolled back: "
                                   f"{update.get('Message') or 'update failed'}")
            if not rolling and failed is not None:
                raise self._failed(failed, scale, "")
            done = not rolling or (current and update.get("State") in ("completed", None))
            if serving >= scale and done:
                return
            if loop.time() > deadline:
                if rolling:
                    await self._roll_back(st)
                raise InstanceFailedError(
                    f"health check failed: the rollout did not finish within {allowed:g} s",
                    instance="v?",
                    reason="timed out")
            await asyncio.sleep(CONVERGE_POLL)

    async def _roll_back(self, st: SwarmApp) -> None:
        """``docker service rollback``: back to the spec before this rollout."""
        client = await self._docker()

        def roll_back() -> None:  # docker-py has no rollback keyword: the Engine API's own
            svc = client.api.inspect_service(st.service)
            url = client.api._url("/services/{0}/update", svc["ID"])
            reply = client.api._post_json(url, data=svc["Spec"], params={
                "version": svc["Version"]["Index"], "rollback": "previous"})
            client.api._raise_for_status(reply)

        for _ in range(10):  # Swarm bumps the version while it rolls out: read again
            try:
                await asyncio.to_thread(roll_back)
                return
            except docker.errors.DockerException as exc:
                if "out of sequence" not in str(exc):
                    log.warning("swarm_rollback_failed", app=st.name, error=str(exc))
                    return
            await asyncio.sleep(0.2)

    def _failed(self, task: Task | None, scale: int, note: str) -> InstanceFailedError:
        name = task.name if task else "the new task"
        reason = why(task) if task else "did not become healthy"
        tail = f"; {note}" if note else ""
        return InstanceFailedError(f"health check failed: {name} {reason}{tail}",
                                   instance=name, reason=reason)

    async def _scale_locked(self, st: SwarmApp, n: int, rep: Reporter) -> None:
        """Set the service's replicas and wait until ``n`` tasks of the rollout serve."""
        await self._set_replicas(st, n)
        st.crashed, st.restarts = False, 0
        st.crashes.clear()
        rep.step(f"Scaling {st.service} to {n}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timings.health_timeout + 30.0
        while True:
            tasks = await self._read_tasks(st)
            self._observe(st, tasks)
            serving = sum(t.serving for t in tasks if t.generation == st.generation)
            if serving == n:
                break
            if loop.time() > deadline:
                raise InstanceFailedError(f"scaling to {n}: {serving} task(s) healthy "
                                          "after the health timeout", instance="v?",
                                          reason="timed out")
            await asyncio.sleep(CONVERGE_POLL)
        if n:
            rep.step("Health check passed")

    async def stop(self, app: str) -> None:
        """Remove the app's service (its tasks drain) and forget the app."""
        st = self._apps.get(app) or self._new_app(app)
        async with st.lock:
            await self._remove(st)
            self._unwatch(st)
            await self._forget_secrets(st, keep="", wait=False)
            st.log.system("stopped")
            self._apps.pop(app, None)

    async def _remove(self, st: SwarmApp) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            await self._api("remove_service", st.service)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timings.drain_timeout + 15.0
        while loop.time() < deadline:
            client = await self._docker()
            left = await asyncio.to_thread(client.api.containers, filters={
                "label": f"com.docker.swarm.service.name={st.service}"})
            if not left:
                break
            await asyncio.sleep(CONVERGE_POLL)
        for task in st.tasks.values():
            if task.state == "running" and task.id not in st.ended:
                st.ended.add(task.id)
                self._emit(InstanceRetired(st.name, task.instance_id, task.release, 0))

    async def purge(self, app: str) -> None:
        """apps:destroy: the app's images leave the registry."""
        removed = await self.registry.delete(self.repository(app))
        log.info("registry_images_deleted", app=app, images=removed)

    async def _forget_secrets(self, st: SwarmApp, keep: str, wait: bool = True) -> None:
        """Remove the app's other rollout secrets once no task and no spec uses them.

        Docker refuses to remove a secret only while the service's current spec names it;
        the spec a rollback returns to (``PreviousSpec``) and tasks still running are not
        counted, so a cleanup that ran during a failing rollout used to delete the secret
        of the release Swarm was rolling back to: its tasks kept running, unreachable.
        A delayed cleanup waits for a rollout in progress to end, then spares every
        secret the service's specs or its live tasks name."""
        if wait:
            await asyncio.sleep(self._timings.drain_timeout + 5.0)
            async with st.lock:
                await self._forget_unused(st, keep)
        else:
            await self._forget_unused(st, keep)

    async def _forget_unused(self, st: SwarmApp, keep: str) -> None:
        spared = {keep} | secrets_named(await self._service(st))
        spared |= {t.secret_name for t in await self._read_tasks(st)
                   if t.state in ("running", *STARTING_STATES)}
        found = await self._api("secrets", filters={"label": f"{LABEL_APP}={st.name}"})
        for item in found:
            name = str((item.get("Spec") or {}).get("Name", ""))
            labels = (item.get("Spec") or {}).get("Labels") or {}
            if name in spared or labels.get(LABEL_SERVER) != self.server:
                continue
            with contextlib.suppress(CrewshipError, docker.errors.NotFound):
                await self._api("remove_secret", item["ID"])  # refused while in use
                self._secrets.remove(name)

    async def adopt(self, app: str, release: int, make_spec: MakeSpec, scale: int,
                    *, crashed: bool = False) -> None:
        """Follow the service a previous daemon left, or start it when it is gone."""
        st = self._app(app)
        svc = await self._service(st)
        labels = ((svc or {}).get("Spec") or {}).get("Labels") or {}
        if svc is None or labels.get(LABEL_RELEASE) != str(release):
            st.release, st.make_spec, st.scale = release, make_spec, scale
            if crashed or scale == 0:
                st.crashed = crashed
                self._refresh(st)
                return
            await self.deploy(app, release, make_spec, scale)  # back to the live release
            return
        async with st.lock:
            st.release, st.make_spec, st.scale = release, make_spec, scale
            st.generation = labels.get(LABEL_GENERATION, "")
            self._watch(st, since=time.time())
            self._observe(st, await self._read_tasks(st))
            if crashed:
                st.crashed = True
                await self._set_replicas(st, 0)
            elif replicas(svc) != scale:
                await self._set_replicas(st, scale)
            st.log.system(f"adopted service {st.service} (v{release}, "
                          f"{len(self.endpoints(app))} healthy task(s))")
            self._refresh(st)

    async def stop_orphans(self, spare: frozenset[str] = frozenset()) -> list[str]:
        """Remove this server's services of apps nobody supervises (destroyed mid-deploy)."""
        found = await self._api("services", filters={"label": f"{LABEL_SERVER}={self.server}"})
        gone = []
        for svc in found:
            app = ((svc.get("Spec") or {}).get("Labels") or {}).get(LABEL_APP, "")
            if app and app not in self._apps and app not in spare:
                await self.stop(app)
                gone.append(str(svc["Spec"]["Name"]))
        return gone

    async def aclose(self, stop_instances: bool = False) -> None:
        """Stop watching; services keep running for the next daemon unless asked."""
        for st in list(self._apps.values()):
            if stop_instances:
                with contextlib.suppress(CrewshipError):
                    await self.stop(st.name)
            self._unwatch(st)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.registry.aclose()
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None


def secrets_named(service: dict[str, Any] | None) -> set[str]:
    """The secret names a service's current and previous (rollback) specs mount."""
    names = set()
    for spec in ((service or {}).get("Spec"), (service or {}).get("PreviousSpec")):
        container = ((spec or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
        names |= {str(s.get("SecretName", "")) for s in container.get("Secrets") or []}
    return names - {""}


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


