"""Human input (crewai-protocol.md C.5): a run that asks a human waits here, not on stdin.

A task with ``human_input=True`` asks crewAI's human input provider
(``crewai.core.providers.human_input``, a ContextVar) for feedback on its answer; a flow's
``@human_feedback`` asks ``flow_config.hitl_provider``. The runner installs its own
providers for every run: they put the request (task id, output) on the run's
``HumanGate`` and the crew's thread waits there. The run then reports
``PENDING_HUMAN_INPUT`` with ``human_input`` (``GET /runs/{id}``), the daemon notifies the
humans and answers with ``POST /runs/{id}/resume``
(``{"task_id", "human_feedback", "is_approve", "round"}``):

- ``is_approve: true``: the answer stands and the crew goes on (``"resumed"``);
- ``is_approve: false``: the feedback goes to the agent as a message, the task runs again
  and asks again, a new round (``"retrying"``);
- a flow's method gets ``human_feedback`` as its feedback string (its own routing decides).

A stopped run, or an instance that is stopping (SIGTERM: a restart or a deploy), ends the
wait with ``HumanInputAbortedError``, so the run fails with the reason instead of holding
the instance up: the paused state lives in the crew's own Python stack and dies with it.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterable
from typing import Any

from .output import say, timestamp

WAITING = "PENDING_HUMAN_INPUT"
OUTPUT_LIMIT = 100_000     # characters of a task output sent for review
FEEDBACK_LIMIT = 100_000   # characters of feedback a resume may carry
NOT_WAITING = "Execution is not in pending human input state"

CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("crewship_run", default=None)


class HumanInputAbortedError(RuntimeError):
    """The run stopped, or its instance is stopping, while it waited for a human."""


def _text(value: Any, limit: int) -> str:
    if hasattr(value, "model_dump_json"):
        value = value.model_dump_json()
    return ("" if value is None else str(value))[:limit]


class HumanGate:
    """One run's requests for human input: asked by the crew's thread, answered by the daemon."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.request: dict[str, Any] | None = None
        self.rounds = 0
        self.version = 0  # changes whenever a request starts or ends (long polls wake on it)
        self._answer: dict[str, Any] | None = None
        self._closed: str | None = None
        self._done = False

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Wait for the human's answer to ``request`` (``{"feedback", "approve"}``)."""
        with self._cond:
            if self._closed:
                raise HumanInputAbortedError(self._closed)
            self.rounds += 1
            self.request = {**request, "round": self.rounds, "requested_at": timestamp()}
            self._answer = None
            self._bump()
            say(f"waiting for human input on {request.get('task_id')} (round {self.rounds})")
            while self._answer is None and self._closed is None:
                self._cond.wait()
            answer, self._answer, self.request = self._answer, None, None
            self._bump()
            if answer is None:
                raise HumanInputAbortedError(self._closed)
            return answer

    def answer(self, body: Any) -> tuple[int, dict[str, Any]]:
        """``POST /runs/{id}/resume``: hand the human's answer to the waiting thread."""
        problem = _invalid(body)
        if problem:
            return 400, {"error": "Invalid Request", "message": problem}
        approve = bool(body["is_approve"])
        with self._cond:
            request = self.request
            if request is None or self._answer is not None or (
                    body.get("round") is not None and body["round"] != request["round"]):
                return 400, {"error": "Invalid Request", "message": NOT_WAITING}
            if str(body["task_id"]) not in (request["task_id"], request.get("crewai_task_id")):
                return 404, {"error": "Not Found", "message": (
                    f"task {str(body['task_id'])[:80]!r} is not waiting for human input: "
                    f"{request['task_id']} is")}
            self._answer = {"feedback": str(body.get("human_feedback") or ""),
                            "approve": approve}
            self._cond.notify_all()
        if approve:
            return 200, {"status": "resumed", "message": "Execution resumed successfully"}
        return 200, {"status": "retrying", "message": "Task will be retried with your feedback"}

    def close(self, reason: str) -> None:
        """End any wait (now or later) with ``reason``."""
        with self._cond:
            self._closed = self._closed or reason
            self._cond.notify_all()

    def finished(self) -> None:
        """The run ended (a result, or stopped): wake its waiters and long polls."""
        with self._cond:
            self._done = True
            self._closed = self._closed or "the kickoff was stopped"
            self._bump()

    def wait(self, timeout: float, known: int | None) -> None:
        """A long poll: until the run ends, or a request starts or ends (``known``: the
        version the caller has seen; None: the current one)."""
        with self._cond:
            seen = self.version if known is None else known
            self._cond.wait_for(lambda: self._done or self.version != seen, timeout)

    def status(self) -> dict[str, Any]:
        """What ``GET /runs/{id}`` adds for a running run."""
        with self._cond:
            if self.request is None or self._answer is not None:
                return {"human_version": self.version}
            return {"state": WAITING, "human_input": dict(self.request),
                    "human_version": self.version}

    def _bump(self) -> None:
        self.version += 1
        self._cond.notify_all()


