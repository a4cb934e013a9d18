"""The platform's observers in one place: metrics, alerts and crew webhooks.

``Telemetry.handle`` is the daemon's event sink. It takes the platform's events
(``crewship.events``) and the supervisor's (``runtime.events``), updates the Prometheus
metrics, raises alerts through ``AlertGate`` (one per failure, never a storm) and
delivers the kickoff webhooks (reference C.7): ``crewWebhookUrl`` when a kickoff
finished, and the task/step webhooks the kickoff service relays from the runner. Every delivery
runs in the background (``crewship.service.notify``): nothing here waits on a receiver.
"""

from __future__ import annotations

import asyncio
from typing import Any

from crewship import log
from crewship.config import Settings
from crewship.events import (
    BackupFinished,
    DeployFinished,
    HumanInputDue,
    KickoffFinished,
    WebhookDue,
)
from crewship.service.metrics import Metrics, StateSource
from crewship.service.notify import Deliverer
from crewship.service.otlp import TraceExport
from crewship.store.alerts import AlertGate, AlertStore
from crewship.store.apps import AppStore
from crewship.store.state import now
from runtime.events import AppCrashed, InstanceExited
from runtime.supervisor import Supervisor

logger = log.get("crewship.service.telemetry")


def crew_webhook_body(event: KickoffFinished) -> dict[str, Any]:
    """The ``crewWebhookUrl`` payload (C.7), plus ``state`` and ``error`` for failed runs."""
    usage = event.token_usage or {}
    return {
        "kickoff_id": event.kickoff_id, "result": event.result,
        "result_json": event.result_json,
        "token_usage": {k: int(usage.get(k) or 0)
                        for k in ("total_tokens", "prompt_tokens", "completion_tokens")},
        "meta": event.meta, "state": event.state, "error": event.error,
    }


