"""Wiring: every part of the server in one asyncio loop (floor 4, no business logic)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from builder.env import EnvBuilder
from builder.release import ReleaseBuilder
from crewship import log
from crewship.api.server import HTTPServer
from crewship.config import Layout, Settings
from crewship.errors import InvalidInputError
from crewship.loopwatch import LoopWatchdog
from crewship.service.backups import BackupService, backup_forever, restic_from
from crewship.service.deploys import Deployer
from crewship.service.dispatch import KickoffLimits
from crewship.service.kickoffs import KickoffService
from crewship.service.notify import Deliverer
from crewship.service.otlp import make_export
from crewship.service.platform import Platform
from crewship.service.restore import Rebuilder
from crewship.service.streaming import EventStreamer
from crewship.service.telemetry import Telemetry, runtime_states
from crewship.service.usage import UsageMonitor
from crewship.store.history import Retention, prune_forever
from crewship.store.state import Database, checkpoint_forever
from gitserver.hooks import HookServer
from gitserver.server import SSHGateway, load_host_key
from runtime.backend import Backend
from runtime.backoff import BackoffPolicy
from runtime.events import (
    AppCrashed,
    InstanceExited,
    InstanceRetired,
    SupervisorEvent,
)
from runtime.process import ProcessBackend
from runtime.sandbox import Sandbox
from runtime.supervisor import Supervisor
from runtime.usage import Cgroups, DockerSampler, ProcessSampler, Sampler

logger = log.get("crewship.daemon")

# The first automatic backup of a server without a recent one waits this long after the
# start (or one interval, if shorter), so a restart loop does not make a backup each time.
BACKUP_START_DELAY = 600.0


def register_admin_keys(platform: Platform, keys: tuple[str, ...]) -> list[str]:
    """``CREWSHIP_ADMIN_KEYS``: paths to public key files (or key lines), made admins."""
    added = []
    for index, item in enumerate(keys):
        text = Path(item).read_text() if not item.startswith(("ssh-", "ecdsa-", "sk-")) else item
        for line_no, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
            key = platform.register_admin_key("admin", line, f"admin-{index}-{line_no}")
            added.append(key.fingerprint)
    return added


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout(settings.data_dir.resolve())
        self.layout.ensure()
        self.db = Database(self.layout.state_db)
        self.platform = Platform(settings, self.layout, self.db)
        self.hooks = HookServer(self.platform, self.layout.hook_socket)
        self.host_key = load_host_key(self.layout.host_keys)
        self.ssh = SSHGateway(self.platform, self.hooks, self.host_key)
        self.backend = make_backend(settings, self.layout)
        self.supervisor = Supervisor(self.backend, self.layout,
                                     health_timeout=settings.health_timeout,
                                     drain_timeout=settings.drain_timeout,
                                     on_event=self._on_event,
                                     backoff=BackoffPolicy(base=settings.restart_delay,
                                                           max_crashes=settings.crash_limit,
                                                           window=settings.crash_window))
        envs_dir = settings.envs_dir.resolve() if settings.envs_dir else self.layout.envs
        self.builder = make_builder(settings, self.layout, EnvBuilder(envs_dir, settings.python))
        builder = self.builder
        self.deployer = self.platform.engine.deployer = Deployer(
            settings, self.layout, self.platform.apps_store, self.platform.repos,
            self.platform.releases, self.platform.config_store, builder, self.supervisor)
        metrics = self.platform.metrics
        self.kickoffs = KickoffService(self.db, self.supervisor, KickoffLimits(
            concurrency=settings.kickoff_concurrency, queue=settings.kickoff_queue,
            timeout=settings.kickoff_timeout), streamer=EventStreamer(
                Deliverer(settings.url_policy()),
                done=lambda ok, n: metrics.webhooks.labels(
                    "event", "delivered" if ok else "failed").inc()))
        self.platform.engine.kickoffs = self.kickoffs
        self.telemetry = Telemetry(settings, self.platform.metrics, self.platform.alerts,
                                   otlp=make_export(settings.otlp_endpoint,
                                                    settings.url_policy()))
        self.platform.engine.deployer.on_event = self.kickoffs.on_event = self.telemetry.handle
        self.platform.metrics.states = runtime_states(self.platform.apps_store, self.supervisor)
        self.usage = self.platform.engine.usage = make_usage(settings, self.backend,
                                                             self.supervisor, self.platform)
        self.platform.metrics.usage = self.usage.current
        self.backups = BackupService(settings, self.layout, restic_from(settings, self.layout),
                                     on_event=self.telemetry.handle)
        self.platform.backups = self.backups
        self.rebuilder = Rebuilder(self.layout, self.deployer)
        self._pruner: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self.http = HTTPServer(self.platform, settings.host, settings.http_port)
        self._stop = asyncio.Event()
        self._closers: list[Callable[[], object]] = []
        self._watchdog: LoopWatchdog | None = None

    @property
    def host_fingerprint(self) -> str:
        return str(self.host_key.get_fingerprint("sha256"))

    async def start(self) -> None:
        if self.settings.loop_watchdog > 0:
            self._watchdog = LoopWatchdog(asyncio.get_running_loop(), self.settings.loop_watchdog)
            self._watchdog.start()
        register_admin_keys(self.platform, self.settings.admin_keys)
        for name in self.platform.repos.names():
            self.platform.repos.install_hooks(name)
        assert self.platform.engine.deployer is not None
        await self.platform.engine.deployer.reconcile()  # before any push can arrive
        retention = Retention(self.settings.kickoff_retention_days,
                              self.settings.kickoff_retention_max)
        self._pruner = asyncio.create_task(
            prune_forever(self.db, retention, self.settings.kickoff_prune_interval))
        self._checkpointer = asyncio.create_task(checkpoint_forever(self.db))
        await self.hooks.start()
        await self.http.start()
        await self.ssh.start(self.settings.host, self.settings.ssh_port)
        self.usage.start()
        assert self.platform.engine.deployer is not None
        rebuild = self.rebuilder.pending()
        await self.platform.engine.deployer.restore(skip=rebuild)
        if rebuild:
            logger.info("rebuild_started", apps=rebuild)
            self._background.append(asyncio.create_task(self.rebuilder.run()))
        self._background.append(asyncio.create_task(
            backup_forever(self.backups, first_delay=min(
                BACKUP_START_DELAY, self.settings.backup_interval))))
        self.kickoffs.resume()  # after adoption: runs on adopted instances are followed again
        logger.info("server_started", ssh_port=self.ssh.port, http_port=self.http.port,
                    data_dir=str(self.layout.root), runtime=self.settings.runtime,
                    host_key=self.host_fingerprint, sandbox=self.settings.sandboxed)

    async def close(self) -> None:
        await self.ssh.close()
        await self.hooks.close()
        await self.http.close()
        await self.usage.aclose()
        await self.supervisor.aclose()
        await self.kickoffs.aclose()
        tasks = [t for t in [self._pruner, self._checkpointer, *self._background] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.telemetry.aclose()
        await self.backend.aclose()
        await self.builder.aclose()
        self.db.close()
        if self._watchdog is not None:
            self._watchdog.stop()
        logger.info("server_stopped")

    def _on_event(self, event: SupervisorEvent) -> None:
        if isinstance(event, InstanceExited):
            failed = self.kickoffs.instance_exited(event.app, event.instance_id, event.status)
            logger.info("instance_exited", app=event.app, instance=event.instance_id,
                        status=event.status, kickoffs_failed=failed)
            self.usage.instance_exited(event)
        elif isinstance(event, InstanceRetired):
            self.kickoffs.instance_exited(event.app, event.instance_id, event.status)
        elif isinstance(event, AppCrashed):
            if self.platform.engine.deployer is not None:
                self.platform.engine.deployer.crashed(event.app)
            failed = self.kickoffs.app_crashed(event.app)
            logger.warning("app_crashed", app=event.app, release=event.release,
                           crashes=event.crashes, kickoffs_failed=failed)
        self.telemetry.handle(event)

    def stop(self) -> None:
        self._stop.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.stop)
        await self.start()
        self.banner()
        try:
            await self._stop.wait()
        finally:
            await self.close()

    def banner(self) -> None:
        s = self.settings
        lines = [
            f"crewship is running (data in {self.layout.root})",
            f"  SSH   {s.host}:{self.ssh.port}   host key {self.host_fingerprint}",
            f"  HTTP  http://{s.url_host}:{self.http.port}",
        ]
        if not s.sandboxed:
            lines.append(f"  WARNING: sandbox {s.sandbox_note}")
        else:
            lines.append(f"  sandbox {s.sandbox_note}")
        if not self.platform.accounts.has_admin():
            lines.append("  no admin key yet: run 'crewship admin add-key NAME ~/.ssh/id_ed25519.pub'")
        lines.append(f"  deploy: git remote add crewship ssh://git@{s.url_host}:{self.ssh.port}/APP.git"
                     " && git push crewship main")
        print("\n".join(lines), file=sys.stderr, flush=True)


def make_usage(settings: Settings, backend: Backend, supervisor: Supervisor,
               platform: Platform) -> UsageMonitor:
    """The usage sampler for the backend; it enforces memory limits where nothing else does."""
    sampler: Sampler
    kill, enforcement = None, "docker (memory and cpus per container)"
    if isinstance(backend, ProcessBackend):
        sampler = ProcessSampler()
        if backend.cgroups is None:
            kill, enforcement = backend.kill_for_memory, ""
        else:
            enforcement = "cgroups v2 (memory.max and cpu.max per instance)"
    else:
        from runtime.docker import DockerBackend

        assert isinstance(backend, DockerBackend)
        sampler = DockerSampler(backend.client)
    return UsageMonitor(supervisor, sampler, platform.apps_store,
                        interval=settings.usage_interval,
                        point_interval=settings.usage_point_interval, kill_for_memory=kill,
                        enforcement=enforcement)


def make_backend(settings: Settings, layout: Layout) -> Backend:
    if settings.runtime == "process":
        cgroups = Cgroups()
        usable = cgroups if cgroups.available() else None
        logger.info("limits_enforced", by="cgroups v2" if usable else "usage watchdog (RSS)")
        if settings.insecure_no_sandbox:
            logger.warning("sandbox_disabled", reason="--insecure-no-sandbox")
            return ProcessBackend(layout, cgroups=usable, preload=settings.preload)
        sandbox = Sandbox()
        sandbox.check()  # fails now, with the reason and the fix
        return ProcessBackend(layout, sandbox=sandbox, cgroups=usable, preload=settings.preload)
    if settings.runtime == "docker":
        from runtime.docker import DockerBackend, connect

        return DockerBackend(layout, connect())  # fails now, saying what to start
    raise InvalidInputError(f"the {settings.runtime} runtime is not available yet: "
                            "use --runtime process or --runtime docker")


def make_builder(settings: Settings, layout: Layout, envs: EnvBuilder) -> ReleaseBuilder:
    """Venv releases for the process runtime, images for the docker runtime."""
    if settings.runtime == "docker":
        from builder.image import ImageBuilder

        return ImageBuilder(layout, envs, settings.base_image)
    return ReleaseBuilder(layout, envs)


def run(settings: Settings) -> None:
    log.configure()
    asyncio.run(Daemon(settings).serve_forever())
