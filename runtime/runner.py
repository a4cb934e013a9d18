"""crewship's in-crew runner: loads one CrewAI project and serves the daemon's internal API.

The builder copies this file into every release as ``crewship_runner.py``; the supervisor
starts it with the release's own interpreter (which has crewai, the daemon never does)::

    python crewship_runner.py --app-dir APP --kind crew|json_crew|flow|declarative_flow|entrypoint
        --package PKG [--definition REL_PATH] [--entrypoint pkg.mod:callable]
        --host 127.0.0.1 --port N --instance v3.1 [--secret-file PATH]   (secret on stdin)

Standard library only (crewai is imported lazily), Python 3.10+. The crew is loaded
before the port is bound, so a crew that cannot load exits non-zero with its traceback.
The channel is authenticated: the instance's secret comes once on stdin (or a read-only
``--secret-file``), never in argv or env; every request must carry ``X-Crewship-Signature``
(an HMAC of time, nonce, method, path and body) or gets 401, and every reply carries
``X-Crewship-Proof`` (an HMAC of that signature, status and body): the secret never crosses
the wire and a process that took the port cannot pass for the instance.
HTTP API (JSON): ``GET /healthz``, ``GET /inputs``, ``POST /runs`` (``{"kickoff_id", "inputs",
"webhooks": {"task": true, "step": true}, "meta"}``: 202 at once, idempotent per kickoff id;
the runner records task/step webhook bodies, the daemon delivers them), ``GET
/runs/{id}?wait=S&after=N`` (long poll; with ``after``: the webhook bodies from number N on),
``POST /runs/{id}/stop``, ``POST /runs/{id}/ack`` (the daemon stored the result). Finished
results are kept until acknowledged, so a restarted daemon still collects them.
SIGTERM/SIGINT: refuse new runs (503), let running ones finish and be collected, exit 0.
Output lines are ``<ISO-8601 UTC ms>Z [<instance>] <text>`` on the inherited stdout/stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import importlib
import inspect
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

KINDS = ("crew", "json_crew", "flow", "declarative_flow", "entrypoint")
TELEMETRY_ENV = {"CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true",
                 "CREWAI_TRACING_ENABLED": "false", "CREWAI_DISABLE_VERSION_CHECK": "true"}
FINISHED_KEPT = 10_000  # finished runs kept for the daemon to collect (acknowledged ones go at once)
LONG_POLL_MAX = 60.0
DRAIN_ACK_WAIT = 30.0  # after the last run ended, how long a draining runner waits for acks
SIGNATURE_HEADER = "X-Crewship-Signature"
PROOF_HEADER = "X-Crewship-Proof"
SIGNATURE_MAX_AGE = 300.0  # seconds a signed request stays valid (clock skew between nodes)
MIN_SECRET_BYTES = 16
TEXT_LIMIT = 2000
WEBHOOK_EVENTS_KEPT = 2000  # task/step webhook bodies one run keeps for the daemon


# ---- output: one timestamped, instance-tagged line per write ---------------------------------


def timestamp() -> str:
    now = datetime.now(timezone.utc)  # noqa: UP017 (the runner also runs on Python 3.10)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class LinePrefixer:
    """A text stream that writes each complete line to ``fd`` as ``<ts> [<tag>] <line>``.

    Partial lines are buffered per thread, so concurrent runs do not splice each other's
    lines; each finished line is one ``os.write`` (atomic on an O_APPEND log file).
    """

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, fd: int, tag: str) -> None:
        self._fd = fd
        self._tag = tag
        self._local = threading.local()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        pending = getattr(self._local, "pending", "") + text
        *lines, self._local.pending = pending.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        data = f"{timestamp()} [{self._tag}] {line.rstrip(chr(13))}\n".encode("utf-8", "replace")
        with self._lock:
            while data:
                data = data[os.write(self._fd, data) :]

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Complete lines are already written; a partial line waits for its newline."""

    def close_line(self) -> None:
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            self._emit(pending)

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False


