"""The dashboard's usage card: each instance's figures now and a 24 h chart, inline SVG.

No script and no chart library: the server draws the polylines (memory filled, CPU
dashed, each on its own scale) from the app's points (crewship/service/usage.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from crewship.api.dashboard_html import badge, esc, table
from crewship.model import human_bytes

DAY = 86_400.0
WIDTH, HEIGHT, PAD = 720, 170, 36   # PAD: room for the axis labels on the left and below

CSS = """  # served with the dashboard's stylesheet (the CSP allows no inline style)
.usage svg{width:100%;max-width:46rem;height:auto;display:block;margin-top:.6rem}
.usage .mem{fill:rgba(53,56,205,.14);stroke:#3538cd;stroke-width:1.6}
.usage .cpu{fill:none;stroke:#b54708;stroke-width:1.4;stroke-dasharray:4 3}
.usage .grid{stroke:#e4e7ec}.usage text{font:11px system-ui,sans-serif;fill:#667085}
.usage .legend{display:flex;gap:1.2rem;font-size:.85rem;color:#667085}
"""


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}%"


def _xy(points: Sequence[dict[str, Any]], key: str, top: float, now: float,
        span: float) -> list[str]:
    span_w, span_h = WIDTH - PAD - 8, HEIGHT - PAD - 8
    coords = []
    for point in points:
        x = PAD + span_w * max(0.0, 1 - (now - float(point["at"])) / span)
        y = 8 + span_h * (1 - min(1.0, float(point[key] or 0) / top))
        coords.append(f"{x:.1f},{y:.1f}")
    return coords


def ago(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h ago" if seconds >= 3600 else f"{seconds / 60:.0f} min ago"


def chart_svg(points: Sequence[dict[str, Any]], now: float | None = None) -> str:
    """Memory (filled, left scale) and CPU (dashed, right scale) over the last 24 h, or
    since the first point when that is more recent (at least 10 minutes)."""
    now = time.time() if now is None else now
    kept = [p for p in points if now - float(p["at"]) <= DAY]
    span = min(DAY, max(600.0, now - min([float(p["at"]) for p in kept] + [now])))
    top_mem = max([float(p["memory_bytes"] or 0) for p in kept] + [1.0]) * 1.15
    top_cpu = max([float(p["cpu_percent"] or 0) for p in kept] + [100.0])
    base = HEIGHT - PAD
    parts = [f"<svg id='usage-chart' viewBox='0 0 {WIDTH} {HEIGHT}' role='img' "
             f"aria-label='memory and CPU over the last 24 hours'>"]
    for frac in (0.0, 0.5, 1.0):
        y = 8 + (base - 8) * frac
        parts.append(f"<line class='grid' x1='{PAD}' x2='{WIDTH - 8}' y1='{y:.1f}' y2='{y:.1f}'/>")
    parts.append(f"<text x='2' y='16'>{esc(human_bytes(top_mem))}</text>"
                 f"<text x='{WIDTH - 44}' y='16'>{top_cpu:.0f}%</text>"
                 f"<text x='{PAD}' y='{HEIGHT - 14}'>{ago(span)}</text>"
                 f"<text x='{(WIDTH - PAD) / 2 + PAD - 20:.0f}' y='{HEIGHT - 14}'>"
                 f"{ago(span / 2)}</text>"
                 f"<text x='{WIDTH - 32}' y='{HEIGHT - 14}'>now</text>")
    mem = _xy(kept, "memory_bytes", top_mem, now, span)
    cpu = _xy(kept, "cpu_percent", top_cpu, now, span)
    if len(mem) == 1:
        cx, cy = mem[0].split(",")
        parts.append(f"<circle class='mem' cx='{cx}' cy='{cy}' r='3'/>")
    elif mem:
        first_x, last_x = mem[0].split(",")[0], mem[-1].split(",")[0]
        area = [f"{first_x},{base}", *mem, f"{last_x},{base}"]
        parts.append(f"<polygon class='mem' points='{' '.join(area)}'/>")
        parts.append(f"<polyline class='cpu' points='{' '.join(cpu)}'/>")
    parts.append("</svg>")
    return "".join(parts)


def usage_card(instances: Sequence[dict[str, Any]], points: Sequence[dict[str, Any]]) -> str:
    """The "Usage" section of an app's page."""
    rows = [[f"<code>{esc(i['id'])}</code>", badge(i.get("state")),
             esc(human_bytes(i.get("memory_bytes"))), esc(_percent(i.get("cpu_percent"))),
             esc(i.get("fds") if i.get("fds") is not None else "-"),
             esc(i.get("threads") if i.get("threads") is not None else "-")]
            for i in instances]
    listing = table(["Instance", "State", "Memory", "CPU", "Open files", "Threads"], rows,
                    "No instance runs.")
    latest = points[-1] if points else None
    legend = ("<div class='legend'><span>&#9632; memory (all instances)"
              f"{': ' + esc(human_bytes(latest['memory_bytes'])) if latest else ''}</span>"
              "<span>- - CPU, % of one core"
              f"{': ' + esc(_percent(latest['cpu_percent'])) if latest else ''}</span></div>")
    chart = chart_svg(points) if points else (
        "<p class='muted' id='usage-chart'>No samples yet: the chart gains a point "
        "every minute while the app runs.</p>")
    return (f"<h2>Usage <span class='muted'>(last 24 h)</span></h2><section class='card usage' id='usage'>"
            f"{listing}{legend}{chart}</section>")
