"""crewAI's event bus, per run: the execution trace and the streamed events (``webhooks``).

A ``Recorder`` is installed for the length of one run as a *scoped stream sink*
(``crewai.events.stream_context.add_stream_sink``): crewAI calls it synchronously, in the
emitting thread, for every event the run emits, and carries it into the threads and tasks
the run starts (it copies its context). So each run sees its own events only, in emission
order, with no global listener to route and nothing to flush.

From those events it builds

* the trace: one span per crew, flow, flow method, task, agent execution, LLM call and
  tool call, ``{"id", "parent", "kind", "name", "start", "end", "status", "error",
  "tokens", "input", "output"}`` (times in unix seconds; texts clipped to ``TEXT_LIMIT``;
  LLM tokens summed up into every enclosing span). crewAI pairs each ``*_started`` event
  with its ending event (``started_event_id``) and gives it its enclosing scope
  (``parent_event_id``); spans whose scope is not traced (memory, knowledge, ...) hang
  from the nearest traced one. The trace goes back with the run's result.
* the streamed events: the event types the kickoff's ``webhooks.events`` names, as
  ``{"id", "execution_id", "timestamp", "type", "data"}`` (C.7), appended in order to the
  run's ``WebhookLog`` as kind ``event``; the daemon fetches them like task/step webhooks
  and delivers them (it alone knows the URL and its credentials).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .output import say

if TYPE_CHECKING:
    from .webhooks import WebhookLog

TEXT_LIMIT = 1000       # characters of a span's input/output/error
DATA_TEXT_LIMIT = 2000  # characters of one string in a streamed event's data
MAX_SPANS = 5000        # spans one run keeps (later ones are counted, not kept)
MAX_ITEMS = 50          # items of a list or dict in a streamed event's data
MAX_DEPTH = 4
MAX_SCOPES = 100_000    # event scopes remembered to find a span's traced parent
INTERNAL_PREFIXES = ("flow_", "method_execution_")

# event type -> (span kind, how the span is named); ending events close the span they pair
STARTS = {"crew_kickoff_started": "crew", "flow_started": "flow",
          "method_execution_started": "method", "task_started": "task",
          "agent_execution_started": "agent", "lite_agent_execution_started": "agent",
          "llm_call_started": "llm", "tool_usage_started": "tool"}
ENDS_OK = {"crew_kickoff_completed": "crew", "flow_finished": "flow",
           "method_execution_finished": "method", "task_completed": "task",
           "agent_execution_completed": "agent", "lite_agent_execution_completed": "agent",
           "llm_call_completed": "llm", "tool_usage_finished": "tool"}
ENDS_ERROR = {"crew_kickoff_failed": "crew", "flow_failed": "flow",
              "method_execution_failed": "method", "task_failed": "task",
              "agent_execution_error": "agent", "lite_agent_execution_error": "agent",
              "llm_call_failed": "llm", "tool_usage_error": "tool"}
# object-valued fields of crewAI events that are not data (the crew, agent, task itself)
OBJECT_FIELDS = frozenset({"timestamp", "type", "event_id", "crew", "agent", "task",
                           "from_task", "from_agent", "tools", "callbacks",
                           "available_functions", "tool_class", "fingerprint_metadata"})


def clip(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as bounded JSON: strings clipped, lists and dicts cut, objects as text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return clip(value, DATA_TEXT_LIMIT)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return plain(value.value, depth)
    if isinstance(value, BaseException):
        return clip(f"{type(value).__name__}: {value}", DATA_TEXT_LIMIT)
    if depth >= MAX_DEPTH:
        return clip(value, DATA_TEXT_LIMIT)
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    if hasattr(value, "model_dump"):
        with contextlib.suppress(Exception):
            return plain(value.model_dump(mode="json"), depth + 1)
    return clip(value, DATA_TEXT_LIMIT)


def event_data(event: Any) -> dict[str, Any]:
    """A crewAI event's fields as bounded JSON, without the objects it carries."""
    fields = getattr(type(event), "model_fields", None) or {}
    return {name: plain(getattr(event, name, None)) for name in fields
            if name not in OBJECT_FIELDS}


def _seconds(event: Any) -> float:
    stamp = getattr(event, "timestamp", None)
    return stamp.timestamp() if isinstance(stamp, dt.datetime) else time.time()


