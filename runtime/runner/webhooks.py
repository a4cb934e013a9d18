"""Task and step webhooks (crewai-protocol.md C.7).

The runner only records them, in order; the daemon fetches them (``GET /runs/{id}?after=N``
while the run goes on, and the ``POST /runs`` reply) and delivers them itself, to the
address it checked, with its retries. The runner never sees a webhook URL.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from .output import clip

if TYPE_CHECKING:
    from .runs import Run

WEBHOOK_EVENTS_KEPT = 2000  # task/step webhook bodies one run keeps for the daemon
STREAM_EVENTS_KEPT = 10_000  # streamed crewAI events (``webhooks.events``) one run keeps
EVENT_NAME_LIMIT = 100


class WebhookLog:
    """One run's task/step webhook bodies and streamed events (kind ``event``, see
    ``events.py``), in order, for the daemon to deliver."""

    def __init__(self, kinds: Any, kickoff_id: str, meta: Any) -> None:
        wanted = kinds if isinstance(kinds, dict) else {}
        self.kinds = {kind for kind in wanted if kind in ("task", "step")}
        names = wanted.get("events")
        self.stream = frozenset(str(n)[:EVENT_NAME_LIMIT] for n in names[:EVENT_NAME_LIMIT]
                                ) if isinstance(names, list) else frozenset()
        self.kickoff_id = kickoff_id
        self.meta = meta
        self.events: list[dict[str, Any]] = []
        self.hooks = self.streamed = 0
        self.lock = threading.Condition()

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        if kind not in self.kinds:
            return
        body = {**payload, "kickoff_id": self.kickoff_id, "meta": self.meta}
        with self.lock:
            if self.hooks < WEBHOOK_EVENTS_KEPT:
                self.hooks += 1
                self.events.append({"kind": kind, "body": body})
                self.lock.notify_all()

    def stream_event(self, body: dict[str, Any]) -> None:
        with self.lock:
            if self.streamed < STREAM_EVENTS_KEPT:
                self.streamed += 1
                self.events.append({"kind": "event", "body": body})
                self.lock.notify_all()

    def since(self, count: int) -> list[dict[str, Any]]:
        with self.lock:
            return self.events[max(0, count):]

    def wait_beyond(self, count: int, timeout: float) -> bool:
        """Wait up to ``timeout`` for a body numbered ``count`` or later; True if there is one."""
        with self.lock:
            return self.lock.wait_for(lambda: len(self.events) > count, timeout)


STEP_RUNS: dict[str, Run] = {}  # crewAI task id -> the run executing it (step webhooks)
_STEP_LISTENER: list[Any] = []


def _prompt_of(messages: Any) -> str | None:
    if isinstance(messages, list):
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return clip(users[-1]) if users else None
    return clip(messages)


def _final_step(event: Any) -> dict[str, Any] | None:
    """A ReAct final answer as a step (crewAI gives a tool-less agent's answer to no step_callback)."""
    text = str(getattr(event, "response", "") or "")
    if "Final Answer:" not in text:
        return None
    head, _, answer = text.partition("Final Answer:")
    thought = head.strip().removeprefix("Thought:").strip()
    prompt = _prompt_of(getattr(event, "messages", None))
    result = clip(answer.strip())
    return {"prompt": prompt, "thought": clip(thought), "tool": None, "tool_input": None, "result": result}


def watch_final_answers(run: Run, tasks: list[Any]) -> None:
    """Send a step webhook for each ReAct final answer of ``tasks`` (crewAI's event bus)."""
    if run.webhooks is None or "step" not in run.webhooks.kinds:
        return
    if not _STEP_LISTENER:
        from crewai.events import crewai_event_bus
        from crewai.events.types.llm_events import LLMCallCompletedEvent

        def on_llm_call(source: Any, event: Any) -> None:
            owner = STEP_RUNS.get(str(getattr(event, "task_id", "") or ""))
            step = _final_step(event) if owner is not None else None
            if owner is not None and owner.webhooks is not None and step is not None:
                owner.webhooks.send("step", step)

        crewai_event_bus.on(LLMCallCompletedEvent)(on_llm_call)
        _STEP_LISTENER.append(crewai_event_bus)
    for task in tasks:
        STEP_RUNS[str(task.id)] = run
        run.task_ids.append(str(task.id))


def flush_final_answers(run: Run) -> None:
    """Let the event bus's handler threads see the run's last LLM calls (before finish)."""
    if run.task_ids and _STEP_LISTENER:
        with contextlib.suppress(Exception):
            _STEP_LISTENER[0].flush(timeout=5.0)


def task_payload(output: Any) -> dict[str, Any]:
    names = {"description": "description", "name": "name", "expected_output": "expected_output",
             "summary": "summary", "agent": "agent", "output": "raw", "output_json": "json_dict"}
    return {key: getattr(output, attr, None) for key, attr in names.items()}


def wait_for_news(run: Run, wait: float, after: int | None, human: int | None = None) -> None:
    """A long poll: until the run ends, a request for human input starts or ends (``human``:
    the version the caller saw) or, asked ``after``, the run records a body numbered
    ``after`` or later (streamed events go out as they happen, not at the next poll)."""
    hooks = run.webhooks
    if after is None or hooks is None:
        run.gate.wait(wait, human)
        return
    seen = run.gate.version if human is None else human
    deadline = time.monotonic() + wait
    while not run.finished.is_set() and run.gate.version == seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or hooks.wait_beyond(after, min(remaining, 0.25)):
            return
