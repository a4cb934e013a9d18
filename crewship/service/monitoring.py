"""The platform's use cases for watching apps: execution history and alert receivers.

Composed into ``Platform`` (crewship/service/platform.py) as ``platform.monitoring``,
so the SSH commands and the HTTP routes reach the same checks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crewship import log
from crewship.model import AccessLevel, App, User
from crewship.service.usage import usage_row
from crewship.store.alerts import Alert, AlertStore, parse_events
from crewship.store.history import parse_limit, parse_state
from crewship.store.stats import HistoryStats
from crewship.urls import Policy, check_url, masked

if TYPE_CHECKING:
    from crewship.service.access import AppAccess, Engine

logger = log.get("crewship.service.monitoring")

# The fields of one history row (``kickoffs --json``, ``GET /apps/NAME/kickoffs``).
HISTORY_FIELDS = ("kickoff_id", "state", "status", "release", "instance", "inputs", "meta",
                  "result", "result_json", "tasks", "token_usage", "error", "execution_time",
                  "created_at", "started_at", "finished_at")


@dataclass
class Monitoring:
    """Kickoff history and alert receivers."""

    access: AppAccess
    engine: Engine
    alerts: AlertStore
    stats: HistoryStats
    policy: Policy = field(default_factory=Policy)

    # ------------------------------------------------------------------ history
    def kickoff_history(self, caller: User, name: str, *, limit: int | str | None = 20,
                        state: str | None = None) -> list[dict[str, Any]]:
        """The app's kickoffs, newest first (``kickoffs NAME [-n N] [--state S]``)."""
        app = self.access.app_for(caller, name, AccessLevel.READ)
        return self.app_kickoff_history(app, limit=limit, state=state)

    def app_kickoff_history(self, app: App, *, limit: int | str | None = 20,
                            state: str | None = None) -> list[dict[str, Any]]:
        """The same for a caller holding the app's token (``GET /apps/NAME/kickoffs``)."""
        rows = self.engine.require_kickoffs().history(app, parse_limit(limit), parse_state(state))
        return [{k: row.get(k) for k in HISTORY_FIELDS} for row in rows]

    def kickoff_window(self, caller: User, name: str, *, hours: int = 24,
                       now: dt.datetime | None = None) -> dict[str, Any]:
        """Kickoffs created in the last ``hours`` (all of them, counted by SQLite): count,
        failures, p50/p95 duration of the finished ones, and the same per hour."""
        app = self.access.app_for(caller, name, AccessLevel.READ)
        until = now or dt.datetime.now(dt.UTC)
        return self.stats.kickoffs(app.id, until, dt.timedelta(hours=hours), hours).as_dict()

    def deploys_per_day(self, caller: User, name: str, *, days: int = 30,
                        now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Releases made per UTC day (pushes, rollbacks, restarts, config), oldest first."""
        app = self.access.app_for(caller, name, AccessLevel.READ)
        return self.stats.deploys(app.id, now or dt.datetime.now(dt.UTC), days)

    async def kickoff(self, caller: User, name: str, kickoff_id: str) -> dict[str, Any]:
        """One kickoff as ``GET /status/{id}`` shows it; unknown ids read as not found."""
        app = self.access.app_for(caller, name, AccessLevel.READ)
        return await self.engine.require_kickoffs().status(app, kickoff_id)

    # ------------------------------------------------------------------- traces
    async def kickoff_trace(self, caller: User, name: str, kickoff_id: str) -> list[dict[str, Any]]:
        """The kickoff's spans (crew, flow, method, task, agent, LLM and tool calls) in start
        order, a running kickoff's so far (the dashboard's timeline; the span format:
        ``crewship/service/traces.py``). An unknown id is a NotFoundError."""
        spans: list[dict[str, Any]] = (
            await self.kickoff_trace_live(caller, name, kickoff_id))["spans"]
        return spans

    async def kickoff_trace_live(self, caller: User, name: str,
                                 kickoff_id: str) -> dict[str, Any]:
        """``{"kickoff_id", "state", "spans"}`` (``kickoffs NAME --trace ID``)."""
        app = self.access.app_for(caller, name, AccessLevel.READ)
        return await self.app_kickoff_trace(app, kickoff_id)

    async def app_kickoff_trace(self, app: App, kickoff_id: str) -> dict[str, Any]:
        """The same for a caller holding the app's token (``GET /apps/NAME/kickoffs/{id}/trace``)."""
        return await self.engine.require_kickoffs().live_trace(app, kickoff_id)

    # -------------------------------------------------------------------- usage
    def processes(self, caller: User, name: str) -> list[dict[str, Any]]:
        """``ps NAME``: each instance with what it uses now (None: not sampled yet)."""
        app = self.access.app_for(caller, name, AccessLevel.READ)
        status = self.engine.require_deployer().supervisor.status(app.name)
        monitor = self.engine.usage
        rows = []
        for inst in status.instances:
            usage = monitor.latest(inst.id) if monitor else None
            uptime = int(time.time() - inst.started_at) if inst.started_at else None
            rows.append({"id": inst.id, "state": inst.state, "pid": inst.pid, "port": inst.port,
                         "restarts": inst.restarts, "uptime_seconds": uptime,
                         **usage_row(usage)})
        return rows

    def usage_chart(self, caller: User, name: str) -> list[dict[str, Any]]:
        """The app's 24 h of points (memory and CPU summed over its instances), oldest first."""
        app = self.access.app_for(caller, name, AccessLevel.READ)
        monitor = self.engine.usage
        return [{"at": p.at, "memory_bytes": p.memory_bytes, "cpu_percent": round(p.cpu_percent, 1)}
                for p in (monitor.chart(app.name) if monitor else [])]

    # ------------------------------------------------------------------- alerts
    def _shown(self, caller: User, app: App, alert: Alert) -> Alert:
        """Alert URLs in full only to the app's admins (a URL may hold a secret)."""
        if self.access.level(caller, app) >= AccessLevel.ADMIN:
            return alert
        return dataclasses.replace(alert, url=masked(alert.url))

    def alert_receivers(self, caller: User, name: str) -> list[Alert]:
        app = self.access.app_for(caller, name, AccessLevel.READ)
        return [self._shown(caller, app, a) for a in self.alerts.all(app.name)]

    def add_alert(self, caller: User, name: str, url: str, events: str | None = None) -> Alert:
        """Check the receiver (resolving its host: blocking) and store it."""
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        check_url(url, "the alert URL", self.policy)
        alert = self.alerts.add(app, url, parse_events(events), caller.name)
        logger.info("alert_added", app=app.name, user=caller.name, alert_id=alert.id,
                    events=list(alert.events))
        return alert

    def remove_alert(self, caller: User, name: str, alert_id: int) -> Alert:
        app = self.access.app_for(caller, name, AccessLevel.DEPLOY)
        alert = self.alerts.remove(app, alert_id)
        logger.info("alert_removed", app=app.name, user=caller.name, alert_id=alert_id)
        return self._shown(caller, app, alert)
