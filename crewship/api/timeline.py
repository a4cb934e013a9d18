"""A kickoff's trace as a Gantt chart: spans in, rows with bar coordinates out.

A span is the trace contract's dict (``platform.monitoring.kickoff_trace``)::

    {"id", "parent", "kind": crew|flow|method|task|agent|llm|tool, "name",
     "start": unix seconds, "end": unix seconds or None (still running),
     "status": ok|error|running, "error", "tokens": {"prompt", "completion", "total"} or None,
     "input", "output"}

Rows come depth first (a span under its parent, siblings by start time); a span whose
parent is not in the trace is a root, and a cycle cannot hide a span. A span still
running ends, on the chart, at the latest moment the trace knows of. Pure: the template
(``templates/dashboard/_charts.html``) draws the SVG and escapes every name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WIDTH = 960
LABEL_W = 250                # the names' column, left of the bars
ROW_H, BAR_H, AXIS_H = 22, 14, 22
INDENT = 12                  # per level of nesting, in the names' column
MAX_LABEL = 34               # characters of a name shown in the column (all of it on hover)
MIN_BAR = 2.0                # a zero-length span stays visible
KINDS = ("crew", "flow", "method", "task", "agent", "llm", "tool")


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def order(spans: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """``(span, depth)`` depth first; roots and siblings by start, then id."""
    ids = {str(s.get("id")) for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parent")
        key = str(parent) if parent is not None and str(parent) in ids else None
        children.setdefault(key, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (_number(s.get("start")) or 0.0, str(s.get("id"))))
    out: list[tuple[dict[str, Any], int]] = []
    seen: set[int] = set()

    def walk(key: str | None, depth: int) -> None:
        for span in children.get(key, []):
            if id(span) in seen:
                continue
            seen.add(id(span))
            out.append((span, depth))
            walk(str(span.get("id")), depth + 1)

    walk(None, 0)
    for span in spans:          # spans only reachable through a cycle: shown as roots
        if id(span) not in seen:
            seen.add(id(span))
            out.append((span, 0))
            walk(str(span.get("id")), 1)
    return out


def _label(name: str) -> str:
    return name if len(name) <= MAX_LABEL else name[:MAX_LABEL - 1] + "\u2026"


def _ticks(length: float) -> list[dict[str, Any]]:
    scale = WIDTH - LABEL_W - 10
    return [{"x": round(LABEL_W + scale * f, 1), "text": f"{length * f:.3g}s"}
            for f in (0.0, 0.25, 0.5, 0.75, 1.0)]


def timeline(spans: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The chart: ``rows`` (one per span), ``ticks`` (seconds since the first start),
    ``width``/``height``; ``rows`` is empty for an empty trace."""
    starts = [t for s in spans if (t := _number(s.get("start"))) is not None]
    if not starts:
        return {"rows": [], "ticks": [], "width": WIDTH, "height": AXIS_H, "length": 0.0}
    t0 = min(starts)
    ends = [t for s in spans if (t := _number(s.get("end"))) is not None]
    latest = max(starts + ends)
    length = max(latest - t0, 1e-3)
    scale = WIDTH - LABEL_W - 10
    rows = []
    for index, (span, depth) in enumerate(order(spans)):
        start = _number(span.get("start"))
        start = t0 if start is None else start
        end = _number(span.get("end"))
        running = end is None
        finish = latest if end is None else max(end, start)
        kind = str(span.get("kind") or "")
        status = "running" if running and span.get("status") != "error" else \
            str(span.get("status") or "ok")
        name = str(span.get("name") or kind or "span")
        tokens = span.get("tokens") if isinstance(span.get("tokens"), dict) else None
        y = AXIS_H + index * ROW_H
        rows.append({
            "id": str(span.get("id")), "name": name, "label": _label(name),
            "kind": kind if kind in KINDS else "other", "kind_text": kind, "depth": depth,
            "status": status, "error": span.get("error"), "tokens": tokens,
            "offset": start - t0, "duration": None if running else finish - start,
            "x": round(LABEL_W + scale * (start - t0) / length, 1),
            "w": round(max(MIN_BAR, scale * (finish - start) / length), 1),
            "y": y, "bar_y": y + (ROW_H - BAR_H) / 2, "text_y": y + ROW_H - 7,
            "indent": 4 + depth * INDENT,
            "input": span.get("input"), "output": span.get("output"),
        })
    return {"rows": rows, "ticks": _ticks(length), "width": WIDTH,
            "height": AXIS_H + len(rows) * ROW_H + 4, "length": length}