class Telemetry:
    def __init__(self, settings: Settings, metrics: Metrics, alerts: AlertStore,
                 deliverer: Deliverer | None = None, gate: AlertGate | None = None,
                 otlp: TraceExport | None = None) -> None:
        self.settings = settings
        self.otlp = otlp  # kickoff traces to an OpenTelemetry collector (optional)
        self.metrics = metrics
        self.alerts = alerts
        self.deliverer = deliverer or Deliverer(settings.url_policy())
        self.gate = gate or AlertGate()

    def handle(self, event: object) -> None:
        if isinstance(event, DeployFinished):
            self._deploy(event)
        elif isinstance(event, KickoffFinished):
            self._kickoff(event)
        elif isinstance(event, WebhookDue):
            self._webhook(event.kind, event.url, event.body)
        elif isinstance(event, HumanInputDue):
            self._human_input(event)
        elif isinstance(event, BackupFinished):
            self._backup(event)
        elif isinstance(event, InstanceExited):
            self.metrics.crashes.labels(event.app).inc()
            if event.reason == "memory_exceeded":
                self._memory_exceeded(event)
        elif isinstance(event, AppCrashed):
            self.metrics.crashed.labels(event.app).inc()
            self.alert("crashed", event.app, event.release,
                       f"{event.app} is crashed: {event.crashes} crashes in a row; it is not "
                       f"restarted until a deploy, 'restart {event.app}' or 'ps:scale'",
                       {"crashes": event.crashes})

    def _memory_exceeded(self, event: InstanceExited) -> None:
        """One ``memory_exceeded`` alert per run of them (the gate holds the rest)."""
        self.metrics.memory_exceeded.labels(event.app).inc()
        self.alert("memory_exceeded", event.app, event.release,
                   f"{event.app} instance {event.instance_id} was stopped for going over its "
                   f"memory limit (see 'ps:limits {event.app}'); it is restarted with backoff",
                   {"instance": event.instance_id, "status": event.status})

    def _deploy(self, event: DeployFinished) -> None:
        self.metrics.deploy_finished(event.app, event.kind, event.outcome, event.duration,
                                     event.cache_hit)
        details = {"kind": event.kind, "user": event.user,
                   "duration_s": round(event.duration, 3)}
        if event.outcome == "succeeded":
            self.gate.recovered(event.app)
            self.alert("deployed", event.app, event.release,
                       f"{event.app} v{event.release} is live", details, key=f"v{event.release}")
            return
        self.alert("deploy_failed", event.app, event.release,
                   f"deploy of {event.app} v{event.release} failed: {event.error}",
                   {**details, "error": event.error}, key=f"v{event.release}")

    def _kickoff(self, event: KickoffFinished) -> None:
        self.metrics.kickoff_finished(event.app, event.state, event.execution_time,
                                      event.token_usage)
        url = event.webhooks.get("crew")
        if url:
            self._webhook("crew", url, crew_webhook_body(event))
        if self.otlp is not None and event.trace:
            asyncio.get_running_loop().run_in_executor(
                None, self.otlp.export, event.app, event.kickoff_id, event.state, event.trace)
        if event.state == "FAILURE":
            self.alert("kickoff_failed", event.app, event.release,
                       f"kickoff {event.kickoff_id} of {event.app} failed: {event.error}",
                       {"kickoff_id": event.kickoff_id, "error": event.error,
                        "execution_time": event.execution_time, "meta": event.meta},
                       key=event.kickoff_id)

    def _webhook(self, kind: str, url: str, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> None:
        def done(ok: bool) -> None:
            self.metrics.webhooks.labels(kind, "delivered" if ok else "failed").inc()
        self.deliverer.post(url, body, what=f"{kind}_webhook", done=done, headers=headers)

    def _human_input(self, event: HumanInputDue) -> None:
        """A kickoff waits for a human (C.5): its ``humanInputWebhook`` (with its own
        authentication) and its task webhook hear of it."""
        if event.url:
            self._webhook("human_input", event.url, event.body, event.headers)
        if event.task_url:
            self._webhook("task", event.task_url, event.body)

    def _backup(self, event: BackupFinished) -> None:
        """A failed backup: one ``backup_failed`` alert per run of failures, server-wide."""
        if event.outcome != "failed":
            return
        receivers = self.alerts.receivers_anywhere("backup_failed")
        held = self.gate.admit("backup_failed", "", event.failing_since or event.backup)
        if not receivers or held is None:
            return
        for receiver in receivers:
            body = {"event": "backup_failed", "app": None, "release": None,
                    "message": f"backup {event.backup} failed: {event.error}", "at": now(),
                    "alert_id": receiver.id, "url": self.settings.http_base,
                    "details": {"backup": event.backup, "error": event.error,
                                "trigger": event.trigger,
                                "failing_since": event.failing_since}, "suppressed": held}

            def done(ok: bool) -> None:
                self.metrics.alerts.labels("backup_failed", "delivered" if ok else "failed").inc()
            self.deliverer.post(receiver.url, body, what="alert backup_failed", done=done)
        logger.info("alert_raised", alert="backup_failed", receivers=len(receivers),
                    backup=event.backup)

    def alert(self, name: str, app: str, release: int | None, message: str,
              details: dict[str, Any], *, key: str = "") -> None:
        """Send alert ``name`` to every receiver of ``app`` that wants it (gated)."""
        receivers = self.alerts.receivers(app, name)
        if not receivers:
            return
        held = self.gate.admit(name, app, key)
        if held is None:
            logger.info("alert_suppressed", alert=name, app=app, release=release)
            return
        for receiver in receivers:
            body = {"event": name, "app": app,
                    "release": f"v{release}" if release is not None else None,
                    "message": message, "at": now(), "alert_id": receiver.id,
                    "url": self.settings.app_url(app), "details": details, "suppressed": held}

            def done(ok: bool, name: str = name) -> None:
                self.metrics.alerts.labels(name, "delivered" if ok else "failed").inc()
            self.deliverer.post(receiver.url, body, what=f"alert {name}", done=done)
        logger.info("alert_raised", alert=name, app=app, release=release,
                    receivers=len(receivers), suppressed=held)

    async def aclose(self) -> None:
        await self.deliverer.aclose()
        if self.otlp is not None:
            await asyncio.to_thread(self.otlp.close)  # what is batched still goes out


def runtime_states(apps: AppStore, supervisor: Supervisor) -> StateSource:
    """What ``crewship_instances`` and ``crewship_apps`` report, read at scrape time."""
    def states() -> list[tuple[str, str, list[str], int]]:
        found: list[tuple[str, str, list[str], int]] = []
        for app in apps.all():
            status = supervisor.status(app.name)
            found.append((app.name, status.state, [i.state for i in status.instances],
                          status.restarts))
        return found
    return states
