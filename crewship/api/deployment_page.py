"""The small HTML page ``crewai deploy create|push`` opens: status, releases, URL.

Plain HTML, no scripts, every value escaped; it shows nothing secret (no config,
no tokens). The link alone is not a credential: the route (``crewship/api/plus.py``)
serves it only to a user API token or a dashboard session that can read the app.
"""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}"
         "table{border-collapse:collapse}td,th{padding:.25rem .75rem;text-align:left;"
         "border-bottom:1px solid #ddd}.Online{color:#070}.Failed{color:#a00}code{font-size:.9em}")


def _row(cells: list[Any], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def render_page(name: str, state: dict[str, Any], releases: list[dict[str, Any]]) -> str:
    status = str(state.get("status", ""))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(name)} - crewship</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(name)}</h1>",
        f"<p>Status: <strong class='{escape(status.split()[0] if status else '')}'>"
        f"{escape(status)}</strong></p>",
    ]
    if state.get("error_message"):
        parts.append(f"<p>Error: {escape(str(state['error_message']))}</p>")
    if state.get("error_suggested_fix"):
        parts.append(f"<p>Fix: {escape(str(state['error_suggested_fix']))}</p>")
    parts += [
        f"<p>Crew API: <code>{escape(str(state.get('public_url', '')))}</code> "
        "(Authorization: Bearer &lt;the app token from <code>ssh ... tokens "
        f"{escape(name)}</code>&gt;)</p>",
        f"<p>Git: <code>{escape(str(state.get('git_url', '')))}</code></p>",
        "<h2>Releases</h2>",
    ]
    if releases:
        head = ["release", "kind", "status", "commit", "created (UTC)", "description"]
        rows = [_row([r["version"], r["kind"], r["status"], r["commit"], r["created_at"],
                      r["description"]]) for r in releases]
        parts.append("<table>" + _row(head, "th") + "".join(rows) + "</table>")
    else:
        parts.append("<p>No releases yet.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
