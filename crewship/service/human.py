"""Human in the loop (reference C.5): kickoffs that wait for a human, and ``POST /resume``.

A task with ``human_input=True`` (or a flow's ``@human_feedback``) makes the runner pause
the run (``runtime/runner/human.py``). The kickoff's driver (``dispatch.py``) sees the
run's ``PENDING_HUMAN_INPUT`` state and calls ``HumanLoop.waiting``: the kickoff row takes
that state with the request (task id, output, round), and the ``humanInputWebhook`` (with
its bearer or basic authentication) and the task webhook get the execution id, task id and
task output. ``HumanLoop.resume`` records the human's answer in the row *before* it tells
the runner, so an answer crewship acknowledged is never lost: when the runner did not get it
(a daemon restart in between), the driver finds the run still waiting on an answered round
and sends the recorded answer again (the runner takes one answer per round).

A waiting kickoff keeps no instance slot and its run deadline is paused. It survives a
daemon restart (the runner holds it; the new daemon follows it again), but not the end of
its instance (a restart, a deploy, a crash): the paused state is the crew's own Python
stack, so the kickoff fails with that reason and has to be kicked off again.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable
from typing import Any

from crewship import log
from crewship.errors import InvalidInputError, NotFoundError
from crewship.events import EventSink, HumanInputDue
from crewship.store.state import Database, now
from crewship.urls import validate_url
from runtime.channel import ChannelError, RunnerClient
from runtime.events import Endpoint
from runtime.supervisor import Supervisor

logger = log.get("crewship.service.human")

WAITING = "PENDING_HUMAN_INPUT"
NOT_WAITING = "Execution is not in pending human input state"
FEEDBACK_LIMIT = 100_000  # characters of one human_feedback (as the runner takes)


def human_webhook(value: Any) -> dict[str, Any] | None:
    """A kickoff's ``humanInputWebhook``, checked: ``{"url", "authentication"?}`` where
    authentication is ``{"strategy": "bearer", "token"}`` or ``{"strategy": "basic",
    "username", "password"}`` (C.3)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInputError("humanInputWebhook must be an object: {\"url\": ..., "
                                "\"authentication\": {\"strategy\": \"bearer\", \"token\": ...}}")
    hook: dict[str, Any] = {"url": validate_url(value.get("url"), "humanInputWebhook.url")}
    auth = value.get("authentication")
    if auth is None:
        return hook
    strategy = auth.get("strategy") if isinstance(auth, dict) else None
    wanted = {"bearer": ("token",), "basic": ("username", "password")}.get(str(strategy))
    if not isinstance(auth, dict) or wanted is None:
        raise InvalidInputError("humanInputWebhook.authentication.strategy must be "
                                "'bearer' (with token) or 'basic' (with username, password)")
    for key in wanted:
        if not isinstance(auth.get(key), str) or not auth[key] or len(auth[key]) > 4096:
            raise InvalidInputError(f"humanInputWebhook.authentication.{key} must be a "
                                    f"non-empty string for the {strategy} strategy")
    hook["authentication"] = {"strategy": strategy, **{key: auth[key] for key in wanted}}
    return hook


def auth_headers(hook: dict[str, Any]) -> dict[str, str]:
    auth = hook.get("authentication") or {}
    if auth.get("strategy") == "bearer":
        return {"Authorization": f"Bearer {auth['token']}"}
    if auth.get("strategy") == "basic":
        pair = f"{auth['username']}:{auth['password']}".encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    return {}


def resume_request(body: dict[str, Any]) -> tuple[str, str, bool, str]:
    """``(execution_id, task_id, is_approve, human_feedback)`` of a ``POST /resume`` body."""
    execution_id, task_id = body.get("execution_id"), body.get("task_id")
    feedback, approve = body.get("human_feedback", ""), body.get("is_approve")
    if not isinstance(execution_id, str) or not execution_id:
        raise InvalidInputError("execution_id must be the kickoff_id of the waiting kickoff")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidInputError("task_id must name the task that waits for human input")
    if not isinstance(feedback, str):
        raise InvalidInputError("human_feedback must be a string")
    if len(feedback) > FEEDBACK_LIMIT:
        raise InvalidInputError(f"human_feedback is longer than {FEEDBACK_LIMIT} characters")
    if not isinstance(approve, bool):
        raise InvalidInputError("is_approve must be true (continue) or false (retry the task "
                                "with the feedback)")
    return execution_id, task_id, approve, feedback


def state_of(text: str | None) -> dict[str, Any]:
    """A row's ``human_json``: ``{"waiting": request | None, "rounds": [...]}``."""
    value = json.loads(text) if text else None
    return value if isinstance(value, dict) else {"waiting": None, "rounds": []}


