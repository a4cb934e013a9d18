"""The runs of one instance: started, watched, stopped, finished, acknowledged."""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .events import Recorder
from .flows import RESTORE_KEY, kickoff_flow
from .human import HumanGate, bind
from .output import clip, say
from .project import Project
from .webhooks import STEP_RUNS, WebhookLog, flush_final_answers, task_payload, watch_final_answers

FINISHED_KEPT = 10_000  # finished runs kept for the daemon to collect (acknowledged ones go at once)


def _usage(metrics: Any) -> dict[str, int] | None:
    keys = ("total_tokens", "prompt_tokens", "completion_tokens")
    return None if metrics is None else {k: int(getattr(metrics, k, 0) or 0) for k in keys}


class Run:
    def __init__(self, kickoff_id: str, total_tasks: int) -> None:
        self.kickoff_id = kickoff_id
        self.state = "RUNNING"
        self.started = time.monotonic()
        self.task_names: list[str] = []
        self.completed_tasks = 0
        self.total_tasks = total_tasks
        self.last_step: dict[str, Any] | None = None
        self.task_times: list[float] = []
        self.outcome: dict[str, Any] = {}
        self.finished = threading.Event()
        self.webhooks: WebhookLog | None = None
        self.task_ids: list[str] = []  # watched for step webhooks
        self.trace: Recorder | None = None  # crewAI's events: the trace, streamed events
        self.gate = HumanGate()  # human input (human.py)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def check_revoked(self) -> None:
        """Called from crewAI's callbacks: a revoked run stops at its next step (best effort)."""
        if self.state == "REVOKED":
            raise RuntimeError(f"kickoff {self.kickoff_id} was stopped")

    def on_step(self, step: Any) -> None:
        self.check_revoked()
        self.last_step = {key: clip(getattr(step, key, None)) for key in ("thought", "tool", "tool_input")}
        self.last_step["result"] = clip(getattr(step, "result", None) or getattr(step, "output", None))
        if self.webhooks is not None:
            self.webhooks.send("step", {"prompt": clip(getattr(step, "prompt", None)), **self.last_step})

    def current_task(self) -> str | None:
        names = self.task_names
        return names[self.completed_tasks] if self.completed_tasks < len(names) else None

    def on_task(self, output: Any) -> None:
        self.task_times.append(time.monotonic())
        self.completed_tasks += 1
        self.check_revoked()
        if self.webhooks is not None:
            self.webhooks.send("task", task_payload(output))

    def status(self) -> dict[str, Any]:
        if self.state != "RUNNING":
            return {"kickoff_id": self.kickoff_id, **self.outcome}
        progress = {"completed_tasks": self.completed_tasks, "total_tasks": self.total_tasks}
        return {"kickoff_id": self.kickoff_id, "state": "RUNNING", "current_task": self.current_task(),
                "progress": progress, "last_step": self.last_step, "execution_time": self.elapsed(),
                **self.gate.status()}


