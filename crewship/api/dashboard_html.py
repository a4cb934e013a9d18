"""The dashboard's HTML: small functions that return strings, every value escaped.

Nothing here touches the platform: ``crewship/api/dashboard.py`` gathers plain dicts
and passes them in. Any text that came from a user or a crew (descriptions, errors,
inputs, log lines) goes through ``esc``; the log tail is added by the script with
``textContent``, never as HTML.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

STATIC = "/dashboard/static"

CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f7f8fa;--ok:#067647;--bad:#b42318;
--warn:#b54708;--accent:#3538cd}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);
background:var(--bg)}
header{display:flex;align-items:center;gap:1rem;padding:.7rem 1.5rem;background:#101828;color:#fff}
header a{color:#fff;text-decoration:none}.brand{font-weight:700;font-size:1.1rem}
header nav{margin-left:auto;display:flex;align-items:center;gap:.75rem;color:#d0d5dd}
header form{margin:0}
button{font:inherit;padding:.35rem .9rem;border-radius:6px;border:1px solid var(--line);
background:#fff;cursor:pointer}
button.primary{background:var(--accent);color:#fff;border-color:var(--accent)}
main{max-width:72rem;margin:1.5rem auto;padding:0 1.5rem}
h1{font-size:1.5rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.6rem 0 .6rem}
section.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:1rem 1.2rem;
margin-bottom:1rem}
table{border-collapse:collapse;width:100%}
th,td{padding:.45rem .7rem;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:var(--muted)}
tr:last-child td{border-bottom:0}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace}
.muted{color:var(--muted)}.when{white-space:nowrap}.error{color:var(--bad)}
.badge{display:inline-block;padding:.05rem .55rem;border-radius:999px;font-size:.8rem;
font-weight:600;background:#f2f4f7;color:var(--muted)}
.s-running,.s-up,.s-success,.s-live,.s-ok{background:#dcfae6;color:var(--ok)}
.s-crashed,.s-failed,.s-failure,.s-error{background:#fee4e2;color:var(--bad)}
.s-starting,.s-deploying,.s-restarting,.s-pending,.s-revoked,.s-stopped{background:#fef0c7;
color:var(--warn)}
.stats{display:flex;gap:2rem;flex-wrap:wrap}.stats div{min-width:7rem}
.stats b{display:block;font-size:1.3rem}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.2rem;margin:0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
#log{background:#0c111d;color:#d0d5dd;border-radius:8px;padding:.8rem 1rem;height:22rem;
overflow:auto;font:12.5px/1.5 ui-monospace,SFMono-Regular,Menlo,monospace;margin:0;
white-space:pre-wrap;word-break:break-all}
#log .system{color:#fdb022}
.login{max-width:26rem;margin:4rem auto}
.login input{width:100%;font:inherit;padding:.5rem;margin:.4rem 0 1rem;border:1px solid var(--line);
border-radius:6px}
"""

SCRIPT = """\
"use strict";
// The live log tail: an EventSource that appends each line as text (never as HTML).
(function () {
  var box = document.getElementById("log");
  var note = document.getElementById("log-state");
  if (!box || !window.EventSource) { return; }
  var MAX_LINES = 1000;
  var source = new EventSource(box.getAttribute("data-stream"));
  source.addEventListener("open", function () {
    box.textContent = "";  // the server sends the tail again on every (re)connect
    note.textContent = "live";
    note.className = "badge s-live";
  });
  source.addEventListener("error", function () {
    note.textContent = source.readyState === EventSource.CLOSED
      ? "stopped: reload the page" : "reconnecting...";
    note.className = "badge s-pending";
  });
  source.addEventListener("message", function (event) {
    var atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    var line = document.createElement("div");
    line.textContent = event.data;
    if (event.data.indexOf(" [system] ") !== -1) { line.className = "system"; }
    box.appendChild(line);
    while (box.childElementCount > MAX_LINES) { box.removeChild(box.firstElementChild); }
    if (atEnd) { box.scrollTop = box.scrollHeight; }
  });
})();
"""


def esc(value: Any) -> str:
    return escape("" if value is None else str(value))


def badge(state: Any) -> str:
    text = esc(state or "unknown")
    slug = "".join(c for c in str(state or "unknown").lower() if c.isalnum())
    return f"<span class='badge s-{slug}'>{text}</span>"