def _invalid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not isinstance(body.get("task_id"), str) or not body["task_id"]:
        return "task_id must be a non-empty string"
    if not isinstance(body.get("is_approve"), bool):
        return "is_approve must be true or false"
    feedback = body.get("human_feedback")
    if feedback is not None and not isinstance(feedback, str):
        return "human_feedback must be a string"
    if feedback and len(feedback) > FEEDBACK_LIMIT:
        return f"human_feedback is longer than {FEEDBACK_LIMIT} characters"
    return None


def abort_waiting(runs: Iterable[Any], reason: str) -> None:
    """The instance is stopping: every run waiting for a human fails with ``reason``."""
    for run in list(runs):
        run.gate.close(reason)


# ------------------------------------------------------------------ crewAI providers
def _task_request(run: Any, context: Any, answer: Any) -> dict[str, Any]:
    task = getattr(context, "task", None)
    name = getattr(task, "name", None) or run.current_task() or "task"
    agent = getattr(getattr(context, "agent", None), "role", None)
    return {"kind": "task", "task_id": str(name), "crewai_task_id": str(getattr(task, "id", "")),
            "output": _text(getattr(answer, "output", None), OUTPUT_LIMIT),
            "description": _text(getattr(task, "description", None), OUTPUT_LIMIT),
            "expected_output": _text(getattr(task, "expected_output", None), OUTPUT_LIMIT),
            "agent": (agent or "").strip() or None}


class TaskInputProvider:
    """crewAI's ``HumanInputProvider`` for one run: the review goes to the run's gate."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def setup_messages(self, context: Any) -> bool:
        return False

    def post_setup_messages(self, context: Any) -> None:
        """Nothing to add: the standard messages stand."""

    def handle_feedback(self, answer: Any, context: Any) -> Any:
        while True:
            reply = self.run.gate.ask(_task_request(self.run, context, answer))
            if reply["approve"]:
                break
            context.messages.append(context._format_feedback_message(reply["feedback"]))
            answer = context._invoke_loop()
        context.ask_for_human_input = False
        return answer

    async def handle_feedback_async(self, answer: Any, context: Any) -> Any:
        while True:
            reply = await asyncio.to_thread(self.run.gate.ask,
                                            _task_request(self.run, context, answer))
            if reply["approve"]:
                break
            context.messages.append(context._format_feedback_message(reply["feedback"]))
            answer = await context._ainvoke_loop()
        context.ask_for_human_input = False
        return answer


class FlowFeedbackProvider:
    """``flow_config.hitl_provider``: a flow's ``@human_feedback`` asks the current run."""

    def request_feedback(self, context: Any, flow: Any) -> str:
        run = CURRENT.get()
        if run is None:
            raise HumanInputAbortedError("human feedback asked outside a kickoff")
        reply = run.gate.ask({
            "kind": "flow", "task_id": str(context.method_name),
            "output": _text(context.method_output, OUTPUT_LIMIT),
            "message": _text(context.message, OUTPUT_LIMIT), "emit": context.emit})
        return str(reply["feedback"])


def bind(run: Any) -> None:
    """Called in the run's own thread before the crew starts: its human input goes to
    ``run.gate`` (threads crewAI starts copy this context)."""
    CURRENT.set(run)
    try:
        from crewai.core.providers.human_input import set_provider
    except ImportError:  # an older crewAI: no providers, human_input reads stdin (closed)
        return
    set_provider(TaskInputProvider(run))  # type: ignore[arg-type]
    try:
        from crewai.flow.flow_config import flow_config
    except ImportError:
        return
    if flow_config.hitl_provider is None:  # a provider of the crew's own stays
        flow_config.hitl_provider = FlowFeedbackProvider()  # type: ignore[assignment]
