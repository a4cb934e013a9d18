"""A run's webhooks: what the runner is told to record, and relaying what it recorded.

A kickoff's task/step webhooks (``taskWebhookUrl``, ``stepWebhookUrl``), its streamed
events (``webhooks``) and a human-input webhook are the daemon's to deliver: the runner
(the crew's own process) never sees a URL or a credential. ``run_body`` is what
``POST /runs`` gets for a kickoff row (which kinds of bodies to record, never where they
go); ``hook_urls`` the URLs the row stored; ``WebhookRelay`` turns the bodies the driver
fetched (crewship/service/dispatch.py) into ``WebhookDue`` events, each once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from crewship.events import WebhookDue

Relay = Callable[[WebhookDue], None]


def run_body(row: sqlite3.Row) -> dict[str, Any]:
    """What ``POST /runs`` gets for a kickoff row. For task/step webhooks and streamed
    events the runner only records the bodies (it never sees a URL or a credential); the
    driver fetches and relays them."""
    body: dict[str, Any] = {"kickoff_id": row["id"], "inputs": json.loads(row["inputs_json"])}
    hooks = hook_urls(row)
    human = row["human_webhook"]
    if hooks or human:  # a resume may bring task/step webhooks of its own
        kinds = ("task", "step") if human else [kind for kind in hooks if kind != "event"]
        body["webhooks"] = {kind: True for kind in kinds}
        if "event" in hooks:
            body["webhooks"]["events"] = _stored_hooks(row)["events"]["events"]
        body["meta"] = json.loads(row["meta_json"]) if row["meta_json"] else None
    return body


def _stored_hooks(row: sqlite3.Row) -> dict[str, Any]:
    hooks = json.loads(row["webhooks_json"]) if row["webhooks_json"] else {}
    return hooks if isinstance(hooks, dict) else {}


def hook_urls(row: sqlite3.Row) -> dict[str, str]:
    """The task/step webhook URLs of a kickoff row and, as ``event``, the URL its streamed
    events go to (each checked when it was accepted)."""
    hooks = _stored_hooks(row)
    urls = {k: str(v) for k, v in hooks.items() if k in ("task", "step") and v}
    stream = hooks.get("events")
    if isinstance(stream, dict) and stream.get("url"):
        urls["event"] = str(stream["url"])
    return urls


class WebhookRelay:
    """Turns the webhook bodies a runner recorded into ``WebhookDue`` events, each once.

    The runner numbers them from 0; ``seen`` counts those already relayed, so a poll
    (``start``: the number it asked from) never repeats one, even when polls overlap.
    The URLs stay here: the runner (the crew's own process) never sees them. ``track``:
    the runner records bodies (also before any URL is known: a resume may bring URLs, and
    only what comes after it goes there).
    """

    def __init__(self, app: str, kickoff_id: str, urls: dict[str, str], sink: Relay,
                 track: bool = False) -> None:
        self.app, self.kickoff_id, self.urls, self.sink = app, kickoff_id, urls, sink
        self.track = track or bool(urls)
        self.seen = 0

    def take(self, events: Any, *, start: int) -> None:
        if not self.track or not isinstance(events, list):
            return
        for event in events[max(0, self.seen - start):]:
            self.seen += 1
            kind = event.get("kind") if isinstance(event, dict) else None
            body = event.get("body") if isinstance(event, dict) else None
            if isinstance(kind, str) and kind in self.urls and isinstance(body, dict):
                self.sink(WebhookDue(self.app, self.kickoff_id, kind, self.urls[kind], body))
