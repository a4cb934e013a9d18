"""A kickoff's row (the ``kickoffs`` table): what goes in, how it reads back.

- in: ``checked_inputs`` and ``check_uuid`` refuse what ``POST /kickoff`` may not carry
  (inputs that are not an object, over ``MAX_INPUTS_BYTES`` or naming crewship's restore
  key; a flow state id that is not a UUID) with the documented messages.
- out: ``shape`` is a row as ``GET /status`` and the history show it (``STATUS_WORD``:
  the documented ``status`` of each state; ``public_inputs``: the inputs as the user
  sent them); ``finished_event`` the ``KickoffFinished`` telemetry gets for a settled row.
- ``loads``/``dump``/``text_of``: the JSON columns, None for NULL.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from crewship.errors import InvalidInputError, UnprocessableInputError
from crewship.events import KickoffFinished
from crewship.service.human import WAITING, state_of
from runtime.runner.flows import RESTORE_KEY

STATUS_WORD = {"PENDING": "running", "RUNNING": "running", "SUCCESS": "completed",
               "FAILURE": "error", "REVOKED": "stopped", WAITING: "pending_human_input"}
MAX_INPUTS_BYTES = 1024 * 1024


def loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def shape(row: sqlite3.Row) -> dict[str, Any]:
    """A stored kickoff as ``GET /status`` and the history show it: CrewAI's
    ``state``/``result`` and the documented ``status``/``result``/``tasks`` at once."""
    state = row["state"]
    human = state_of(row["human_json"])
    return {
        "kickoff_id": row["id"], "state": state, "status": STATUS_WORD[state],
        "result": row["result"], "result_json": loads(row["result_json"]),
        "tasks": loads(row["tasks_json"]) or [], "token_usage": loads(row["token_usage_json"]),
        "error": row["error"], "execution_time": row["execution_time"],
        "current_task": None, "progress": None, "last_step": None,
        "release": row["release"], "instance": row["instance"],
        "inputs": public_inputs(row["inputs_json"]), "meta": loads(row["meta_json"]),
        "created_at": row["created_at"], "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "human_input": human["waiting"] if state == WAITING else None,
        "human_feedback": [r for r in human["rounds"] if "is_approve" in r],
    }


def checked_inputs(inputs: Any) -> str:
    """``inputs`` as JSON, refused when it is not an object, too large or carries a key of ours."""
    if not isinstance(inputs, dict):
        raise InvalidInputError("'inputs' must be a JSON object of input names to values")
    if RESTORE_KEY in inputs:
        raise InvalidInputError(f"'inputs' may not carry {RESTORE_KEY}: send restoreFromStateId")
    encoded = json.dumps(inputs)
    if len(encoded) > MAX_INPUTS_BYTES:
        raise InvalidInputError("inputs too large (more than 1 MiB)")
    return encoded


def check_uuid(value: Any, field: str) -> None:
    """A flow state id must be a UUID (C.3: the documented 422 message)."""
    valid = isinstance(value, str)
    if valid:
        try:
            uuid.UUID(value)
        except ValueError:
            valid = False
    if not valid:
        raise UnprocessableInputError(f"'{field}' must be a valid UUID when provided; got {value!r}.")


def public_inputs(text: str | None) -> Any:
    """Stored inputs as the user sent them (without the restore id crewship adds)."""
    inputs = loads(text)
    if isinstance(inputs, dict):
        inputs.pop(RESTORE_KEY, None)
    return inputs


def dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def text_of(value: Any) -> str | None:
    return None if value is None else str(value)


def finished_event(row: sqlite3.Row, state: str, error: str | None,
                   result: dict[str, Any], spans: list[dict[str, Any]]) -> KickoffFinished:
    """What telemetry hears of a settled kickoff (never the event stream's credentials)."""
    usage = result.get("token_usage")
    return KickoffFinished(
        app=row["app_name"], kickoff_id=row["id"], release=row["release"], state=state,
        execution_time=result.get("execution_time"), error=error,
        result=text_of(result.get("result")), result_json=result.get("result_json"),
        token_usage=usage if isinstance(usage, dict) else None, meta=loads(row["meta_json"]),
        webhooks={k: v for k, v in (loads(row["webhooks_json"]) or {}).items()
                  if k != "events"},  # the event stream is not telemetry's (credentials)
        trace=spans)