def _chain(first: Callable[[Any], Any], then: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    def callback(value: Any) -> Any:
        first(value)
        return then(value) if then else None

    return callback


def _crew_result(run: Run, output: Any) -> dict[str, Any]:
    marks = [run.started, *run.task_times]
    tasks = [{"task_id": t.name or f"task_{i + 1}", "output": t.raw, "agent": (t.agent or "").strip(),
              "execution_time": round(marks[i + 1] - marks[i], 3) if i + 1 < len(marks) else None}
             for i, t in enumerate(output.tasks_output)]
    return {"result": output.raw, "result_json": output.json_dict, "tasks": tasks,
            "token_usage": _usage(output.token_usage)}


def _flow_result(flow: Any, output: Any) -> dict[str, Any]:
    if hasattr(output, "tasks_output"):  # a flow whose last step returned a CrewOutput
        return _crew_result(Run("", 0), output)
    if hasattr(output, "raw"):  # an agent's output: keep its text, not its transcript
        result, result_json = str(output.raw), getattr(output, "json_dict", None)
    elif isinstance(output, dict):
        result, result_json = json.dumps(output, default=str), output
    elif hasattr(output, "model_dump"):
        result, result_json = str(output), output.model_dump(mode="json")
    else:
        result, result_json = ("" if output is None else str(output)), None
    usage = _usage(getattr(flow, "usage_metrics", None))
    return {"result": result, "result_json": result_json, "tasks": [], "token_usage": usage}


class Runner:
    """Holds the project and the runs; the HTTP handler is a thin skin over it."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.runs: dict[str, Run] = {}
        self.lock = threading.Lock()
        self.draining = False

    def running(self) -> int:
        with self.lock:
            return sum(1 for r in self.runs.values() if r.state == "RUNNING")

    def unacknowledged(self) -> int:
        """Finished runs whose results the daemon has not yet stored (and acknowledged)."""
        with self.lock:
            return sum(1 for r in self.runs.values() if r.state != "RUNNING")

    def start(self, kickoff_id: str, inputs: dict[str, Any], hooks: WebhookLog | None) -> tuple[Run, bool]:
        """The run of ``kickoff_id``, started now (True) or already known (False)."""
        with self.lock:
            if kickoff_id in self.runs:
                return self.runs[kickoff_id], False
            run = Run(kickoff_id, self.project.total_tasks)
            run.webhooks = hooks
            self.runs[kickoff_id] = run
            finished = [k for k, r in self.runs.items() if r.state != "RUNNING"]
            for old in finished[: max(0, len(finished) - FINISHED_KEPT)]:  # a daemon that never acks
                del self.runs[old]
        name = f"run-{kickoff_id[:8]}"
        threading.Thread(target=self._work, args=(run, inputs), name=name, daemon=True).start()
        return run, True

    def acknowledge(self, kickoff_id: str) -> tuple[int, dict[str, Any]]:
        """The daemon stored the run's result; a finished run is forgotten."""
        with self.lock:
            run = self.runs.get(kickoff_id)
            if run is not None and run.state == "RUNNING":
                return 409, {"kickoff_id": kickoff_id, "error": "the run has not finished"}
            self.runs.pop(kickoff_id, None)
        return 200, {"kickoff_id": kickoff_id, "acknowledged": True}

    def _work(self, run: Run, inputs: dict[str, Any]) -> None:
        say(f"kickoff {run.kickoff_id} started")
        run.trace = Recorder(run.kickoff_id, run.webhooks)
        try:
            bind(run)
            with run.trace.listening():
                outcome = {"state": "SUCCESS", **self._execute(run, inputs)}
        except BaseException as exc:  # a run's failure must never take the runner down
            traceback.print_exc()
            outcome = {"state": "FAILURE", "error": f"{type(exc).__name__}: {exc}"}
        outcome["trace"] = run.trace.finish(outcome.get("error"))
        self.finish(run, {**outcome, "execution_time": run.elapsed()})

    def _execute(self, run: Run, inputs: dict[str, Any]) -> dict[str, Any]:
        target = self.project.build()
        if hasattr(target, "kickoff") and not hasattr(target, "fetch_inputs"):  # a Flow
            return _flow_result(target, kickoff_flow(target, run.kickoff_id, inputs))
        inputs = {k: v for k, v in inputs.items() if k != RESTORE_KEY}
        if hasattr(target, "fetch_inputs"):  # a Crew
            target.step_callback = _chain(run.on_step, target.step_callback)
            target.task_callback = _chain(run.on_task, target.task_callback)
            run.task_names = [t.name or f"task_{i + 1}" for i, t in enumerate(target.tasks)]
            run.total_tasks = len(target.tasks)
            watch_final_answers(run, list(target.tasks))
            try:
                output = target.kickoff(inputs={**self.project.defaults, **inputs})
            finally:
                flush_final_answers(run)
            return _crew_result(run, output)
        output = target(inputs)
        if hasattr(output, "tasks_output"):
            return _crew_result(run, output)
        return _flow_result(None, output)

    def finish(self, run: Run, outcome: dict[str, Any]) -> None:
        with self.lock:
            if run.state != "RUNNING":  # revoked: the late result is discarded
                return
            run.state = outcome["state"]
            run.outcome = outcome
        for task_id in run.task_ids:
            STEP_RUNS.pop(task_id, None)
        run.finished.set()
        run.gate.finished()
        say(f"kickoff {run.kickoff_id} finished {run.state} in {outcome['execution_time']:.1f}s")

    def stop(self, kickoff_id: str) -> tuple[int, dict[str, Any]]:
        run = self.runs.get(kickoff_id)
        if run is None:
            return 404, not_found(kickoff_id)
        if run.state != "RUNNING":
            error = f"Cannot stop execution. Current state: {run.state}"
            return 409, {"kickoff_id": kickoff_id, "state": run.state, "error": error}
        self.finish(run, {"state": "REVOKED", "error": "stopped", "execution_time": run.elapsed()})
        return 200, {"kickoff_id": kickoff_id, "state": "REVOKED"}


def with_webhooks(run: Run, after: int | None) -> dict[str, Any]:
    """A run's status, plus its webhook bodies from number ``after`` on (when asked)."""
    body = run.status()
    if after is not None and run.webhooks is not None:
        body["webhook_events"] = run.webhooks.since(after)
    return body


def not_found(kickoff_id: str) -> dict[str, Any]:
    message = f"No execution found with ID: {kickoff_id}"
    return {"state": "NOT FOUND", "error": "Execution not found", "message": message}