def install_output(instance: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    sys.stdout = LinePrefixer(1, instance)  # type: ignore[assignment]
    sys.stderr = LinePrefixer(2, instance)  # type: ignore[assignment]


def say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


# ---- the daemon channel: the instance's secret, signed requests, proven replies ---------------


def read_secret(source: str) -> bytes:
    """The instance's secret: one line on stdin (``-``, then stdin is closed) or a file."""
    if source == "-":
        line = sys.stdin.buffer.readline() if sys.stdin is not None else b""
        with open(os.devnull, "rb") as null:
            os.dup2(null.fileno(), 0)  # nothing else ever reads the pipe
    else:
        line = Path(source).read_bytes()
    secret = line.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"no instance secret on {'stdin' if source == '-' else source}")
    return secret


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def request_mac(secret: bytes, stamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    """What a signed request carries: binds time, nonce, method, path (with query) and body."""
    return _mac(secret, "request", stamp, nonce, method.upper(), path, hashlib.sha256(body).hexdigest())


def response_mac(secret: bytes, signature: str, status: int, body: bytes) -> str:
    """What a reply carries: proves the runner holds the secret, for this request and body."""
    return _mac(secret, "response", signature, str(status), hashlib.sha256(body).hexdigest())


def sign(secret: bytes, method: str, path: str, body: bytes, now: float | None = None) -> str:
    """The ``X-Crewship-Signature`` value for one request (the daemon's side, and tests')."""
    stamp, nonce = f"{time.time() if now is None else now:.3f}", os.urandom(8).hex()
    return f"{stamp}:{nonce}:{request_mac(secret, stamp, nonce, method, path, body)}"


def signature_valid(secret: bytes, header: str, method: str, path: str, body: bytes) -> bool:
    stamp, nonce, mac = [*header.split(":", 2), "", ""][:3]
    try:
        fresh = abs(time.time() - float(stamp)) <= SIGNATURE_MAX_AGE
    except ValueError:
        return False
    expected = request_mac(secret, stamp, nonce, method, path, body)
    return hmac.compare_digest(mac.encode(), expected.encode()) and fresh


# ---- loading the project ---------------------------------------------------------------------


class Project:
    """``build()`` makes a fresh crew/flow/callable per run; ``inputs`` required, ``defaults`` not."""

    def __init__(self, kind: str, build: Callable[[], Any], inputs: list[str],
                 defaults: dict[str, Any] | None = None, total_tasks: int = 0,
                 flow: bool = False) -> None:
        self.kind = kind
        self.build = build
        self.inputs = inputs
        self.defaults = defaults or {}
        self.total_tasks = total_tasks
        self.flow = flow

    def describe(self) -> dict[str, Any]:
        """``GET /inputs``: the documented ``{"inputs": [...]}`` plus the optional inputs."""
        return {"inputs": self.inputs, "optional_inputs": self.defaults, "flow": self.flow}


def _module_classes(module: Any, accept: Callable[[type], bool]) -> list[type]:
    return [value for value in vars(module).values()
            if isinstance(value, type) and value.__module__ == module.__name__ and accept(value)]


def _is_crew_class(value: Any) -> bool:
    return bool(getattr(value, "is_crew_class", False))


def _is_flow_class(value: Any) -> bool:
    if not isinstance(value, type):
        return False
    from crewai.flow import Flow

    return isinstance(value, type) and issubclass(value, Flow) and value is not Flow


def _flow_project(kind: str, build: Callable[[], Any], sample: Any) -> Project:
    required, optional = flow_fields(sample)
    return Project(kind, build, required, optional, flow=True)


def _crew_project(kind: str, build: Callable[[], Any], defaults: dict[str, Any]) -> Project:
    crew = build()
    inputs = sorted(set(crew.fetch_inputs()) - set(defaults))
    return Project(kind, build, inputs, defaults, total_tasks=len(crew.tasks))


def load_project(args: argparse.Namespace) -> Project:
    kind = args.kind
    enter_workdir(args.app_dir.resolve())
    if kind == "crew":
        module = importlib.import_module(f"{args.package}.crew")
        classes = _module_classes(module, _is_crew_class)
        if not classes:
            raise LookupError(f"no @CrewBase class in src/{args.package}/crew.py")
        return _crew_project(kind, lambda: classes[0]().crew(), {})
    if kind == "json_crew":
        from crewai.project.crew_loader import load_crew

        path = Path(args.definition or "crew.jsonc").resolve()
        _, defaults = load_crew(path)
        return _crew_project(kind, lambda: load_crew(path)[0], dict(defaults or {}))
    if kind == "flow":
        module = importlib.import_module(f"{args.package}.main")
        classes = _module_classes(module, _is_flow_class)
        leaves = [c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)]
        if not leaves:
            raise LookupError(f"no Flow subclass in src/{args.package}/main.py")
        return _flow_project(kind, leaves[0], leaves[0]())
    if kind == "declarative_flow":
        from crewai.flow import Flow

        if not args.definition:
            raise ValueError("--definition is required for a declarative flow")
        path = Path(args.definition).resolve()
        sample = Flow.from_declaration(path=path)
        return _flow_project(kind, lambda: Flow.from_declaration(path=path), sample)
    return _entrypoint_project(args.entrypoint)


