"""The reading side of the swarm runtime: each app's tasks as crewship sees them.

``SwarmWatch`` (the base of ``runtime.swarm.SwarmSupervisor``; what it shares with the
process and docker runtimes' policy is runtime/supervision.py) holds per app the service's
tasks, read every second by a watcher (``_observe``): a task that ended is reported
(``InstanceExited`` for a crash, ``InstanceRetired`` for one a rollout or scale-down
stopped) and crewship's crash-loop rule applied to the current rollout's crashes; a log
follower (runtime/swarmlogs.py) writes the service's output into the app's log. The
queries the service layer makes (``endpoints``, ``endpoint``, ``status``, ``nodes``, ...)
are answered from that picture, without a Docker call on the request path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from crewship import dockerd
from crewship.config import Layout
from crewship.dockerd import short
from crewship.errors import CrewshipError
from crewship.errors import NotFoundError as _NotFound
from crewship.log import get as get_logger
from runtime.backend import STATUS_UNKNOWN, BackendError, InstanceRef
from runtime.backoff import BackoffPolicy
from runtime.container import exit_status
from runtime.events import (
    Endpoint,
    InstanceExited,
    InstanceRetired,
    InstanceStatus,
    SupervisorEvent,
)
from runtime.logs import AppLog
from runtime.supervision import AppRecord, SupervisorBase, T
from runtime.swarmlogs import ServiceLogFollower
from runtime.swarmspec import STARTING_STATES, Task, Timings, parse_task, service_name

if TYPE_CHECKING:
    from runtime.registry import Registry

log = get_logger(__name__)

POLL = 1.0          # seconds between two reads of an app's tasks


# update_service's arguments -> the stored spec's fields (``_update(keep=True)``)
_SPEC_FIELDS = {"labels": "Labels", "mode": "Mode", "task_template": "TaskTemplate",
                "update_config": "UpdateConfig", "rollback_config": "RollbackConfig",
                "endpoint_spec": "EndpointSpec"}


@dataclass(eq=False, kw_only=True)
class SwarmApp(AppRecord):
    service: str
    generation: str = ""
    tasks: dict[str, Task] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    served: set[str] = field(default_factory=set)   # tasks seen running (healthy)
    crashes: deque[float] = field(default_factory=deque)
    crashed: bool = False
    restarts: int = 0
    seeded: bool = False
    watcher: asyncio.Task[None] | None = None
    follower: ServiceLogFollower | None = None


class SwarmWatch(SupervisorBase[SwarmApp]):
    """Per-app task bookkeeping and the queries answered from it."""

    def __init__(self, layout: Layout, registry: Registry, *, bind: str = "127.0.0.1",
                 health_timeout: float = 30.0, drain_timeout: float = 60.0,
                 restart_delay: float = 1.0, backoff: BackoffPolicy | None = None,
                 on_event: Callable[[SupervisorEvent], None] | None = None,
                 client: docker.DockerClient | None = None) -> None:
        super().__init__(layout, backoff, on_event)
        self.registry = registry
        self._bind = bind
        self._timings = Timings(health_timeout, drain_timeout, restart_delay)
        self._client = client
        # whose services these are: the docker runtime's hash of the data dir
        self.server = dockerd.server_id(layout.root)
        self._nodes: dict[str, tuple[str, str]] = {}   # node id -> (hostname, address)
        self._published: dict[str, str] = {}          # local image id -> registry digest ref

    # -- plumbing ----------------------------------------------------------------

    async def _docker(self) -> docker.DockerClient:
        if self._client is None:
            self._client = await asyncio.to_thread(dockerd.connect, 60.0, BackendError)
        return self._client

    async def _api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = await self._docker()
        try:
            return await asyncio.to_thread(getattr(client.api, method), *args, **kwargs)
        except docker.errors.NotFound:
            raise
        except docker.errors.DockerException as exc:
            raise BackendError(f"swarm: {method} failed: {short(exc)}") from exc

    async def _service(self, st: SwarmApp) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._api("inspect_service", st.service)
        except docker.errors.NotFound:
            return None
        return found

    async def _read_tasks(self, st: SwarmApp) -> list[Task]:
        try:
            raw = await self._api("tasks", filters={"service": st.service})
        except docker.errors.NotFound:
            return []
        return [t for t in (parse_task(r) for r in raw) if t is not None]

    async def _update(self, st: SwarmApp, *, keep: bool = False, **changes: Any) -> None:
        """``update_service`` at the service's current version: Swarm bumps the version
        itself while it rolls out, so "update out of sequence" means read and try again.

        ``keep``: everything but ``changes`` goes back exactly as stored. (The SDK's
        ``fetch_current_spec`` reads the spec with Docker's defaults filled in, and Swarm
        takes a task template with defaults added for a new one: it replaced every running
        task on a mere scale-up.)"""
        for attempt in range(10):
            svc = await self._service(st)
            if svc is None:
                raise _NotFound(f"{st.name}'s service {st.service} is gone: push to deploy "
                                "again")
            stored = svc.get("Spec") or {}
            kept = {name: stored.get(field) for name, field in _SPEC_FIELDS.items()} \
                if keep else {}
            try:
                await self._api("update_service", svc["ID"], svc["Version"]["Index"],
                                name=st.service, **{**kept, **changes})
                return
            except BackendError as exc:
                if "out of sequence" not in str(exc) or attempt == 9:
                    raise
            await asyncio.sleep(0.2)

    async def _set_replicas(self, st: SwarmApp, n: int) -> None:
        await self._update(st, keep=True, mode={"Replicated": {"Replicas": n}})

    # -- queries ---------------------------------------------------------------

    def secret_of(self, ref: InstanceRef) -> str | None:
        st = self._apps.get(ref.app)
        task = next((t for t in st.tasks.values() if t.instance_id == ref.id), None) if st \
            else None
        return self._secrets.get(task.secret_name) if task else None

    def _endpoint(self, task: Task) -> Endpoint:
        return Endpoint(task.instance_id, self._host(task), task.port,
                        self._secrets.get(task.secret_name) or "")

    def _host(self, task: Task) -> str:
        if self._bind != "0.0.0.0":
            return self._bind
        return self._nodes.get(task.node_id, ("", "127.0.0.1"))[1]

    def endpoints(self, app: str) -> list[Endpoint]:
        st = self._apps.get(app)
        if st is None or st.crashed:
            return []
        return [self._endpoint(t) for t in sorted(st.tasks.values(), key=lambda t: t.slot)
                if t.serving]

    def endpoint(self, app: str, instance_id: str) -> Endpoint | None:
        st = self._apps.get(app)
        for task in st.tasks.values() if st else ():
            if task.instance_id == instance_id and task.state == "running":
                return self._endpoint(task)
        return None

    def _status_rows(self, st: SwarmApp) -> tuple[list[InstanceStatus], int]:
        rows = []
        for task in sorted(st.tasks.values(), key=lambda t: (t.slot, -t.changed_at)):
            if task.state == "running":
                state = "up" if task.desired == "running" else "stopping"
            elif task.state in STARTING_STATES and task.desired == "running":
                state = "starting"
            else:
                continue
            restarts = sum(1 for t in st.tasks.values() if t.slot == task.slot and t.crashed
                           and t.generation == task.generation)
            rows.append(InstanceStatus(task.instance_id, task.port, None, state,
                                       task.changed_at, restarts,
                                       node=self._nodes.get(task.node_id, (task.node_id,))[0]))
        return rows, st.restarts

    def instance_refs(self) -> list[InstanceRef]:
        return [InstanceRef(t.instance_id, t.app, t.release, t.slot, self._host(t), t.port,
                            None, t.changed_at)
                for st in self._apps.values() for t in st.tasks.values() if t.serving]

    def container_of(self, instance_id: str) -> str | None:
        """The container of a task (on whichever node runs it), for the usage sampler."""
        for st in self._apps.values():
            for task in st.tasks.values():
                if task.instance_id == instance_id and task.container_id:
                    return task.container_id
        return None

    async def nodes(self) -> list[dict[str, Any]]:
        """The swarm's nodes: state, availability, role, address, labels, crew tasks."""
        raw = await self._api("nodes")
        counts: dict[str, int] = {}
        for st in self._apps.values():
            for task in st.tasks.values():
                if task.serving:
                    counts[task.node_id] = counts.get(task.node_id, 0) + 1
        out = []
        for node in raw:
            spec, status = node.get("Spec") or {}, node.get("Status") or {}
            out.append({"id": node["ID"][:12],
                        "hostname": (node.get("Description") or {}).get("Hostname", ""),
                        "role": spec.get("Role", ""), "state": status.get("State", ""),
                        "availability": spec.get("Availability", ""),
                        "address": status.get("Addr", ""), "labels": spec.get("Labels") or {},
                        "manager": bool(node.get("ManagerStatus")),
                        "leader": bool((node.get("ManagerStatus") or {}).get("Leader")),
                        "crew_tasks": counts.get(node["ID"], 0)})
        return sorted(out, key=lambda n: n["hostname"])

    # -- watching tasks --------------------------------------------------------------

    def _watch(self, st: SwarmApp, since: float) -> None:
        if st.watcher is None:
            st.watcher = self._spawn(self._watch_loop(st))
        if st.follower is None and self._client is not None:
            st.follower = ServiceLogFollower(self._client, st.service,
                                             self._layout.app_logs(st.name),
                                             lambda task: self._task_name(st, task), since)
            st.follower.start()

    def _unwatch(self, st: SwarmApp) -> None:
        if st.watcher is not None:
            st.watcher.cancel()
            st.watcher = None
        if st.follower is not None:
            st.follower.stop()
            st.follower = None

    def _task_name(self, st: SwarmApp, task_id: str) -> str:
        task = st.tasks.get(task_id)
        return task.name if task else "swarm"

    async def _watch_loop(self, st: SwarmApp) -> None:
        while True:
            try:
                tasks = await self._read_tasks(st)
                await self._learn_nodes(tasks)
                self._observe(st, tasks)
            except CrewshipError as exc:
                log.warning("swarm_tasks_unreadable", app=st.name, error=str(exc))
            await asyncio.sleep(POLL)

    async def _learn_nodes(self, tasks: list[Task]) -> None:
        if all(t.node_id in self._nodes for t in tasks if t.node_id):
            return
        for node in await self._api("nodes"):
            self._nodes[node["ID"]] = ((node.get("Description") or {}).get("Hostname", ""),
                                       (node.get("Status") or {}).get("Addr", "127.0.0.1"))

    def _node_name(self, task: Task) -> str:
        return self._nodes.get(task.node_id, (task.node_id[:12] or "?",))[0]

    def _observe(self, st: SwarmApp, tasks: list[Task]) -> None:
        """Report the tasks that ended since the last look; apply the crash-loop rule."""
        now = time.time()
        if not tasks and any(t.state == "running" for t in st.tasks.values()):
            return  # a read that found nothing while tasks ran: keep what we know
        for task in tasks:
            if task.state == "running" and st.seeded:
                st.served.add(task.id)
            if task.id in st.ended or task.state in ("running", *STARTING_STATES):
                continue
            st.ended.add(task.id)
            current = task.generation == st.generation
            if task.crashed and current and now - task.changed_at <= self._policy.window:
                st.crashes.append(task.changed_at)
                st.restarts += st.seeded
            if task.id not in st.served:
                continue  # history, or never served: no kickoff ran there
            st.served.discard(task.id)
            status = exit_status(task.exit_code) if task.exit_code is not None \
                else STATUS_UNKNOWN
            if task.crashed:
                st.log.system(f"{task.name} on {self._node_name(task)} {why(task)}; "
                              "Swarm restarts it")
                self._emit(InstanceExited(st.name, task.instance_id, task.release, status))
            else:
                self._emit(InstanceRetired(st.name, task.instance_id, task.release, status))
        if not st.seeded:  # a restarted daemon: what runs now may carry kickoffs
            st.served.update(t.id for t in tasks if t.state == "running")
        st.tasks = {t.id: t for t in tasks}
        st.seeded = True
        self._crash_rule(st, now)
        self._refresh(st)

    def _crash_rule(self, st: SwarmApp, now: float) -> None:
        """``crash_limit`` crashes of the current rollout in the window: replicas 0, crashed."""
        while st.crashes and now - st.crashes[0] > self._policy.window:
            st.crashes.popleft()
        if not st.crashed and not st.deploying and len(st.crashes) >= self._policy.max_crashes:
            st.crashed = True
            self._spawn(self._set_replicas(st, 0))
            self._report_crash_loop(st, len(st.crashes))

    # -- bookkeeping -------------------------------------------------------------------

    def _new_app(self, app: str) -> SwarmApp:
        return SwarmApp(app, AppLog(self._layout.app_logs(app)),
                        service=service_name(self.server, app))

    def _crashed(self, st: SwarmApp) -> bool:
        return st.crashed

    def _running(self, st: SwarmApp) -> bool:
        return any(t.serving for t in st.tasks.values())

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = super()._spawn(coro)
        task.add_done_callback(log_failure)
        return task


def replicas(service: dict[str, Any]) -> int:
    mode = (service.get("Spec") or {}).get("Mode") or {}
    return int((mode.get("Replicated") or {}).get("Replicas", 0))


def why(task: Task) -> str:
    if "unhealthy" in task.error:
        return "failed its health check"
    if task.exit_code is not None and task.state in ("failed", "complete"):
        code = exit_status(task.exit_code)
        return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    return task.error or task.state


def log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("swarm_background_failed", error=str(task.exception()))
