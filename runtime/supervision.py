"""What the runtime's two policies share: one copy, under both.

``runtime.supervisor.Supervisor`` (the process and docker runtimes: crewship's own policy
over a ``Backend``) and ``runtime.swarm.SwarmSupervisor`` (Swarm's policy) keep one record
per app (``AppRecord``: the desired release, spec factory and scale, the deploy lock, the
state ``status`` shows) and answer the service layer the same way wherever the answer
does not depend on how instances run:

- ``deploy`` validates the scale and runs the subclass's ``_deploy_locked`` under the
  app's lock, the app ``deploying`` meanwhile; ``restart`` deploys the live release
  again; ``scale`` validates, runs ``_scale_locked`` under the lock and records the scale.
- ``status``, ``crash_reason`` and the app state (``_refresh``: deploying, crashed, idle,
  stopped, running, starting) read the record; a subclass says what "crashed" and
  "running" mean for it (``_crashed``, ``_running``) and what its instance rows are.
- a crash loop is reported in one wording (``_report_crash_loop``); background work runs
  as tracked tasks (``_spawn``, cancelled by ``aclose``) and events go to one handler
  (``_emit``), whose failure is logged, never raised.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from crewship.config import Layout
from crewship.errors import ConflictError, InvalidInputError
from crewship.errors import NotFoundError as _NotFound
from crewship.log import get as get_logger
from crewship.reporter import NullReporter, Reporter
from runtime.backoff import BackoffPolicy
from runtime.channel import SecretStore
from runtime.events import (
    AppCrashed,
    AppState,
    InstanceStatus,
    MakeSpec,
    RuntimeStatus,
    SupervisorEvent,
)
from runtime.logs import AppLog

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class AppRecord:
    """One app's desired state and the state ``status`` reports."""

    name: str
    log: AppLog
    release: int | None = None
    make_spec: MakeSpec | None = None
    scale: int = 0
    deploying: bool = False
    state: AppState = "idle"
    since: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


AppT = TypeVar("AppT", bound=AppRecord)


def check_scale(n: int) -> None:
    """A scale is a count of instances: 0 or more."""
    if n < 0:
        raise InvalidInputError(f"scale must be 0 or more, not {n}")


class SupervisorBase(ABC, Generic[AppT]):
    """The app records and the operations every runtime's policy does alike."""

    def __init__(self, layout: Layout, backoff: BackoffPolicy | None,
                 on_event: Callable[[SupervisorEvent], None] | None) -> None:
        self._layout = layout
        self._policy = backoff or BackoffPolicy()
        self._on_event = on_event
        self._secrets = SecretStore(layout.secrets)
        self._apps: dict[str, AppT] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what a subclass says ----------------------------------------------------

    @abstractmethod
    def _new_app(self, app: str) -> AppT:
        """A fresh record for ``app``."""

    @abstractmethod
    def _crashed(self, st: AppT) -> bool:
        """Whether ``app`` was given up as a crash loop."""

    @abstractmethod
    def _running(self, st: AppT) -> bool:
        """Whether at least one instance of ``app`` serves."""

    @abstractmethod
    def _status_rows(self, st: AppT) -> tuple[list[InstanceStatus], int]:
        """The instance rows of ``status`` and the app's restart count."""

    @abstractmethod
    async def _deploy_locked(self, st: AppT, release: int, make_spec: MakeSpec, scale: int,
                             rep: Reporter) -> None:
        """Bring ``release`` up at ``scale`` (the app's lock held)."""

    @abstractmethod
    async def _scale_locked(self, st: AppT, n: int, rep: Reporter) -> None:
        """Run ``n`` instances of the live release (the app's lock held)."""

    # -- queries -------------------------------------------------------------------

    def crash_reason(self, app: str) -> str | None:
        """Why ``app`` takes no kickoffs (crash loop), or None."""
        st = self._apps.get(app)
        if st is None or not self._crashed(st):
            return None
        return (f"{app} crashed ({self._policy.describe()}): see 'logs {app}', "
                f"then push a fix or 'restart {app}'")

    def status(self, app: str) -> RuntimeStatus:
        st = self._apps.get(app)
        if st is None:
            return RuntimeStatus("idle", None, 0, [], 0, time.time())
        rows, restarts = self._status_rows(st)
        return RuntimeStatus(st.state, st.release, st.scale, rows, restarts, st.since)

    # -- deploy, restart, scale ------------------------------------------------------

    async def deploy(self, app: str, release: int, make_spec: MakeSpec, scale: int = 1,
                     report: Reporter | None = None) -> None:
        """Bring ``release`` live at ``scale``, the old one serving until it is healthy;
        raises ``InstanceFailedError`` (the old release still serving)."""
        check_scale(scale)
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

    async def restart(self, app: str, report: Reporter | None = None) -> None:
        """The current release again, through the same health-checked deploy."""
        st = self._deployed(app)
        if st.scale == 0:
            raise ConflictError(f"{app} is scaled to 0: scale it up instead")
        assert st.release is not None
        assert st.make_spec is not None
        await self.deploy(app, st.release, st.make_spec, st.scale, report)

    async def scale(self, app: str, n: int, report: Reporter | None = None) -> None:
        check_scale(n)
        rep = report or NullReporter()
        st = self._deployed(app)
        async with st.lock:
            await self._scale_locked(st, n, rep)
            st.scale = n
            st.log.system(f"scaled to {n}")
            self._refresh(st)

    # -- bookkeeping -------------------------------------------------------------------

    def _app(self, app: str) -> AppT:
        st = self._apps.get(app)
        if st is None:
            st = self._apps[app] = self._new_app(app)
        return st

    def _deployed(self, app: str) -> AppT:
        st = self._apps.get(app)
        if st is None or st.make_spec is None:
            raise _NotFound(f"{app} has no running release: deploy it first")
        return st

    def _refresh(self, st: AppT) -> None:
        state: AppState
        if st.deploying:
            state = "deploying"
        elif self._crashed(st):
            state = "crashed"
        elif st.release is None:
            state = "idle"
        elif st.scale == 0:
            state = "stopped"
        elif self._running(st):
            state = "running"
        else:
            state = "starting"
        if state != st.state:
            st.state, st.since = state, time.time()

    def _report_crash_loop(self, st: AppT, crashes: int) -> None:
        """The app was given up: its log, the daemon's log and one ``AppCrashed``."""
        st.log.system(f"crashed: {self._policy.describe()}, not restarting")
        log.error("app_crashed", app=st.name, release=st.release, crashes=crashes)
        self._emit(AppCrashed(st.name, st.release, crashes))

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
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
