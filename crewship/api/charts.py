"""The geometry of the dashboard's charts: numbers in, coordinates and labels out.

Pure functions, no markup: the templates (``templates/dashboard/_charts.html``) draw
the SVG from what these return, so every label is escaped there like any other text.
Each chart is ``WIDTH`` x ``HEIGHT`` user units, scaled to its box by the browser.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from crewship.model import human_bytes

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 10, 26   # room for the axis labels
DAY = 86_400.0


def nice_top(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return float(step * power)
    return 10.0 * power   # pragma: no cover (the loop always returns)


def _frame(top: float, label: Callable[[float], str]) -> dict[str, Any]:
    plot_h = HEIGHT - TOP - BOTTOM
    grid = [{"y": round(TOP + plot_h * (1 - f), 1), "label": label(top * f)}
            for f in (0.0, 0.5, 1.0)]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT,
            "base": HEIGHT - BOTTOM, "grid": grid}


def _x_labels(labels: Sequence[str], slot: float) -> list[dict[str, Any]]:
    """At most five evenly spread labels under the slots, the last one always shown."""
    if not labels:
        return []
    every = max(1, math.ceil(len(labels) / 5))
    picks = sorted({*range(0, len(labels), every), len(labels) - 1})
    if len(picks) > 1 and picks[-1] - picks[-2] < every / 2:
        picks.pop(-2)
    return [{"x": round(LEFT + slot * (i + 0.5), 1), "text": labels[i]} for i in picks]


def bar_chart(totals: Sequence[int], failed: Sequence[int], labels: Sequence[str],
              titles: Sequence[str]) -> dict[str, Any]:
    """Bars of ``totals`` per slot, the ``failed`` part of each drawn on top of it."""
    top = nice_top(max(totals, default=0))
    frame = _frame(top, lambda v: f"{v:g}" if v == int(v) else "")   # counts: whole numbers
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(totals))
    bars = []
    for i, (total, bad) in enumerate(zip(totals, failed, strict=True)):
        if total <= 0:
            continue
        h = plot_h * total / top
        fail_h = plot_h * min(bad, total) / top
        x = LEFT + slot * i + slot * 0.12
        bars.append({"x": round(x, 1), "w": round(slot * 0.76, 1),
                     "y": round(TOP + plot_h - h, 1), "h": round(h, 1),
                     "fy": round(TOP + plot_h - fail_h, 1), "fh": round(fail_h, 1),
                     "title": titles[i]})
    return {**frame, "bars": bars, "xlabels": _x_labels(labels, slot)}


def line_chart(series: dict[str, Sequence[float | None]], labels: Sequence[str],
               label: Callable[[float], str]) -> dict[str, Any]:
    """One polyline per named series over the slots; a missing value (None) breaks the
    line, and a point with no neighbour shows as a dot."""
    values = [v for s in series.values() for v in s if v is not None]
    top = nice_top(max(values, default=0.0) * 1.05)
    frame = _frame(top, label)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    size = max((len(s) for s in series.values()), default=0)
    slot = plot_w / max(1, size)
    lines = []
    for name, points in series.items():
        runs: list[list[tuple[float, float]]] = [[]]
        for i, value in enumerate(points):
            if value is None:
                runs.append([])
                continue
            runs[-1].append((round(LEFT + slot * (i + 0.5), 1),
                             round(TOP + plot_h * (1 - value / top), 1)))
        lines.append({"name": name,
                      "paths": [" ".join(f"{x},{y}" for x, y in run) for run in runs
                                if len(run) > 1],
                      "dots": [run[0] for run in runs if len(run) == 1]})
    return {**frame, "lines": lines, "xlabels": _x_labels(labels, slot)}


def hour_labels(count: int) -> list[str]:
    """Slot labels of a window of ``count`` hours ending now: ``24 h ago`` ... ``now``."""
    return [f"{count - i} h ago" if i < count - 1 else "now" for i in range(count)]


# ------------------------------------------------------------------------- usage
def ago(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h ago" if seconds >= 3600 else f"{seconds / 60:.0f} min ago"


def _usage_xy(points: Sequence[dict[str, Any]], key: str, top: float, now: float,
              span: float) -> list[tuple[float, float]]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    return [(round(LEFT + plot_w * max(0.0, 1 - (now - float(p["at"])) / span), 1),
             round(TOP + plot_h * (1 - min(1.0, float(p[key] or 0) / top)), 1))
            for p in points]


def usage_chart(points: Sequence[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """Memory (filled, left scale) and CPU (dashed, right scale) over the last 24 h, or
    since the first point when that is more recent (at least 10 minutes)."""
    now = time.time() if now is None else now
    kept = [p for p in points if now - float(p["at"]) <= DAY]
    span = min(DAY, max(600.0, now - min([float(p["at"]) for p in kept] + [now])))
    top_mem = max([float(p["memory_bytes"] or 0) for p in kept] + [1.0]) * 1.15
    top_cpu = max([float(p["cpu_percent"] or 0) for p in kept] + [100.0])
    frame = _frame(top_mem, lambda v: human_bytes(v) if v else "0")
    mem = _usage_xy(kept, "memory_bytes", top_mem, now, span)
    cpu = _usage_xy(kept, "cpu_percent", top_cpu, now, span)
    base = frame["base"]
    area = ([(mem[0][0], base), *mem, (mem[-1][0], base)] if len(mem) > 1 else [])
    return {**frame, "cpu_top": f"{top_cpu:.0f}%",
            "area": " ".join(f"{x},{y}" for x, y in area),
            "cpu": " ".join(f"{x},{y}" for x, y in cpu) if len(cpu) > 1 else "",
            "dot": mem[0] if len(mem) == 1 else None,
            "xlabels": [{"x": LEFT, "text": ago(span)},
                        {"x": round(LEFT + (WIDTH - LEFT - RIGHT) / 2, 1), "text": ago(span / 2)},
                        {"x": WIDTH - RIGHT - 16, "text": "now"}]}
