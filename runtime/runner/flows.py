"""Inputs, state ids and trigger payloads (crewai-protocol.md C.2, C.3, D.2)."""

from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path
from typing import Any

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