def table(head: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """``rows`` hold HTML already escaped (cells are built with ``esc``/``badge``)."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f"<p class='muted'>{esc(empty)}</p>"
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, content: str, user: str | None = None, csrf: str = "") -> str:
    """The frame of every page; ``csrf`` (the session's token) rides in the logout form."""
    nav = ""
    if user is not None:
        nav = (f"<nav><span>{esc(user)}</span><form method='post' action='/dashboard/logout'>"
               f"<input type='hidden' name='csrf' value='{esc(csrf)}'>"
               "<button type='submit'>Log out</button></form></nav>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{esc(title)} - crewship</title>"
            f"<link rel='stylesheet' href='{STATIC}/dashboard.css'></head><body>"
            f"<header><a class='brand' href='/'>crewship</a>{nav}</header>"
            f"<main>{content}</main>"
            f"<script src='{STATIC}/dashboard.js' defer></script></body></html>")


def login_page(error: str | None = None) -> str:
    problem = f"<p class='error' role='alert'>{esc(error)}</p>" if error else ""
    form = ("<section class='card login'><h1>Log in</h1>"
            "<p class='muted'>Paste a user API token: make one with "
            "<code>ssh -p 2222 git@HOST api-tokens:create</code>.</p>"
            f"{problem}<form method='post' action='/dashboard/login'>"
            "<label for='token'>API token</label>"
            "<input id='token' name='token' type='password' autocomplete='off' required "
            "autofocus><button class='primary' type='submit'>Log in</button></form></section>")
    return page("Log in", form)


def error_page(status: int, message: str, user: str | None, csrf: str = "") -> str:
    body = (f"<h1>{status}</h1><section class='card'><p>{esc(message)}</p>"
            "<p><a href='/'>Back to the apps</a></p></section>")
    return page(f"Error {status}", body, user, csrf)


def backups_card(status: dict[str, Any] | None) -> str:
    """Admins see the age of the last good backup, and a failure since it (if any)."""
    if status is None:
        return ""
    age, failure = status.get("age_seconds"), status.get("failure")
    last = status.get("last_good") or {}
    if age is None:
        facts = [f"{badge('pending')} no backup yet"]
    else:
        facts = [f"{badge('failed' if failure else 'ok')} last good backup "
                 f"{esc(duration(int(age)))} ago ({esc(last.get('id'))}, "
                 f"{len(last.get('apps') or [])} apps)"]
    if failure:
        facts.append(f"<span class='error'>the last backup failed at {when(failure.get('at'))}: "
                     f"{esc(clip(failure.get('error')))}</span>")
    restic = f", copied to {esc(status['restic'])}" if status.get("restic") else ""
    facts.append(f"<span class='muted'>every {esc(duration(int(status['interval_seconds'])))}, "
                 f"{esc(status.get('keep'))} kept{restic}</span>")
    return ("<h2>Backups</h2><section class='card' id='backups'>"
            + "<br>".join(facts) + "</section>")


def apps_page(user: str, apps: list[dict[str, Any]], csrf: str = "",
              backups: dict[str, Any] | None = None) -> str:
    rows = [[f"<a href='/dashboard/apps/{esc(a['app'])}'>{esc(a['app'])}</a>",
             badge(a.get("state")), esc(a.get("release") or "none"),
             f"<code>{esc(a.get('url'))}</code>", esc(a.get("restarts", "")),
             esc(a.get("scale", ""))] for a in apps]
    listing = table(["App", "State", "Live release", "URL", "Restarts", "Scale"], rows,
                    "No apps yet: git push a CrewAI project to ssh://git@HOST:2222/NAME.git")
    unsandboxed = next((a for a in apps if a.get("sandbox") is False), None)
    warning = (f"<section class='card error' id='sandbox-warning' role='alert'>Sandbox "
               f"{esc(unsandboxed.get('sandbox_note'))}</section>" if unsandboxed else "")
    return page("Apps", f"<h1>Apps</h1>{warning}<section class='card' id='apps'>{listing}"
                "</section>" + backups_card(backups), user, csrf)


def _facts(status: dict[str, Any]) -> str:
    uptime = status.get("uptime_seconds")
    facts = [("State", badge(status.get("state"))),
             ("Live release", esc(status.get("release") or "none")),
             ("Crew API", f"<code>{esc(status.get('url'))}</code>"),
             ("Git", f"<code>{esc(status.get('git_url'))}</code>"),
             ("Scale", esc(status.get("scale"))),
             ("Up for", esc(duration(int(uptime)) if uptime is not None else "-")),
             ("Sandbox", f"<span id='sandbox' class='{'' if status.get('sandbox', True) else 'error'}'>"
                         f"{esc(status.get('sandbox_note', ''))}</span>")]
    return ("<dl class='facts'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
            + "</dl>")


def _restarts(status: dict[str, Any]) -> str:
    instances = status.get("instances", [])
    nodes = any(i.get("node") for i in instances)  # the swarm runtime: tasks per node
    rows = [[f"<code>{esc(i['id'])}</code>", badge(i.get("state")),
             esc(i.get("node") if nodes else i.get("pid")), esc(i.get("port")),
             esc(i.get("restarts"))] for i in instances]
    return (f"<p>Crash restarts: <b id='restart-count'>{esc(status.get('restarts', 0))}</b></p>"
            + table(["Instance", "State", "Node" if nodes else "PID", "Port", "Restarts"], rows,
                    "No instance runs."))


def _kickoffs(kickoffs: list[dict[str, Any]], stats: dict[str, Any]) -> str:
    numbers = [("Last 24 h", stats["count"]), ("Failed", stats["failed"]),
               ("p50", duration(stats["p50"])), ("p95", duration(stats["p95"]))]
    summary = ("<div class='stats'>" + "".join(f"<div><span class='muted'>{esc(k)}</span>"
                                              f"<b>{esc(v)}</b></div>" for k, v in numbers)
               + "</div>")
    rows = [[f"<code title='{esc(k['kickoff_id'])}'>{esc(str(k['kickoff_id'])[:8])}</code>",
             badge(k.get("state")), esc(f"v{k['release']}" if k.get("release") else "-"),
             when(k.get("created_at")), esc(duration(k.get("duration"))),
             f"<code>{esc(clip(k.get('inputs')))}</code>",
             f"<span class='error'>{esc(clip(k.get('error')))}</span>"] for k in kickoffs]
    listing = table(["Kickoff", "State", "Release", "Created (UTC)", "Duration", "Inputs", "Error"],
                    rows, "No kickoffs yet.")
    return summary + f"<div id='kickoffs'>{listing}</div>"


def _releases(releases: list[dict[str, Any]]) -> str:
    rows = [[esc(r["version"]) + (" " + badge("live") if r.get("live") else ""), esc(r["kind"]),
             badge(r.get("status")), f"<code>{esc(str(r.get('commit') or '')[:12])}</code>",
             esc(r.get("created_by")), when(r.get("created_at")),
             esc(r.get("description")) + (f" <span class='error'>{esc(r['error'])}</span>"
                                          if r.get("error") else "")] for r in releases]
    return table(["Release", "Kind", "Status", "Commit", "By", "Created (UTC)", "Description"],
                 rows, "No releases yet.")


def app_page(user: str, status: dict[str, Any], releases: list[dict[str, Any]],
             kickoffs: list[dict[str, Any]], stats: dict[str, Any], csrf: str = "",
             usage: str = "") -> str:
    """``usage``: the usage card's HTML (crewship/api/dashboard_usage.py)."""
    name = str(status["app"])
    stream = f"/dashboard/apps/{esc(name)}/logs/stream"
    body = (f"<h1>{esc(name)}</h1>"
            f"<section class='card' id='status'>{_facts(status)}</section>{usage}"
            "<h2>Log tail <span id='log-state' class='badge'>connecting...</span></h2>"
            f"<section class='card'><pre id='log' data-stream='{stream}'></pre></section>"
            f"<h2>Kickoffs</h2><section class='card'>{_kickoffs(kickoffs, stats)}</section>"
            f"<h2>Restarts</h2><section class='card' id='restarts'>{_restarts(status)}</section>"
            f"<h2>Releases</h2><section class='card' id='releases'>{_releases(releases)}</section>")
    return page(name, body, user, csrf)


def when(stamp: Any) -> str:
    """A stored UTC timestamp (``2026-11-26T10:00:00Z``) as ``2026-11-26 10:00:00``."""
    text = str(stamp or "-").replace("T", " ").removesuffix("Z")
    return f"<span class='when'>{esc(text)}</span>"


def clip(value: Any, limit: int = 120) -> str:
    """Inputs (JSON) or an error on one short line."""
    if value is None:
        return ""
    text = " ".join((value if isinstance(value, str) else json.dumps(value)).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