def _last_user_message(messages: Any) -> Any:
    if isinstance(messages, list):
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else (messages[-1] if messages else None)
    return messages


def _task_name(event: Any) -> Any:
    task = getattr(event, "task", None)
    return (getattr(task, "name", None) or getattr(event, "task_name", None)
            or getattr(task, "description", None))


def _agent_name(event: Any) -> Any:
    agent = getattr(event, "agent", None)
    info = getattr(event, "agent_info", None)
    return (getattr(agent, "role", None) or getattr(event, "agent_role", None)
            or (info.get("role") if isinstance(info, dict) else None))


NAMES = {"crew": lambda e: getattr(e, "crew_name", None),
         "flow": lambda e: getattr(e, "flow_name", None),
         "method": lambda e: getattr(e, "method_name", None),
         "task": _task_name, "agent": _agent_name,
         "llm": lambda e: getattr(e, "model", None),
         "tool": lambda e: getattr(e, "tool_name", None)}
OUTPUTS = {"crew": "output", "flow": "result", "method": "result", "task": "output",
           "agent": "output", "llm": "response", "tool": "output"}


def _name(kind: str, event: Any) -> str:
    name = NAMES[kind](event)
    return (clip(str(name or kind).strip(), 200) or kind).strip() or kind


def _text(value: Any) -> str | None:
    """A span's input or output: text as it is, anything else as (bounded) JSON."""
    if value is None or isinstance(value, str):
        return clip(value)
    with contextlib.suppress(TypeError, ValueError):
        return clip(json.dumps(plain(value), ensure_ascii=False))
    return clip(value)


def _input(kind: str, event: Any) -> str | None:
    if kind == "task":
        return clip(getattr(getattr(event, "task", None), "description", None))
    if kind == "agent":
        return _text(getattr(event, "task_prompt", None) or getattr(event, "messages", None))
    if kind == "llm":
        return _text(_last_user_message(getattr(event, "messages", None)))
    if kind == "tool":
        return _text(getattr(event, "tool_args", None))
    field = {"crew": "inputs", "flow": "inputs", "method": "params"}[kind]
    return _text(getattr(event, field, None) or None)


def _output(kind: str, event: Any) -> str | None:
    value = getattr(event, OUTPUTS[kind], None)
    return None if value is None else _text(getattr(value, "raw", None) or value)


