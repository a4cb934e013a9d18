"""Execution traces: what the runner reports, made safe to keep, and drawn as text.

A trace is a list of spans, in start order (the contract the dashboard and
``GET /apps/NAME/kickoffs/{id}/trace`` share)::

    {"id": str, "parent": str | None,
     "kind": "crew" | "flow" | "method" | "task" | "agent" | "llm" | "tool",
     "name": str, "start": float, "end": float | None,        # unix seconds
     "status": "ok" | "error" | "running", "error": str | None,
     "tokens": {"prompt": int, "completion": int, "total": int} | None,
     "input": str | None, "output": str | None}

The runner builds it from crewAI's event bus (``runtime/runner/events.py``); the crew's
own process wrote it, so ``clean_spans`` keeps only that shape, bounded, before it is
stored beside the kickoff (``kickoff_traces``; removed with the kickoff by retention).
"""

from __future__ import annotations

import json
import math
from typing import Any

KINDS = ("crew", "flow", "method", "task", "agent", "llm", "tool")
STATUSES = ("ok", "error", "running")
MAX_SPANS = 5000
TEXT_LIMIT = 1000
NAME_LIMIT = 200
MAX_BYTES = 2 * 1024 * 1024   # one stored trace; texts are shortened to stay under it
SHORT_TEXT = 120


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _tokens(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    counts = {k: value.get(k) for k in ("prompt", "completion", "total")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in counts.values()):
        return None
    return {k: int(v or 0) for k, v in counts.items()}


def _span(raw: Any, limit: int) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        return None
    start = _time(raw.get("start"))
    if start is None or not isinstance(raw.get("id"), str):
        return None
    end = _time(raw.get("end"))
    status = raw.get("status") if raw.get("status") in STATUSES else "running"
    parent = raw.get("parent")
    return {"id": raw["id"][:NAME_LIMIT],
            "parent": parent[:NAME_LIMIT] if isinstance(parent, str) else None,
            "kind": raw["kind"], "name": _text(raw.get("name"), NAME_LIMIT) or raw["kind"],
            "start": start, "end": end if end is not None and end >= start else None,
            "status": status, "error": _text(raw.get("error"), limit),
            "tokens": _tokens(raw.get("tokens")),
            "input": _text(raw.get("input"), limit), "output": _text(raw.get("output"), limit)}


def clean_spans(raw: Any) -> list[dict[str, Any]]:
    """The runner's spans in the contract's shape: malformed ones dropped, at most
    ``MAX_SPANS``, texts clipped (shorter, then none, to stay under ``MAX_BYTES``)."""
    if not isinstance(raw, list):
        return []
    for limit in (TEXT_LIMIT, SHORT_TEXT, 0):
        spans = [s for s in (_span(r, limit) for r in raw[:MAX_SPANS]) if s is not None]
        if limit == 0:
            for span in spans:
                span.update(input=None, output=None, error="…" if span["error"] else None)
        if len(json.dumps(spans)) <= MAX_BYTES:
            return spans
    return spans


def _seconds(value: float) -> str:
    return f"{value:.2f}s" if value < 100 else f"{value:.0f}s"


def timeline(spans: list[dict[str, Any]]) -> list[str]:
    """The trace as an indented timeline, one line per span, children under their parent:
    ``+offset  duration  kind name  status  tokens  error``."""
    if not spans:
        return []
    ids = {s["id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span["parent"] if span["parent"] in ids else None
        children.setdefault(parent, []).append(span)
    origin = min(s["start"] for s in spans)
    lines: list[str] = []

    def draw(span: dict[str, Any], depth: int) -> None:
        took = "running" if span["end"] is None else _seconds(span["end"] - span["start"])
        label = f"{'  ' * depth}{span['kind']} {span['name']}".replace("\n", " ")
        tokens = f"{span['tokens']['total']} tok" if span.get("tokens") else ""
        error = (span.get("error") or "").replace("\n", " ")[:80]
        offset = "+" + _seconds(span["start"] - origin)
        lines.append(f"{offset:>9} {took:>8}  {label[:70]:<70} "
                     f"{span['status']:<7} {tokens:>9}  {error}".rstrip())
        for child in sorted(children.get(span["id"], []), key=lambda s: s["start"]):
            if len(lines) < MAX_SPANS and depth < 50:
                draw(child, depth + 1)

    for root in sorted(children.get(None, []), key=lambda s: s["start"]):
        draw(root, 0)
    return lines
