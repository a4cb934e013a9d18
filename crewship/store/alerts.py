"""Alerts: per-app receivers (SQLite) and the gate that turns failures into single alerts.

Events: ``deploy_failed`` (a release did not go live), ``crashed`` (a crash loop made the
app crashed), ``kickoff_failed`` (a kickoff ended FAILURE), ``deployed`` (a release
went live; opt-in) and ``backup_failed`` (a backup of the whole server failed; opt-in, sent
once per run of failures to every receiver of any app that asked for it). The gate is
pure (the clock is injected):

- a failed deploy or a failed kickoff is one alert, however often it is reported;
- ``crashed`` is raised once per crash loop, again only after the app was healthy again
  (a release went live) or after ``quiet`` seconds without a crash;
- per app and event at most ``burst`` alerts in ``per`` seconds; the ones held back are
  counted and reported as ``suppressed`` in the next alert that goes out.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crewship.errors import InvalidInputError, NotFoundError
from crewship.model import App
from crewship.store.state import Database, now
from crewship.urls import validate_url

EVENTS = ("deploy_failed", "crashed", "kickoff_failed", "deployed", "backup_failed",
          "memory_exceeded")
DEFAULT_EVENTS = ("deploy_failed", "crashed", "kickoff_failed", "memory_exceeded")
MAX_RECEIVERS = 20
SEEN_KEPT = 10_000


def parse_events(text: str | None) -> tuple[str, ...]:
    """``deploy_failed,crashed``: known names, deduplicated, in EVENTS order."""
    if not text:
        return DEFAULT_EVENTS
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(EVENTS))
    if unknown or not names:
        raise InvalidInputError(f"unknown alert event(s) {', '.join(unknown) or '(none)'}: "
                                f"use {', '.join(EVENTS)}")
    return tuple(e for e in EVENTS if e in names)


@dataclass(frozen=True)
class Alert:
    id: int
    app: str
    url: str
    events: tuple[str, ...]
    created_by: str
    created_at: str

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "app": self.app, "url": self.url, "events": list(self.events),
                "created_by": self.created_by, "created_at": self.created_at}


class AlertStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def all(self, app_name: str) -> list[Alert]:
        rows = self.db.all("SELECT alerts.*, apps.name AS app FROM alerts JOIN apps "
                           "ON apps.id = app_id WHERE apps.name = ? ORDER BY alerts.id", app_name)
        return [Alert(r["id"], r["app"], r["url"], tuple(r["events"].split(",")),
                      r["created_by"], r["created_at"]) for r in rows]

    def add(self, app: App, url: str, events: tuple[str, ...], user: str) -> Alert:
        validate_url(url, "the alert URL")
        if len(self.all(app.name)) >= MAX_RECEIVERS:
            raise InvalidInputError(f"{app.name} has {MAX_RECEIVERS} alert receivers already")
        alert_id = self.db.execute(
            "INSERT INTO alerts (app_id, url, events, created_by, created_at) "
            "VALUES (?, ?, ?, ?, ?)", app.id, url, ",".join(events), user, now())
        return next(a for a in self.all(app.name) if a.id == alert_id)

    def remove(self, app: App, alert_id: int) -> Alert:
        found = next((a for a in self.all(app.name) if a.id == alert_id), None)
        if found is None:
            raise NotFoundError(f"{app.name} has no alert {alert_id} (see 'alerts {app.name}')")
        self.db.execute("DELETE FROM alerts WHERE id = ?", alert_id)
        return found

    def receivers(self, app_name: str, event: str) -> list[Alert]:
        return [a for a in self.all(app_name) if event in a.events]

    def receivers_anywhere(self, event: str) -> list[Alert]:
        """Receivers of ``event`` on any app, one per URL (server-wide events)."""
        rows = self.db.all("SELECT alerts.*, apps.name AS app FROM alerts JOIN apps "
                           "ON apps.id = app_id ORDER BY alerts.id")
        found: dict[str, Alert] = {}
        for r in rows:
            events = tuple(r["events"].split(","))
            if event in events and r["url"] not in found:
                found[r["url"]] = Alert(r["id"], r["app"], r["url"], events, r["created_by"],
                                        r["created_at"])
        return list(found.values())


class AlertGate:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *, burst: int = 10,
                 per: float = 60.0, quiet: float = 600.0) -> None:
        self._clock = clock
        self.burst, self.per, self.quiet = burst, per, quiet
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._loop_since: dict[str, float] = {}      # app -> last crash of the current loop
        self._sent: dict[tuple[str, str], deque[float]] = {}
        self._held: dict[tuple[str, str], int] = {}

    def admit(self, event: str, app: str, key: str = "") -> int | None:
        """None: no alert. Otherwise an alert goes out; the number it held back before it."""
        if event == "crashed" and not self._new_loop(app):
            return None
        if key:
            if (event, app, key) in self._seen:
                return None
            self._seen[(event, app, key)] = None
            while len(self._seen) > SEEN_KEPT:
                self._seen.popitem(last=False)
        return self._rate(event, app)

    def recovered(self, app: str) -> None:
        """A release went live: the app's crash loop, if any, is over."""
        self._loop_since.pop(app, None)

    def _new_loop(self, app: str) -> bool:
        moment = self._clock()
        last = self._loop_since.get(app)
        self._loop_since[app] = moment
        return last is None or moment - last >= self.quiet

    def _rate(self, event: str, app: str) -> int | None:
        moment = self._clock()
        sent = self._sent.setdefault((event, app), deque())
        while sent and moment - sent[0] >= self.per:
            sent.popleft()
        if len(sent) >= self.burst:
            self._held[(event, app)] = self._held.get((event, app), 0) + 1
            return None
        sent.append(moment)
        return self._held.pop((event, app), 0)