def _entrypoint_project(spec: str | None) -> Project:
    """``pkg.mod:callable``: a crew class, a Flow class, a factory, or a function of inputs."""
    if not spec or ":" not in spec:
        raise ValueError("--entrypoint must look like pkg.module:callable")
    module_name, _, attr = spec.partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    if _is_crew_class(target):
        return _crew_project("entrypoint", lambda: target().crew(), {})
    if _is_flow_class(target):
        return _flow_project("entrypoint", target, target())
    params = [p for p in inspect.signature(target).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if params:
        return Project("entrypoint", lambda: target, list(getattr(target, "inputs", [])))
    sample = target()
    if hasattr(sample, "fetch_inputs"):
        return _crew_project("entrypoint", target, {})
    if hasattr(sample, "kickoff"):
        return _flow_project("entrypoint", target, sample)
    raise TypeError(f"{spec} returned {type(sample).__name__}, not a Crew or a Flow")


# ---- inputs, state ids and trigger payloads (crewai-protocol.md C.2, C.3, D.2) ----------------

RESTORE_KEY = "crewship_restore_from_state_id"  # the daemon's restoreFromStateId, in "inputs"
NOT_INPUTS = ("id", "crewai_trigger_payload")  # never required: crewAI's own keys


def flow_fields(flow: Any) -> tuple[list[str], dict[str, Any]]:
    """(required, {optional: default}) of a flow's state: required = a field without a default."""
    state = flow.state
    if isinstance(state, dict):
        return [], {k: v for k, v in state.items() if k not in NOT_INPUTS}
    fields = {n: f for n, f in type(state).model_fields.items() if n not in NOT_INPUTS}
    optional = {n: getattr(state, n, None) for n, f in fields.items() if not f.is_required()}
    plain = {n: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for n, v in optional.items()}
    return [n for n, f in fields.items() if f.is_required()], plain


def enter_workdir(app_dir: Path) -> None:
    """Work in ``$HOME/work``, the project's entries linked in: a crew's report.md or output/ lands in
    the app's storage, not in the read-only release; crewAI's storage dir keeps the project's name."""
    os.environ.setdefault("CREWAI_STORAGE_DIR", app_dir.name)
    work = Path(os.environ.get("HOME") or "/nonexistent") / "work"
    with contextlib.suppress(OSError):  # no writable HOME: work in the project itself
        work.mkdir(parents=True, exist_ok=True)
        names = {entry.name for entry in app_dir.iterdir()}
        for link in work.iterdir():  # an older release's entries
            if link.is_symlink() and link.name not in names:
                link.unlink()
        for name in sorted(names - {p.name for p in work.iterdir() if not p.is_symlink()}):
            temp = work / f".{name}.{os.getpid()}.link"
            temp.symlink_to(app_dir / name)
            os.replace(temp, work / name)
        os.chdir(work)


def kickoff_flow(flow: Any, kickoff_id: str, inputs: dict[str, Any]) -> Any:
    """Run a flow whose state id is the kickoff id; ``restoreFromStateId`` forks a saved state
    (unknown: a fresh run), ``inputs.id`` resumes one (deprecated); crewAI injects a trigger payload."""
    inputs = dict(inputs)
    restore = inputs.pop(RESTORE_KEY, None)
    if restore and "restore_from_state_id" in inspect.signature(flow.kickoff).parameters:
        inputs.setdefault("id", kickoff_id)  # the fork's own state id (else a random one)
        return flow.kickoff(inputs=inputs, restore_from_state_id=str(restore))
    if restore:  # an older crewAI: hydrate the deprecated way
        inputs.setdefault("id", str(restore))
    if "id" not in inputs and isinstance(flow.state, dict):
        flow.state["id"] = kickoff_id
    elif "id" not in inputs:
        setattr(flow.state, "id", kickoff_id)  # noqa: B010 (pydantic validates the assignment)
    return flow.kickoff(inputs=inputs)


# ---- task and step webhooks (crewai-protocol.md C.7) ------------------------------------------
# The runner only records them, in order; the daemon fetches them (``GET /runs/{id}?after=N``
# while the run goes on, and the ``POST /runs`` reply) and delivers them itself, to the
# address it checked, with its retries. The runner never sees a webhook URL.


class WebhookLog:
    """One run's task/step webhook bodies, in order, for the daemon to deliver."""

    def __init__(self, kinds: Any, kickoff_id: str, meta: Any) -> None:
        wanted = kinds if isinstance(kinds, dict) else {}
        self.kinds = {kind for kind in wanted if kind in ("task", "step")}
        self.kickoff_id = kickoff_id
        self.meta = meta
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        if kind not in self.kinds:
            return
        body = {**payload, "kickoff_id": self.kickoff_id, "meta": self.meta}
        with self.lock:
            if len(self.events) < WEBHOOK_EVENTS_KEPT:
                self.events.append({"kind": kind, "body": body})

    def since(self, count: int) -> list[dict[str, Any]]:
        with self.lock:
            return self.events[max(0, count):]


_STEP_RUNS: dict[str, Run] = {}  # crewAI task id -> the run executing it (step webhooks)
_STEP_LISTENER: list[Any] = []


def _prompt_of(messages: Any) -> str | None:
    if isinstance(messages, list):
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return _clip(users[-1]) if users else None
    return _clip(messages)


def _final_step(event: Any) -> dict[str, Any] | None:
    """A ReAct final answer as a step (crewAI gives a tool-less agent's answer to no step_callback)."""
    text = str(getattr(event, "response", "") or "")
    if "Final Answer:" not in text:
        return None
    head, _, answer = text.partition("Final Answer:")
    thought = head.strip().removeprefix("Thought:").strip()
    prompt = _prompt_of(getattr(event, "messages", None))
    result = _clip(answer.strip())
    return {"prompt": prompt, "thought": _clip(thought), "tool": None, "tool_input": None, "result": result}


def watch_final_answers(run: Run, tasks: list[Any]) -> None:
    """Send a step webhook for each ReAct final answer of ``tasks`` (crewAI's event bus)."""
    if run.webhooks is None or "step" not in run.webhooks.kinds:
        return
    if not _STEP_LISTENER:
        from crewai.events import crewai_event_bus
        from crewai.events.types.llm_events import LLMCallCompletedEvent

        def on_llm_call(source: Any, event: Any) -> None:
            owner = _STEP_RUNS.get(str(getattr(event, "task_id", "") or ""))
            step = _final_step(event) if owner is not None else None
            if owner is not None and owner.webhooks is not None and step is not None:
                owner.webhooks.send("step", step)

        crewai_event_bus.on(LLMCallCompletedEvent)(on_llm_call)
        _STEP_LISTENER.append(crewai_event_bus)
    for task in tasks:
        _STEP_RUNS[str(task.id)] = run
        run.task_ids.append(str(task.id))


def flush_final_answers(run: Run) -> None:
    """Let the event bus's handler threads see the run's last LLM calls (before finish)."""
    if run.task_ids and _STEP_LISTENER:
        with contextlib.suppress(Exception):
            _STEP_LISTENER[0].flush(timeout=5.0)


def _task_payload(output: Any) -> dict[str, Any]:
    names = {"description": "description", "name": "name", "expected_output": "expected_output",
             "summary": "summary", "agent": "agent", "output": "raw", "output_json": "json_dict"}
    return {key: getattr(output, attr, None) for key, attr in names.items()}


# ---- runs ------------------------------------------------------------------------------------


def _clip(value: Any) -> str | None:
    return None if value is None else str(value)[:TEXT_LIMIT]


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

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def check_revoked(self) -> None:
        """Called from crewAI's callbacks: a revoked run stops at its next step (best effort)."""
        if self.state == "REVOKED":
            raise RuntimeError(f"kickoff {self.kickoff_id} was stopped")

    def on_step(self, step: Any) -> None:
        self.check_revoked()
        self.last_step = {key: _clip(getattr(step, key, None)) for key in ("thought", "tool", "tool_input")}
        self.last_step["result"] = _clip(getattr(step, "result", None) or getattr(step, "output", None))
        if self.webhooks is not None:
            self.webhooks.send("step", {"prompt": _clip(getattr(step, "prompt", None)), **self.last_step})

    def current_task(self) -> str | None:
        names = self.task_names
        return names[self.completed_tasks] if self.completed_tasks < len(names) else None

    def on_task(self, output: Any) -> None:
        self.task_times.append(time.monotonic())
        self.completed_tasks += 1
        self.check_revoked()
        if self.webhooks is not None:
            self.webhooks.send("task", _task_payload(output))

    def status(self) -> dict[str, Any]:
        if self.state != "RUNNING":
            return {"kickoff_id": self.kickoff_id, **self.outcome}
        progress = {"completed_tasks": self.completed_tasks, "total_tasks": self.total_tasks}
        return {"kickoff_id": self.kickoff_id, "state": "RUNNING", "current_task": self.current_task(),
                "progress": progress, "last_step": self.last_step, "execution_time": self.elapsed()}


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
        try:
            outcome = {"state": "SUCCESS", **self._execute(run, inputs)}
        except BaseException as exc:  # a run's failure must never take the runner down
            traceback.print_exc()
            outcome = {"state": "FAILURE", "error": f"{type(exc).__name__}: {exc}"}
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
            _STEP_RUNS.pop(task_id, None)
        run.finished.set()
        say(f"kickoff {run.kickoff_id} finished {run.state} in {outcome['execution_time']:.1f}s")

    def stop(self, kickoff_id: str) -> tuple[int, dict[str, Any]]:
        run = self.runs.get(kickoff_id)
        if run is None:
            return 404, _not_found(kickoff_id)
        if run.state != "RUNNING":
            error = f"Cannot stop execution. Current state: {run.state}"
            return 409, {"kickoff_id": kickoff_id, "state": run.state, "error": error}
        self.finish(run, {"state": "REVOKED", "error": "stopped", "execution_time": run.elapsed()})
        return 200, {"kickoff_id": kickoff_id, "state": "REVOKED"}


def _with_webhooks(run: Run, after: int | None) -> dict[str, Any]:
    """A run's status, plus its webhook bodies from number ``after`` on (when asked)."""
    body = run.status()
    if after is not None and run.webhooks is not None:
        body["webhook_events"] = run.webhooks.since(after)
    return body


def _not_found(kickoff_id: str) -> dict[str, Any]:
    message = f"No execution found with ID: {kickoff_id}"
    return {"state": "NOT FOUND", "error": "Execution not found", "message": message}


# ---- HTTP ------------------------------------------------------------------------------------

RUN_PATH = re.compile(r"^/runs/([^/]+)(/stop|/ack)?$")
MAX_BODY = 4 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0): no idle keep-alive sockets to go stale."""

    server: RunnerServer
    signature = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the daemon logs its own requests; kickoffs log their lifecycle."""

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.signature:
            self.send_header(PROOF_HEADER, response_mac(self.server.secret, self.signature, status, data))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the caller gave up
            self.wfile.write(data)

    def _authenticated(self, method: str) -> bytes | None:
        """The request's body if it carries a valid signature; otherwise 401 and None."""
        declared = self.headers.get("Content-Length") or "0"
        length = int(declared) if declared.isdigit() else -1
        if not 0 <= length <= MAX_BODY:
            self.reply(400, {"error": "Bad Request", "message": "bad Content-Length"})
            return None
        body = self.rfile.read(length) if length else b""
        header = self.headers.get(SIGNATURE_HEADER) or ""
        if not signature_valid(self.server.secret, header, method, self.path, body):
            self.reply(401, {"error": "Unauthorized", "message": "missing or invalid request signature"})
            return None
        self.signature = header
        return body

    def do_GET(self) -> None:
        if self._authenticated("GET") is None:
            return
        runner = self.server.runner
        path, _, query = self.path.partition("?")
        match = RUN_PATH.match(path)
        if path == "/healthz":
            project, draining = runner.project, runner.draining
            health = {"status": "draining" if draining else "ok", "kind": project.kind}
            health.update(inputs=project.inputs, running=runner.running())
            self.reply(503 if draining else 200, health)
        elif path == "/inputs":
            self.reply(200, runner.project.describe())
        elif match and not match.group(2):
            self._status(match.group(1), _query_number(query, "wait", LONG_POLL_MAX),
                         _query_number(query, "after", None))
        else:
            self.reply(404, {"error": "Not Found", "message": f"no route GET {path}"})

    def _status(self, kickoff_id: str, wait: float | None, after: float | None) -> None:
        run = self.server.runner.runs.get(kickoff_id)
        if run is not None and wait:
            run.finished.wait(wait)
        if run is None:
            self.reply(404, _not_found(kickoff_id))
        else:
            self.reply(200, _with_webhooks(run, None if after is None else int(after)))

    def do_POST(self) -> None:
        body = self._authenticated("POST")
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        match = RUN_PATH.match(path)
        if match and match.group(2) == "/stop":
            self.reply(*self.server.runner.stop(match.group(1)))
        elif match and match.group(2) == "/ack":
            self.reply(*self.server.runner.acknowledge(match.group(1)))
        elif path == "/runs":
            self._kickoff(body)
        else:
            self.reply(404, {"error": "Not Found", "message": f"no route POST {path}"})

    def _kickoff(self, raw: bytes) -> None:
        runner = self.server.runner
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            self.reply(400, {"error": "Bad Request", "message": f"invalid JSON: {exc}"})
            return
        inputs = body.get("inputs", {}) if isinstance(body, dict) else None
        kickoff_id = str(body.get("kickoff_id") or uuid.uuid4()) if isinstance(body, dict) else ""
        if not isinstance(inputs, dict):
            self.reply(400, {"error": "Bad Request", "message": "inputs must be a JSON object"})
            return
        if runner.draining and kickoff_id not in runner.runs:  # a retry still gets its status
            self.reply(503, {"error": "Service Unavailable", "message": "runner is stopping"})
            return
        hooks = body.get("webhooks")
        log = WebhookLog(hooks, kickoff_id, body.get("meta")) if isinstance(hooks, dict) else None
        run, created = runner.start(kickoff_id, inputs, log)
        self.reply(202 if created else 200, run.status())