class HumanLoop:
    def __init__(self, db: Database, supervisor: Supervisor, client: RunnerClient,
                 sink: EventSink, rehook: Callable[[str, dict[str, str]], None]) -> None:
        self.db = db
        self.supervisor = supervisor
        self.client = client
        self.sink = sink
        self.rehook = rehook

    def _row(self, kickoff_id: str) -> sqlite3.Row | None:
        return self.db.one("SELECT kickoffs.*, apps.name AS app_name FROM kickoffs JOIN apps "
                           "ON apps.id = app_id WHERE kickoffs.id = ?", kickoff_id)

    async def waiting(self, app: str, kickoff_id: str, endpoint: Endpoint,
                      request: Any) -> None:
        """The driver saw the run wait on ``request``: record and notify it once per round,
        or re-send the answer crewship already accepted for that round."""
        row = self._row(kickoff_id)
        if row is None or not isinstance(request, dict) or not isinstance(request.get("round"), int):
            return
        human = state_of(row["human_json"])
        answered = [r for r in human["rounds"]
                    if r.get("round") == request["round"] and "is_approve" in r]
        if answered and row["state"] == "RUNNING":
            await self._send(endpoint, kickoff_id, request["task_id"], answered[-1])
            return
        if row["state"] != "RUNNING":  # already waiting (notified), or settled
            return
        human["waiting"] = request
        human["rounds"].append({"round": request["round"], "task_id": request.get("task_id"),
                                "requested_at": now()})
        with self.db.tx() as conn:
            changed = conn.execute("UPDATE kickoffs SET state = ?, human_json = ? WHERE id = ? "
                                   "AND state = 'RUNNING'",
                                   (WAITING, json.dumps(human), kickoff_id)).rowcount
        if not changed:
            return
        logger.info("human_input_requested", app=app, kickoff_id=kickoff_id,
                    task=request.get("task_id"), round=request["round"])
        self.sink(self._due(row, request))

    def _due(self, row: sqlite3.Row, request: dict[str, Any]) -> HumanInputDue:
        body = {"execution_id": row["id"], "kickoff_id": row["id"], "state": WAITING,
                "task_id": request.get("task_id"), "task_output": request.get("output"),
                "output": request.get("output"), "round": request["round"],
                "kind": request.get("kind"), "agent": request.get("agent"),
                "description": request.get("description"),
                "expected_output": request.get("expected_output"),
                "message": request.get("message"),
                "meta": json.loads(row["meta_json"]) if row["meta_json"] else None}
        hook = json.loads(self.db.sealer.open(row["human_webhook"])) if row["human_webhook"] else {}
        urls = json.loads(row["webhooks_json"]) if row["webhooks_json"] else {}
        return HumanInputDue(row["app_name"], row["id"], body, hook.get("url"),
                             auth_headers(hook), urls.get("task"))

    async def resume(self, app_id: int, app: str, body: dict[str, Any],
                     webhooks: dict[str, str]) -> dict[str, Any]:
        """``POST /resume``: the answer is stored, then handed to the waiting run."""
        kickoff_id, task_id, approve, feedback = resume_request(body)
        row = self._row(kickoff_id)
        if row is None or row["app_id"] != app_id:
            raise NotFoundError("Execution ID not found")
        human = state_of(row["human_json"])
        waiting = human.get("waiting")
        if row["state"] != WAITING or not isinstance(waiting, dict):
            raise InvalidInputError(NOT_WAITING)
        if task_id not in (waiting.get("task_id"), waiting.get("crewai_task_id")):
            raise NotFoundError(f"Task ID not found: {task_id[:80]!r} is not waiting for "
                                f"human input ({waiting.get('task_id')} is)")
        answer = {"round": waiting["round"], "task_id": waiting.get("task_id"),
                  "human_feedback": feedback, "is_approve": approve, "answered_at": now()}
        human["rounds"] = [r for r in human["rounds"] if r.get("round") != waiting["round"]]
        human["rounds"].append({**answer, "requested_at": waiting.get("requested_at")})
        human["waiting"] = None
        kept = json.loads(row["webhooks_json"]) if row["webhooks_json"] else {}
        stream = {k: v for k, v in kept.items() if k == "events"}  # the kickoff's event stream
        hooks = {**webhooks, **stream}
        with self.db.tx() as conn:
            changed = conn.execute(
                "UPDATE kickoffs SET state = 'RUNNING', human_json = ?, webhooks_json = ? "
                "WHERE id = ? AND state = ?",
                (json.dumps(human), json.dumps(hooks) if hooks else None, kickoff_id,
                 WAITING)).rowcount
        if not changed:  # another resume (or a stop) came first
            raise InvalidInputError(NOT_WAITING)
        self.rehook(kickoff_id, {k: v for k, v in webhooks.items() if k in ("task", "step")})
        logger.info("human_input_answered", app=app, kickoff_id=kickoff_id,
                    task=answer["task_id"], round=answer["round"], approved=approve)
        endpoint = self.supervisor.endpoint(app, row["instance"] or "")
        if endpoint is not None:  # else the instance is gone: its exit settles the kickoff
            await self._send(endpoint, kickoff_id, str(answer["task_id"]), answer)
        if approve:
            return {"status": "resumed", "message": "Execution resumed successfully"}
        return {"status": "retrying", "message": "Task will be retried with your feedback"}

    async def _send(self, endpoint: Endpoint, kickoff_id: str, task_id: str,
                    answer: dict[str, Any]) -> None:
        """Hand an accepted answer to the runner; a failure is retried by the driver."""
        body = {"task_id": task_id, "human_feedback": answer.get("human_feedback") or "",
                "is_approve": bool(answer.get("is_approve")), "round": answer.get("round")}
        try:
            reply = await self.client.call(endpoint.peer, "POST", f"/runs/{kickoff_id}/resume",
                                           body, timeout=10.0)
        except ChannelError as exc:
            logger.warning("human_input_unsent", kickoff_id=kickoff_id, error=str(exc))
            return
        if reply.status != 200:
            logger.info("human_input_refused", kickoff_id=kickoff_id, status=reply.status,
                        message=reply.body.get("message"))
