"""Kickoffs: recorded in SQLite, queued, dispatched to healthy instances, never lost.

A kickoff is ``PENDING`` when recorded (``POST /kickoff`` answers at once whenever the
app has a live release, even while no instance is healthy: a crash restart, a deploy
swap, a scale-up), ``RUNNING`` once the dispatcher (``crewship/service/dispatch.py``)
gave it to an instance, then ``SUCCESS``, ``FAILURE`` or ``REVOKED``. Bounds: a queue
of ``kickoff_queue`` PENDING kickoffs per app (then 429 with ``Retry-After``), a run
deadline (FAILURE "timed out after N s", the run stopped). Only an instance that really
died fails its kickoffs, with that reason; a crashed app (crash loop) refuses new
kickoffs and fails its queued ones with the reason. A restarted daemon picks the
kickoffs of adopted instances up again (``resume``). A running kickoff whose crew asks a
human is ``PENDING_HUMAN_INPUT`` until ``POST /resume`` answers (``crewship/service/human.py``).
A kickoff's row (what ``POST /kickoff`` may carry, how a row reads back) is
``crewship/service/kickoffrows.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import uuid
from typing import Any

from crewship import log
from crewship.errors import (
    InvalidInputError,
    MissingInputsError,
    NotFoundError,
    QueueFullError,
    UnavailableError,
)
from crewship.events import EventSink, WebhookDue, ignore
from crewship.model import App
from crewship.service.dispatch import TERMINAL, Dispatcher, KickoffLimits
from crewship.service.human import WAITING, HumanLoop
from crewship.service.kickoffrows import (
    check_uuid,
    checked_inputs,
    dump,
    finished_event,
    loads,
    shape,
    text_of,
)
from crewship.service.runhooks import hook_urls, run_body
from crewship.service.streaming import EventStreamer, StreamSpec
from crewship.service.traces import clean_spans
from crewship.store.state import Database, now
from runtime.backend import STATUS_UNKNOWN
from runtime.channel import ChannelError, RunnerClient
from runtime.events import Endpoint, Orchestrator
from runtime.runner.flows import RESTORE_KEY

logger = log.get("crewship.service.kickoffs")

LIVE = ("RUNNING", WAITING)  # on an instance
RETRY_AFTER = 5  # seconds a client is told to wait when the queue is full


class KickoffService:
    def __init__(self, db: Database, supervisor: Orchestrator,
                 limits: KickoffLimits | None = None,
                 client: RunnerClient | None = None,
                 streamer: EventStreamer | None = None) -> None:
        self.db = db
        self.streamer = streamer  # streamed events (``webhooks``); None: not delivered
        self.supervisor = supervisor
        self.limits = limits or KickoffLimits()
        self.client = client or RunnerClient()
        self.dispatcher = Dispatcher(db, supervisor, self.client, self.limits, self._finish,
                                     self._relay, self._human_waiting)
        self.human = HumanLoop(db, supervisor, self.client, lambda event: self.on_event(event),
                               self.dispatcher.rehook)
        self._inputs_cache: dict[tuple[str, int | None], dict[str, Any]] = {}
        self._streams: dict[str, tuple[StreamSpec | None, Any]] = {}  # kickoff id -> spec, meta
        self.on_event: EventSink = ignore   # the daemon wires telemetry here

    # ------------------------------------------------------------------ queries
    def _row(self, app: App, kickoff_id: str) -> sqlite3.Row:
        row = self.db.one("SELECT * FROM kickoffs WHERE id = ? AND app_id = ?", kickoff_id, app.id)
        if row is None:
            raise NotFoundError(f"No execution found with ID: {kickoff_id}")
        return row

    def history(self, app: App, limit: int = 20, state: str | None = None) -> list[dict[str, Any]]:
        if state:
            rows = self.db.all("SELECT * FROM kickoffs WHERE app_id = ? AND state = ? "
                               "ORDER BY created_at DESC LIMIT ?", app.id, state, limit)
        else:
            rows = self.db.all("SELECT * FROM kickoffs WHERE app_id = ? "
                               "ORDER BY created_at DESC LIMIT ?", app.id, limit)
        return [shape(r) for r in rows]

    async def status(self, app: App, kickoff_id: str) -> dict[str, Any]:
        row = self._row(app, kickoff_id)
        body = shape(row)
        if row["state"] in LIVE and row["instance"]:
            body.update(await self._progress(app, row["instance"], kickoff_id))
        return body

    async def _progress(self, app: App, instance: str, kickoff_id: str) -> dict[str, Any]:
        endpoint = self.supervisor.endpoint(app.name, instance)
        if endpoint is None:
            return {}
        try:
            reply = await self.client.call(endpoint.peer, "GET", f"/runs/{kickoff_id}",
                                           timeout=2.0)
        except ChannelError:
            return {}
        data = reply.body if reply.status == 200 else {}
        return {k: data.get(k) for k in ("current_task", "progress", "last_step")}

    # ----------------------------------------------------------------- kickoffs
    def refusal(self, app: App) -> str | None:
        """Why ``app`` takes no kickoffs now (503), or None: it queues them."""
        if app.live_release is None:
            return (f"{app.name} has no live release: push one "
                    f"(git push crewship main), then kick it off")
        crashed = self.supervisor.crash_reason(app.name)
        if crashed:
            return crashed
        if app.scale == 0 and self.supervisor.status(app.name).state != "deploying":
            return f"{app.name} is scaled to 0 (stopped): start it with 'ps:scale {app.name} 1'"
        return None

    def queue_length(self, app: App) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM kickoffs WHERE app_id = ? "
                          "AND state = 'PENDING'", app.id)
        return int(row["n"]) if row else 0

    def running(self, app: App) -> int:
        return self.dispatcher.running(app.name)

    async def described(self, app: App) -> dict[str, Any]:
        """The live release's ``{"inputs": [required], "optional_inputs": {name: default},
        "flow": bool}``, as its runner reports them (cached per release); 503 while no
        instance can say."""
        known = await self._known(app)
        if known is None:
            problem = self.refusal(app) or (f"{app.name} has no healthy instance right now "
                                            "(starting or restarting): try again in a moment")
            raise UnavailableError(problem)
        return known

    async def inputs(self, app: App) -> list[str]:
        """The inputs a kickoff must carry: those without a default (C.2)."""
        required: list[str] = (await self.described(app))["inputs"]
        return required

    async def _known(self, app: App) -> dict[str, Any] | None:
        """What the crew takes (cached per release), or None while no instance can say."""
        key = (app.name, app.live_release)
        if key not in self._inputs_cache:
            endpoints = [e for e in self.supervisor.endpoints(app.name) if e.secret]
            if not endpoints:
                return None
            try:
                reply = await self.client.call(endpoints[0].peer, "GET", "/inputs", timeout=10.0)
            except ChannelError:
                return None
            if reply.status != 200:
                return None
            optional = reply.body.get("optional_inputs")
            self._inputs_cache[key] = {
                "inputs": [str(i) for i in reply.body.get("inputs", [])],
                "optional_inputs": optional if isinstance(optional, dict) else {},
                "flow": bool(reply.body.get("flow"))}
        return self._inputs_cache[key]

    async def kickoff(self, app: App, inputs: Any, meta: Any = None,
                      webhooks: dict[str, str] | None = None, restore_from: Any = None,
                      human_webhook: dict[str, Any] | None = None,
                      stream: StreamSpec | None = None) -> str:
        """Record a kickoff (PENDING) and queue it; ``webhooks``: {"task"|"step"|"crew": url}
        (C.3); ``restore_from``: a ``@persist`` flow's state id (a past kickoff id) to fork from;
        ``human_webhook``: the checked ``humanInputWebhook`` (stored sealed: it may hold a token);
        ``stream``: the crewAI events to stream (``webhooks``), credentials sealed."""
        encoded = checked_inputs(inputs)
        problem = self.refusal(app)
        if problem:
            raise UnavailableError(problem)
        known = await self._known(app)
        missing = [name for name in (known or {}).get("inputs", []) if name not in inputs]
        if missing:
            raise MissingInputsError(missing)
        if known is not None and known["flow"] and "id" in inputs:
            check_uuid(inputs["id"], "inputs.id")
        if restore_from is not None:
            check_uuid(restore_from, "restoreFromStateId")
            encoded = json.dumps({**inputs, RESTORE_KEY: str(restore_from)})  # the runner forks
        if self.queue_length(app) >= self.limits.queue:
            raise QueueFullError(
                f"{app.name} has {self.limits.queue} kickoffs waiting (the queue is full): "
                f"retry after {RETRY_AFTER} s", retry_after=RETRY_AFTER)
        kickoff_id = str(uuid.uuid4())
        hooks: dict[str, Any] = dict(webhooks or {})
        if stream is not None:
            hooks["events"] = stream.stored(self.db.sealer)
        sealed = self.db.sealer.seal(json.dumps(human_webhook)) if human_webhook else None
        self.db.execute("INSERT INTO kickoffs (id, app_id, release, state, inputs_json, meta_json,"
                        " webhooks_json, human_webhook, created_at)"
                        " VALUES (?, ?, ?, 'PENDING', ?, ?, ?, ?, ?)",
                        kickoff_id, app.id, app.live_release, encoded,
                        json.dumps(meta) if meta else None, dump(hooks or None), sealed, now())
        self.dispatcher.wake(app.name)
        logger.info("kickoff_received", app=app.name, kickoff_id=kickoff_id)
        return kickoff_id

    async def _human_waiting(self, app: str, kickoff_id: str, endpoint: Endpoint,
                             request: Any) -> None:
        await self.human.waiting(app, kickoff_id, endpoint, request)

    async def resume_run(self, app: App, body: dict[str, Any],
                         webhooks: dict[str, str]) -> dict[str, Any]:
        """``POST /resume`` (C.5): a waiting kickoff gets the human's answer."""
        return await self.human.resume(app.id, app.name, body, webhooks)

    def waiting(self, app: App) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM kickoffs WHERE app_id = ? AND state = ?",
                          app.id, WAITING)
        return int(row["n"]) if row else 0

    def _relay(self, due: WebhookDue) -> None:
        """A task/step webhook the runner recorded: telemetry delivers it (checked, pinned);
        a streamed event: the streamer, in order, with the kickoff's credentials."""
        if due.kind != "event":
            self.on_event(due)
            return
        known = self._streams.get(due.kickoff_id)
        if known is None:
            row = self.db.one("SELECT state, webhooks_json, meta_json FROM kickoffs "
                              "WHERE id = ?", due.kickoff_id)
            hooks = loads(row["webhooks_json"]) if row else None
            spec = StreamSpec.load(hooks.get("events"), self.db.sealer) \
                if isinstance(hooks, dict) else None
            known = (spec, loads(row["meta_json"]) if row else None)
            if row is not None and row["state"] not in TERMINAL:  # settled: _finish forgets
                self._streams[due.kickoff_id] = known
        spec, meta = known
        if spec is not None and self.streamer is not None:
            self.streamer.push(due.kickoff_id, spec, meta, due.body)

    def trace(self, app: App, kickoff_id: str) -> dict[str, Any]:
        """A kickoff's stored execution trace (``spans``: ``crewship/service/traces.py``);
        the runner hands it over with the result: a kickoff still running has none yet."""
        row = self._row(app, kickoff_id)
        found = self.db.one("SELECT spans_json FROM kickoff_traces WHERE kickoff_id = ?",
                            kickoff_id)
        spans = json.loads(found["spans_json"]) if found else []
        return {"kickoff_id": kickoff_id, "state": row["state"], "spans": spans,
                "instance": row["instance"]}

    async def live_trace(self, app: App, kickoff_id: str) -> dict[str, Any]:
        """The trace, and for a RUNNING kickoff the spans so far (asked of its runner)."""
        body = self.trace(app, kickoff_id)
        endpoint = self.supervisor.endpoint(app.name, body.pop("instance") or "")
        if body["state"] not in ("RUNNING", WAITING) or endpoint is None:
            return body
        try:
            reply = await self.client.call(endpoint.peer, "GET", f"/runs/{kickoff_id}?trace=1",
                                           timeout=5.0)
        except ChannelError:
            return body
        if reply.status == 200 and isinstance(reply.body.get("trace"), list):
            body["spans"] = clean_spans(reply.body["trace"])
        return body

    def _finish(self, kickoff_id: str, result: dict[str, Any]) -> bool:
        """Settle a kickoff once: True if this call did (then its event fires, once)."""
        state = result.get("state") if result.get("state") in TERMINAL else "FAILURE"
        error = result.get("error") or (None if state == "SUCCESS" else "the crew gave no result")
        spans = clean_spans(result.get("trace"))
        with self.db.tx() as conn:
            row = conn.execute("SELECT kickoffs.*, apps.name AS app_name FROM kickoffs JOIN apps"
                               " ON apps.id = app_id WHERE kickoffs.id = ?",
                               (kickoff_id,)).fetchone()
            if row is None or row["state"] in TERMINAL:
                return False
            conn.execute(
                "UPDATE kickoffs SET state = ?, result = ?, result_json = ?, tasks_json = ?, "
                "token_usage_json = ?, error = ?, execution_time = ?, finished_at = ? "
                "WHERE id = ?",
                (state, text_of(result.get("result")), dump(result.get("result_json")),
                 dump(result.get("tasks")), dump(result.get("token_usage")),
                 error if state != "SUCCESS" else None, result.get("execution_time"), now(),
                 kickoff_id))
            if isinstance(result.get("trace"), list):
                conn.execute("INSERT OR REPLACE INTO kickoff_traces (kickoff_id, spans_json) "
                             "VALUES (?, ?)", (kickoff_id, json.dumps(spans)))
        self._streams.pop(kickoff_id, None)
        if self.streamer is not None:
            self.streamer.close(kickoff_id)  # what the run streamed goes out, then the stream ends
        logger.info("kickoff_finished", app=row["app_name"], kickoff_id=kickoff_id,
                    state=state, duration_s=result.get("execution_time"))
        self.on_event(finished_event(row, str(state), error if state != "SUCCESS" else None,
                                     result, spans))
        return True

    async def stop(self, app: App, kickoff_id: str) -> dict[str, Any]:
        row = self._row(app, kickoff_id)
        if row["state"] in TERMINAL:
            raise InvalidInputError(f"Cannot stop execution. Current state: {row['state']}")
        if not self._finish(kickoff_id, {"state": "REVOKED", "error": "stopped by request"}):
            state = self._row(app, kickoff_id)["state"]
            raise InvalidInputError(f"Cannot stop execution. Current state: {state}")
        endpoint = self.supervisor.endpoint(app.name, row["instance"] or "")
        if endpoint is not None:  # RUNNING: the runner stops it; the dispatcher acknowledges
            try:
                await self.client.call(endpoint.peer, "POST", f"/runs/{kickoff_id}/stop",
                                       timeout=5.0)
            except ChannelError as exc:
                logger.warning("kickoff_stop_unsent", app=app.name, kickoff_id=kickoff_id,
                               error=str(exc))
        return {"status": "stopped", "kickoffId": kickoff_id}

    # ---------------------------------------------------------------- failures
    def instance_exited(self, app: str, instance: str, status: int) -> int:
        """A dead instance's kickoffs fail with the reason; the ones a driver follows are
        settled by it (a kickoff that never reached the instance goes back to the queue)."""
        if status == STATUS_UNKNOWN:
            gone = f"instance {instance} exited"
        elif status >= 0:
            gone = f"instance {instance} exited with status {status}"
        else:
            gone = f"instance {instance} was killed by signal {-status}"
        self.dispatcher.instance_gone(instance, gone)
        rows = self.db.all("SELECT kickoffs.id, state FROM kickoffs JOIN apps ON apps.id = app_id"
                           " WHERE apps.name = ? AND instance = ? AND state IN (?, ?)",
                           app, instance, *LIVE)
        return sum(self._finish(row["id"], {"state": "FAILURE", "error": f"{gone} {_when(row)}"})
                   for row in rows if not self.dispatcher.following(row["id"]))

    def app_crashed(self, app: str) -> int:
        """A crash loop: the app's queued kickoffs fail with the reason."""
        reason = self.supervisor.crash_reason(app) or f"{app} crashed"
        rows = self.db.all("SELECT kickoffs.id FROM kickoffs JOIN apps ON apps.id = app_id "
                           "WHERE apps.name = ? AND state = 'PENDING'", app)
        return sum(self._finish(row["id"], {"state": "FAILURE", "error": reason})
                   for row in rows)

    def resume(self) -> dict[str, int]:
        """At start, after adoption: follow the runs of adopted instances again, fail the
        ones whose instance is gone, and dispatch what is still queued."""
        followed = failed = 0
        loop = asyncio.get_running_loop()
        rows = self.db.all("SELECT kickoffs.*, apps.name AS app_name FROM kickoffs JOIN apps "
                           "ON apps.id = app_id WHERE state IN (?, ?)", *LIVE)
        for row in rows:
            endpoint = self.supervisor.endpoint(row["app_name"], row["instance"] or "")
            if endpoint is None or not endpoint.secret:
                failed += self._finish(row["id"], {"state": "FAILURE", "error": (
                    f"instance {row['instance']} stopped while the server was down"
                    f"{' (the kickoff waited for human input)' if row['state'] == WAITING else ''}")})
                continue
            deadline = loop.time() + self.limits.timeout - (
                0.0 if row["state"] == WAITING else _age(row["started_at"]))  # human time is free
            self.dispatcher.follow(row["app_name"], row["id"], endpoint, run_body(row), deadline,
                                   hook_urls(row))
            followed += 1
        for row in self.db.all("SELECT DISTINCT apps.name FROM kickoffs JOIN apps "
                               "ON apps.id = app_id WHERE state = 'PENDING'"):
            self.dispatcher.wake(row["name"])
        logger.info("kickoffs_resumed", followed=followed, failed=failed)
        return {"followed": followed, "failed": failed}

    async def aclose(self) -> None:
        await self.dispatcher.aclose()
        await self.client.aclose()
        if self.streamer is not None:
            await self.streamer.aclose()


def _when(row: sqlite3.Row) -> str:
    if row["state"] == WAITING:
        return "while the kickoff waited for human input: kick it off again"
    return "during the run"


def _age(started_at: str | None) -> float:
    """Seconds since a ``state.now()`` stamp (0 if unknown)."""
    if not started_at:
        return 0.0
    try:
        moment = dt.datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (dt.datetime.now(dt.UTC) - moment).total_seconds())
