"""The dashboard's HTML: Jinja2 templates with autoescaping, and what they are given.

The templates live in ``crewship/api/templates/dashboard/`` (package data: found the same
from a checkout, ``pip install -e .`` or a wheel), the stylesheet and the log-tail script
in ``crewship/api/static/``. Autoescaping is on for every template, so any text that came
from a user or a crew (inputs, results, errors, span names, log lines) is escaped unless
a template says otherwise, and none does. Nothing here touches the platform:
``crewship/api/dashboard.py`` gathers plain dicts, the functions below shape them into a
page's context (chart geometry from ``charts``/``timeline``) and render it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import jinja2
from starlette.templating import Jinja2Templates

from crewship.api import charts
from crewship.api.timeline import timeline
from crewship.model import human_bytes

STATIC = "/dashboard/static"
ROLLBACK_UNUSABLE = ("failed", "building")


def static_file(name: str) -> bytes:
    """``dashboard.css`` or ``dashboard.js`` from the package."""
    return resources.files("crewship.api").joinpath("static", name).read_bytes()


def when(stamp: Any) -> str:
    """A stored UTC timestamp (``2026-11-26T10:00:00Z``) as ``2026-11-26 10:00:00``."""
    return str(stamp or "-").replace("T", " ").removesuffix("Z")


def clip(value: Any, limit: int = 120) -> str:
    """Inputs (JSON) or an error on one short line."""
    if value is None:
        return ""
    text = " ".join((value if isinstance(value, str) else json.dumps(value)).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def pretty(value: Any) -> str:
    """JSON indented for a ``<pre>`` (text as it is)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def duration(seconds: Any) -> str:
    """``0.42s``, ``12.3s``, ``4m 05s``, ``2h 03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    value = float(seconds)
    if isinstance(seconds, int) and value < 60:
        return f"{seconds}s"
    if value < 10:
        return f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def slug(state: Any) -> str:
    """A state as a CSS class suffix (``PENDING_HUMAN_INPUT`` -> ``pendinghumaninput``)."""
    return "".join(c for c in str(state or "unknown").lower() if c.isalnum())


def percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}%"


def _lenient(fn: Callable[..., str]) -> Callable[..., str]:
    """A filter that reads a field a row lacks (jinja2's Undefined) as None."""
    @functools.wraps(fn)
    def wrapped(value: Any, *args: Any) -> str:
        return fn(None if isinstance(value, jinja2.Undefined) else value, *args)
    return wrapped


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("crewship.api", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    filters: dict[str, Callable[..., str]] = {
        "when": when, "clip": clip, "pretty": pretty, "duration": duration, "slug": slug,
        "percent": percent, "bytes": human_bytes}
    env.filters.update({name: _lenient(fn) for name, fn in filters.items()})
    env.globals.update(static=STATIC)
    return env


TEMPLATES = Jinja2Templates(env=_environment())


def render(name: str, context: Mapping[str, Any]) -> str:
    """``templates/dashboard/NAME`` rendered to a string (for tests and the bench)."""
    return TEMPLATES.get_template(f"dashboard/{name}").render(context)


# ----------------------------------------------------------------- page contexts
def backups_view(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """Admins see the age of the last good backup, and a failure since it (if any)."""
    if status is None:
        return None
    last = status.get("last_good") or {}
    return {"age": status.get("age_seconds"), "failure": status.get("failure"),
            "last_id": last.get("id"), "app_count": len(last.get("apps") or []),
            "interval": int(status["interval_seconds"]), "keep": status.get("keep"),
            "restic": status.get("restic")}


def backups_card(status: dict[str, Any] | None) -> str:
    return render("_backups.html", {"backups": backups_view(status)})


def apps_context(apps: list[dict[str, Any]],
                 backups: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"title": "Apps", "apps": apps, "backups": backups_view(backups),
            "unsandboxed": next((a for a in apps if a.get("sandbox") is False), None)}


def kickoff_charts(window: dict[str, Any]) -> dict[str, Any]:
    """The kickoffs-per-hour bars and the p50/p95 lines of a 24 h window."""
    buckets = window["buckets"]
    labels = charts.hour_labels(len(buckets))
    titles = [f"{when(b['start'])} UTC: {b['count']} kickoffs, {b['failed']} failed, "
              f"p50 {duration(b['p50'])}, p95 {duration(b['p95'])}" for b in buckets]
    return {
        "kickoff_chart": charts.bar_chart([b["count"] for b in buckets],
                                          [b["failed"] for b in buckets], labels, titles),
        "duration_chart": charts.line_chart({"p50": [b["p50"] for b in buckets],
                                             "p95": [b["p95"] for b in buckets]},
                                            labels, duration),
    }


def deploy_chart(days: list[dict[str, Any]]) -> dict[str, Any]:
    labels = [d["day"][5:] for d in days]   # MM-DD
    titles = [f"{d['day']}: {d['count']} releases, {d['failed']} failed" for d in days]
    return charts.bar_chart([d["count"] for d in days], [d["failed"] for d in days], labels,
                            titles)


def kickoff_form(described: dict[str, Any] | None, problem: str | None) -> dict[str, Any]:
    """Fields for the crew's required and optional inputs; without a description (no
    instance can say), a JSON box."""
    if described is None:
        return {"fields": None, "problem": problem}
    required = [{"name": str(n), "required": True, "default": None}
                for n in described.get("inputs") or []]
    optional = [{"name": str(n), "required": False,
                 "default": v if isinstance(v, str) else json.dumps(v)}
                for n, v in (described.get("optional_inputs") or {}).items()]
    return {"fields": required + optional, "problem": problem}


def app_context(status: dict[str, Any], releases: list[dict[str, Any]],
                kickoffs: list[dict[str, Any]], window: dict[str, Any],
                deploys: list[dict[str, Any]], usage_points: list[dict[str, Any]],
                *, can_deploy: bool = False, form: dict[str, Any] | None = None,
                max_scale: int = 10) -> dict[str, Any]:
    """Everything ``app.html`` shows; the action forms only with ``can_deploy``."""
    return {
        "title": status["app"], "status": status, "releases": releases,
        "kickoffs": kickoffs, "window": window, **kickoff_charts(window),
        "deploy_chart": deploy_chart(deploys), "deploy_days": len(deploys),
        "deploys_total": sum(d["count"] for d in deploys),
        "usage_chart_data": charts.usage_chart(usage_points) if usage_points else None,
        "usage_latest": usage_points[-1] if usage_points else None,
        "can_deploy": can_deploy, "form": form or {"fields": None, "problem": None},
        "max_scale": max_scale,
        "rollback_choices": [r for r in releases if not r.get("live")
                             and r.get("status") not in ROLLBACK_UNUSABLE
                             and r.get("build_available", True)],
    }


FINISHED = ("SUCCESS", "FAILURE", "REVOKED")


def kickoff_context(app: str, kickoff: dict[str, Any], spans: list[dict[str, Any]],
                    kickoff_duration: float | None) -> dict[str, Any]:
    """The kickoff page; it reloads itself every 3 s until the kickoff is finished."""
    return {"title": f"Kickoff {str(kickoff['kickoff_id'])[:8]}", "app": app, "k": kickoff,
            "duration": kickoff_duration, "timeline": timeline(spans),
            "refresh": None if kickoff.get("state") in FINISHED else 3}
