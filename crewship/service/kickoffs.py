"""Kickoffs: recorded in SQLite before the crew starts, run on a live instance.

A kickoff is ``PENDING`` when recorded, ``RUNNING`` once an instance took it, then
``SUCCESS``, ``FAILURE`` or ``REVOKED``. An instance that dies mid-run has its
kickoffs marked ``FAILURE`` with the reason; none is ever left ``RUNNING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import uuid
from typing import Any

import httpx

from crewship import log
from crewship.errors import (
    InvalidInputError,
    MissingInputsError,
    NotFoundError,
    UnavailableError,
    UnprocessableInputError,
)
from crewship.events import EventSink, KickoffFinished, WebhookDue, ignore
from crewship.model import App
from crewship.store.state import Database, now
from runtime.events import Endpoint
from runtime.runner import RESTORE_KEY
from runtime.supervisor import Supervisor

logger = log.get("crewship.service.kickoffs")

TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
STATUS_WORD = {"PENDING": "running", "RUNNING": "running", "SUCCESS": "completed",
               "FAILURE": "error", "REVOKED": "stopped"}
MAX_INPUTS_BYTES = 1024 * 1024


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


class KickoffService:
    def __init__(self, db: Database, supervisor: Supervisor,
                 client: httpx.AsyncClient | None = None) -> None:
        self.db = db
        self.supervisor = supervisor
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        self._busy: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inputs_cache: dict[tuple[str, int | None], dict[str, Any]] = {}
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
        return [self._shape(r) for r in rows]

    async def status(self, app: App, kickoff_id: str) -> dict[str, Any]:
        row = self._row(app, kickoff_id)
        body = self._shape(row)
        if row["state"] == "RUNNING" and row["instance"]:
            body.update(await self._progress(app, row["instance"], kickoff_id))
        return body

    def _shape(self, row: sqlite3.Row) -> dict[str, Any]:
        state = row["state"]
        return {
            "kickoff_id": row["id"], "state": state, "status": STATUS_WORD[state],
            "result": row["result"], "result_json": _loads(row["result_json"]),
            "tasks": _loads(row["tasks_json"]) or [], "token_usage": _loads(row["token_usage_json"]),
            "error": row["error"], "execution_time": row["execution_time"],
            "current_task": None, "progress": None, "last_step": None,
            "release": row["release"], "instance": row["instance"],
            "inputs": _loads(row["inputs_json"]), "meta": _loads(row["meta_json"]),
            "created_at": row["created_at"], "started_at": row["started_at"],
            "finished_at": row["finished_at"],
        }

    async def _progress(self, app: App, instance: str, kickoff_id: str) -> dict[str, Any]:
        endpoint = next((e for e in self.supervisor.endpoints(app.name)
                         if e.instance_id == instance), None)
        if endpoint is None:
            return {}
        try:
            resp = await self.client.get(f"{_base(endpoint)}/runs/{kickoff_id}", timeout=2.0)
            data = resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}
        return {k: data.get(k) for k in ("current_task", "progress", "last_step")}

    # ----------------------------------------------------------------- kickoffs
    def _endpoints(self, app: App) -> list[Endpoint]:
        endpoints = self.supervisor.endpoints(app.name)
        if not endpoints and app.scale == 0:
            raise UnavailableError(
                f"{app.name} is scaled to 0 (stopped): start it with 'ps:scale {app.name} 1'")
        if not endpoints:
            raise UnavailableError(
                f"{app.name} has no running instance: push a release, or scale it up with "
                f"'ps:scale {app.name} 1'")
        return endpoints

    async def described(self, app: App) -> dict[str, Any]:
        """The live release's ``{"inputs": [required], "optional_inputs": {name: default},
        "flow": bool}``, as its runner reports them (cached per release)."""
        key = (app.name, app.live_release)
        if key not in self._inputs_cache:
            endpoint = self._endpoints(app)[0]
            try:
                resp = await self.client.get(f"{_base(endpoint)}/inputs", timeout=10.0)
                resp.raise_for_status()
                body = resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise UnavailableError(f"{app.name} did not answer: {exc}") from exc
            optional = body.get("optional_inputs")
            self._inputs_cache[key] = {
                "inputs": [str(i) for i in body.get("inputs", [])],
                "optional_inputs": optional if isinstance(optional, dict) else {},
                "flow": bool(body.get("flow"))}
        return self._inputs_cache[key]

    async def inputs(self, app: App) -> list[str]:
        """The inputs a kickoff must carry: those without a default (C.2)."""
        required: list[str] = (await self.described(app))["inputs"]
        return required

    async def kickoff(self, app: App, inputs: Any, meta: Any = None,
                      webhooks: dict[str, str] | None = None,
                      restore_from: Any = None) -> str:
        """Record and start a run; ``webhooks``: {"task"|"step"|"crew": url} (C.3);
        ``restore_from``: a ``@persist`` flow's state id (a past kickoff id) to fork from."""
        encoded = _checked_inputs(inputs)
        self._endpoints(app)  # nothing running: 503 now, not a kickoff that fails later
        described = await self.described(app)
        missing = [name for name in described["inputs"] if name not in inputs]
        if missing:
            raise MissingInputsError(missing)
        if described["flow"] and "id" in inputs:
            _check_uuid(inputs["id"], "inputs.id")
        if restore_from is not None:
            _check_uuid(restore_from, "restoreFromStateId")
        kickoff_id = str(uuid.uuid4())
        self.db.execute("INSERT INTO kickoffs (id, app_id, release, state, inputs_json, meta_json,"
                        " webhooks_json, created_at) VALUES (?, ?, ?, 'PENDING', ?, ?, ?, ?)",
                        kickoff_id, app.id, app.live_release, encoded,
                        json.dumps(meta) if meta else None, _dump(webhooks or None), now())
        run = {"kickoff_id": kickoff_id, "inputs": inputs}
        if restore_from is not None and described["flow"]:  # the runner forks the state (C.3)
            run["inputs"] = {**inputs, RESTORE_KEY: str(restore_from)}
        relayed = {k: v for k, v in (webhooks or {}).items() if k in ("task", "step")}
        if relayed:  # the runner records them; this service relays them to telemetry (C.7)
            run["webhooks"] = {k: True for k in relayed}
            run["meta"] = meta
        task = asyncio.create_task(self._run(app, kickoff_id, run, relayed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("kickoff_received", app=app.name, kickoff_id=kickoff_id)
        return kickoff_id

    def _least_busy(self, app: App) -> Endpoint:
        endpoints = self._endpoints(app)
        return min(endpoints, key=lambda e: self._busy.get(e.instance_id, 0))

    async def _run(self, app: App, kickoff_id: str, run: dict[str, Any],
                   webhooks: dict[str, str]) -> None:
        try:
            endpoint = self._least_busy(app)
        except UnavailableError as exc:
            self._finish(kickoff_id, {"state": "FAILURE", "error": str(exc)})
            return
        name = endpoint.instance_id
        match = _RELEASE_IN_ID.search(name)
        release = int(match.group(1)) if match else app.live_release
        self.db.execute("UPDATE kickoffs SET state = 'RUNNING', instance = ?, release = ?, "
                        "started_at = ? WHERE id = ? AND state = 'PENDING'",
                        name, release, now(), kickoff_id)
        self._busy[name] = self._busy.get(name, 0) + 1
        relay = WebhookRelay(app.name, kickoff_id, webhooks, self.on_event)
        polling = asyncio.create_task(self._poll_webhooks(endpoint, relay)) if webhooks else None
        try:
            resp = await self.client.post(f"{_base(endpoint)}/runs", json=run)
            result = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            result = {"state": "FAILURE",
                      "error": f"instance {name} stopped during the run ({type(exc).__name__})"}
        finally:
            self._busy[name] -= 1
            if polling is not None:
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)
        relay.take(result.get("webhook_events"), start=0)
        self._finish(kickoff_id, result)
        logger.info("kickoff_finished", app=app.name, kickoff_id=kickoff_id,
                    state=result.get("state"), duration_s=result.get("execution_time"))

    async def _poll_webhooks(self, endpoint: Endpoint, relay: WebhookRelay) -> None:
        """While the run goes on: fetch the task/step webhooks it recorded since the last look."""
        url = f"{_base(endpoint)}/runs/{relay.kickoff_id}"
        while True:
            await asyncio.sleep(WEBHOOK_POLL_INTERVAL)
            try:
                resp = await self.client.get(url, params={"after": relay.seen}, timeout=5.0)
                events = resp.json().get("webhook_events") if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
            relay.take(events, start=relay.seen)

    def _finish(self, kickoff_id: str, result: dict[str, Any]) -> None:
        row = self.db.one("SELECT kickoffs.*, apps.name AS app_name FROM kickoffs JOIN apps "
                          "ON apps.id = app_id WHERE kickoffs.id = ?", kickoff_id)
        if row is None or row["state"] not in ("PENDING", "RUNNING"):
            return
        state = result.get("state") if result.get("state") in TERMINAL else "FAILURE"
        error = result.get("error") or (None if state == "SUCCESS" else "the crew gave no result")
        self.db.execute(
            "UPDATE kickoffs SET state = ?, result = ?, result_json = ?, tasks_json = ?, "
            "token_usage_json = ?, error = ?, execution_time = ?, finished_at = ? "
            "WHERE id = ? AND state IN ('PENDING', 'RUNNING')",
            state, _text(result.get("result")), _dump(result.get("result_json")),
            _dump(result.get("tasks")), _dump(result.get("token_usage")),
            error if state != "SUCCESS" else None, result.get("execution_time"), now(),
            kickoff_id)
        self.on_event(_finished(row, str(state), error if state != "SUCCESS" else None, result))

    async def stop(self, app: App, kickoff_id: str) -> dict[str, Any]:
        row = self._row(app, kickoff_id)
        if row["state"] in TERMINAL:
            raise InvalidInputError(f"Cannot stop execution. Current state: {row['state']}")
        endpoint = next((e for e in self.supervisor.endpoints(app.name)
                         if e.instance_id == row["instance"]), None)
        if endpoint is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.post(f"{_base(endpoint)}/runs/{kickoff_id}/stop", timeout=5.0)
        self._finish(kickoff_id, {"state": "REVOKED", "error": "stopped by request"})
        return {"status": "stopped", "kickoffId": kickoff_id}

    # ---------------------------------------------------------------- failures
    def instance_exited(self, app: str, instance: str, status: int) -> int:
        """Mark the kickoffs a dead instance was running as failed."""
        reason = (f"instance {instance} exited with status {status} during the run"
                  if status >= 0 else f"instance {instance} was killed by signal {-status} "
                  "during the run")
        rows = self.db.all("SELECT kickoffs.id FROM kickoffs JOIN apps ON apps.id = app_id "
                           "WHERE apps.name = ? AND instance = ? AND state = 'RUNNING'",
                           app, instance)
        for row in rows:
            self._finish(row["id"], {"state": "FAILURE", "error": reason})
        return len(rows)

    def fail_orphans(self) -> int:
        """At start: runs a previous daemon left unfinished can no longer be followed."""
        rows = self.db.all("SELECT id FROM kickoffs WHERE state IN ('PENDING', 'RUNNING')")
        for row in rows:
            self._finish(row["id"], {"state": "FAILURE",
                                     "error": "the server restarted during the run"})
        return len(rows)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.client.aclose()


_RELEASE_IN_ID = re.compile(r"-v(\d+)\.\d+-")
WEBHOOK_POLL_INTERVAL = 1.0


class WebhookRelay:
    """Turns the webhook bodies a runner recorded into ``WebhookDue`` events, each once.

    The runner numbers them from 0; ``seen`` counts those already relayed, so the polls
    (``start=seen``) and the final reply (``start=0``: all of them) never repeat one.
    The URLs stay here: the runner (the crew's own process) never sees them.
    """

    def __init__(self, app: str, kickoff_id: str, urls: dict[str, str], sink: EventSink) -> None:
        self.app, self.kickoff_id, self.urls, self.sink = app, kickoff_id, urls, sink
        self.seen = 0

    def take(self, events: Any, *, start: int) -> None:
        if not self.urls or not isinstance(events, list):
            return
        for event in events[max(0, self.seen - start):]:
            self.seen += 1
            kind = event.get("kind") if isinstance(event, dict) else None
            body = event.get("body") if isinstance(event, dict) else None
            if isinstance(kind, str) and kind in self.urls and isinstance(body, dict):
                self.sink(WebhookDue(self.app, self.kickoff_id, kind, self.urls[kind], body))


def _base(endpoint: Endpoint) -> str:
    return f"http://{endpoint.host}:{endpoint.port}"


def _checked_inputs(inputs: Any) -> str:
    """``inputs`` as JSON, refused when it is not an object, too large or carries a key of ours."""
    if not isinstance(inputs, dict):
        raise InvalidInputError("'inputs' must be a JSON object of input names to values")
    if RESTORE_KEY in inputs:
        raise InvalidInputError(f"'inputs' may not carry {RESTORE_KEY}: send restoreFromStateId")
    encoded = json.dumps(inputs)
    if len(encoded) > MAX_INPUTS_BYTES:
        raise InvalidInputError("inputs too large (more than 1 MiB)")
    return encoded


def _check_uuid(value: Any, field: str) -> None:
    """A flow state id must be a UUID (C.3: the documented 422 message)."""
    valid = isinstance(value, str)
    if valid:
        try:
            uuid.UUID(value)
        except ValueError:
            valid = False
    if not valid:
        raise UnprocessableInputError(f"'{field}' must be a valid UUID when provided; got {value!r}.")


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _finished(row: sqlite3.Row, state: str, error: str | None,
              result: dict[str, Any]) -> KickoffFinished:
    usage = result.get("token_usage")
    return KickoffFinished(
        app=row["app_name"], kickoff_id=row["id"], release=row["release"], state=state,
        execution_time=result.get("execution_time"), error=error,
        result=_text(result.get("result")), result_json=result.get("result_json"),
        token_usage=usage if isinstance(usage, dict) else None, meta=_loads(row["meta_json"]),
        webhooks=_loads(row["webhooks_json"]) or {})