def _tokens(usage: Any) -> dict[str, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    total = int(usage.get("total_tokens") or (prompt + completion))
    return {"prompt": prompt, "completion": completion, "total": total}


class Recorder:
    """One run's trace and streamed events, fed by crewAI's event bus (see the module doc)."""

    def __init__(self, kickoff_id: str, log: WebhookLog | None) -> None:
        self.kickoff_id = kickoff_id
        self.log = log
        self.stream = log.stream if log is not None else frozenset()
        self.spans: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self.open: dict[str, dict[str, Any]] = {}    # start event id -> its running span
        self.scopes: dict[str, str | None] = {}      # any started event id -> its parent's
        self.dropped = 0
        self.lock = threading.Lock()

    # ------------------------------------------------------------------- the sink
    def sink(self, source: Any, event: Any) -> None:
        """Called by crewAI for every event of the run: must never raise into the crew."""
        try:
            kind = str(getattr(event, "type", "") or "")
            # crewAI's own infrastructure flows (each agent's AgentExecutor, memory) are not
            # the user's: no span, no streamed event; what they enclose hangs from above
            internal = (getattr(source, "suppress_flow_events", False) is True
                        and kind.startswith(INTERNAL_PREFIXES))
            if kind in self.stream and self.log is not None and not internal:
                self.log.stream_event(self.streamed(kind, event))
            if kind == "llm_stream_chunk":
                return
            with self.lock:
                self._trace(kind, event, internal)
        except Exception as exc:  # a trace is never worth a failed run
            with contextlib.suppress(Exception):
                say(f"trace: {type(event).__name__} not recorded: {type(exc).__name__}: {exc}")

    def streamed(self, kind: str, event: Any) -> dict[str, Any]:
        stamp = getattr(event, "timestamp", None)
        when = stamp.isoformat() if isinstance(stamp, dt.datetime) else None
        return {"id": str(getattr(event, "event_id", "") or ""), "execution_id": self.kickoff_id,
                "timestamp": when, "type": kind, "data": event_data(event)}

    def _trace(self, kind: str, event: Any, internal: bool) -> None:
        event_id = str(getattr(event, "event_id", "") or "")
        parent = getattr(event, "parent_event_id", None)
        if kind.endswith("_started") and event_id and len(self.scopes) < MAX_SCOPES:
            self.scopes[event_id] = str(parent) if parent else None
        if internal:
            return
        if kind in STARTS:
            self._start(STARTS[kind], event_id, parent, event)
        elif kind in ENDS_OK or kind in ENDS_ERROR:
            self._end(ENDS_OK.get(kind) or ENDS_ERROR[kind], kind in ENDS_ERROR, event)

    def _start(self, kind: str, event_id: str, parent: Any, event: Any) -> None:
        if len(self.spans) >= MAX_SPANS:
            self.dropped += 1
            return
        span = {"id": event_id or f"span-{len(self.spans)}", "parent": self._traced(parent),
                "kind": kind, "name": _name(kind, event), "start": _seconds(event), "end": None,
                "status": "running", "error": None, "tokens": None,
                "input": _input(kind, event), "output": None,
                "_call": getattr(event, "call_id", None)}
        self.spans.append(span)
        self.by_id[span["id"]] = span
        self.open[span["id"]] = span

    def _traced(self, scope: Any) -> str | None:
        """The nearest enclosing span of an event's scope (untraced scopes are skipped)."""
        seen = 0
        while scope and seen < 1000:
            if str(scope) in self.by_id:
                return str(scope)
            scope = self.scopes.get(str(scope))
            seen += 1
        return None

    def _end(self, kind: str, failed: bool, event: Any) -> None:
        span = self.open.pop(str(getattr(event, "started_event_id", "") or ""), None)
        if span is None:  # unpaired: the newest open span of that kind (same LLM call)
            call = getattr(event, "call_id", None)
            candidates = [s for s in self.open.values() if s["kind"] == kind
                          and (kind != "llm" or call is None or s["_call"] == call)]
            if not candidates:
                return
            span = self.open.pop(candidates[-1]["id"])
        span["end"] = _seconds(event)
        span["status"] = "error" if failed else "ok"
        if failed:
            span["error"] = clip(getattr(event, "error", None) or "failed")
        else:
            span["output"] = _output(kind, event)
        if kind == "llm":
            tokens = _tokens(getattr(event, "usage", None))
            if tokens is not None:
                self._add_tokens(span, tokens)

    def _add_tokens(self, span: dict[str, Any], tokens: dict[str, int]) -> None:
        current: dict[str, Any] | None = span
        while current is not None:
            held = current["tokens"] or {"prompt": 0, "completion": 0, "total": 0}
            current["tokens"] = {k: held[k] + tokens[k] for k in held}
            current = self.by_id.get(current["parent"] or "")

    # ---------------------------------------------------------------- the result
    def snapshot(self) -> list[dict[str, Any]]:
        """The spans so far, in start order (running ones have no end)."""
        with self.lock:
            return [{k: v for k, v in s.items() if not k.startswith("_")} for s in self.spans]

    def finish(self, error: str | None) -> list[dict[str, Any]]:
        """The run ended: spans still open end now (an error when the run failed)."""
        now = time.time()
        with self.lock:
            for span in self.open.values():
                span.update(end=now, status="error", error=clip(error or "did not finish"))
            self.open.clear()
        if self.dropped:
            say(f"trace: {self.dropped} span(s) over the limit of {MAX_SPANS} were not kept")
        return self.snapshot()

    @contextlib.contextmanager
    def listening(self) -> Iterator[Recorder]:
        """Receive the events of the code run inside (this thread and what it starts)."""
        try:
            from crewai.events.stream_context import add_stream_sink, reset_stream_sinks
        except ImportError:  # a crewAI without scoped sinks: no trace, no streamed events
            say("trace: this crewai has no scoped event sinks; no trace is recorded")
            yield self
            return
        token = add_stream_sink(self.sink)
        try:
            yield self
        finally:
            reset_stream_sinks(token)
