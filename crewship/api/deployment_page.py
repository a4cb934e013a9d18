"""The small HTML page ``crewai deploy create|push`` opens: status, releases, URL.

A Jinja2 template with autoescaping (``templates/deployment.html``), no scripts; it shows
nothing secret (no config, no tokens). The link alone is not a credential: the route
(``crewship/api/plus.py``) serves it only to a user API token or a dashboard session that
can read the app.
"""

from __future__ import annotations

from typing import Any

from crewship.api.dashboard_html import TEMPLATES

STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}"
         "table{border-collapse:collapse}td,th{padding:.25rem .75rem;text-align:left;"
         "border-bottom:1px solid #ddd}.Online{color:#070}.Failed{color:#a00}code{font-size:.9em}")


def render_page(name: str, state: dict[str, Any], releases: list[dict[str, Any]]) -> str:
    return TEMPLATES.get_template("deployment.html").render(
        name=name, state=state, status=str(state.get("status", "")), releases=releases,
        style=STYLE)