def _query_number(query: str, name: str, cap: float | None) -> float | None:
    """``name`` of the query string as a number >= 0 (capped), or None when absent or bad."""
    try:
        value = max(0.0, float(parse_qs(query)[name][0]))
    except (KeyError, ValueError):
        return None
    return value if cap is None else min(value, cap)


class RunnerServer(ThreadingHTTPServer):
    daemon_threads = True  # a long poll must not hold up the exit
    allow_reuse_address = True  # TIME_WAIT only: Linux never binds over a live listener
    request_queue_size = 1024  # the listen backlog: bursts of connections queue, not fail

    def __init__(self, address: tuple[str, int], runner: Runner, secret: bytes) -> None:
        super().__init__(address, Handler)
        self.runner = runner
        self.secret = secret


def _drain(server: RunnerServer) -> None:
    """Let running kickoffs end, then give the daemon a while to collect their results."""
    while server.runner.running():
        time.sleep(0.1)
    deadline = time.monotonic() + DRAIN_ACK_WAIT
    while server.runner.unacknowledged() and time.monotonic() < deadline:
        time.sleep(0.1)
    server.shutdown()


def install_signals(server: RunnerServer) -> None:
    def on_signal(signum: int, frame: Any) -> None:
        if server.runner.draining:
            return
        server.runner.draining = True
        name = signal.Signals(signum).name
        say(f"{name} received: draining {server.runner.running()} running kickoff(s)")
        threading.Thread(target=_drain, args=(server,), name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def warm_up() -> None:
    """Import what the first LLM call would import lazily (the OpenAI SDK's resources, ~4 s)."""
    with contextlib.suppress(Exception):
        importlib.import_module("openai.resources")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crewship_runner", description=__doc__.split("\n")[0])
    parser.add_argument("--app-dir", required=True, type=Path)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--package", default="")
    parser.add_argument("--definition")
    parser.add_argument("--entrypoint")  # pkg.mod:callable
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--instance", default="runner")
    parser.add_argument("--secret-file", default="-", help="the instance's secret (default: stdin)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        secret = read_secret(args.secret_file)
    except (OSError, ValueError) as exc:
        print(f"crewship_runner: {exc}: the daemon passes it when it starts an instance", file=sys.stderr)
        return 2
    for key, value in TELEMETRY_ENV.items():
        os.environ.setdefault(key, value)
    install_output(args.instance)
    app_dir = args.app_dir.resolve()
    os.chdir(app_dir)
    for entry in (app_dir, app_dir / "src"):
        if str(entry) not in sys.path:
            sys.path.insert(0, str(entry))
    started = time.monotonic()
    say(f"loading {args.kind} from {app_dir}")
    try:
        runner = Runner(load_project(args))
        server = RunnerServer((args.host, args.port), runner, secret)
    except Exception:
        say("failed to load the crew:")
        traceback.print_exc()
        return 1
    install_signals(server)
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    say(f"loaded in {time.monotonic() - started:.1f}s; inputs: {', '.join(runner.project.inputs)}")
    say(f"listening on {args.host}:{server.server_address[1]}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    say("stopped")
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, LinePrefixer):
            stream.close_line()
    return 0


if __name__ == "__main__":
    sys.exit(main())
