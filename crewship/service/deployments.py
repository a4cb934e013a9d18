"""The Plus API's view of deploys: each one's progress lines, and the status words
the crewai CLI shows (``Deploy Enqueued``, ``Building Images for Crew``, ``Online``,
``Failed``), mapped from the release records and the last deploy's outcome.

A ``DeployLog`` is the reporter a background deploy writes to: it keeps every line
with its time and level, and appends it to ``logs/NAME/deployment.jsonl`` (truncated
when a new deploy starts), so ``logs/deployment`` answers after a daemon restart too.
It never sees a config value (reporters never do).

``label`` is pure: it decides the status from the newest release, the app's runtime
state and the latest tracked deploy.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crewship.store.releases import Release
from runtime.logs import timestamp

ENQUEUED = "Deploy Enqueued"
BUILDING = "Building Images for Crew"
ONLINE = "Online"
FAILED = "Failed"
NOT_DEPLOYED = "Not Deployed"
STOPPED = "Stopped"
LOG_FILE = "deployment.jsonl"
FAILED_PREFIX = "Deploy failed: "
MAX_LINES = 2000


def split_fix(error: str) -> tuple[str, str | None]:
    """``"code: message (fix: do this)"`` (a ValidationError) -> (message part, fix)."""
    head, sep, fix = error.partition(" (fix: ")
    if not sep:
        return error, None
    return head, fix[:-1] if fix.endswith(")") else fix


class DeployLog:
    """A reporter that remembers lines as ``{timestamp, level, message}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[dict[str, str]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)

    def _emit(self, level: str, text: str) -> None:
        for part in text.splitlines() or [""]:
            line = {"timestamp": timestamp(), "level": level, "message": part}
            if len(self.lines) < MAX_LINES:
                self.lines.append(line)
            with self.path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")

    def step(self, text: str) -> None:
        self._emit("INFO", text)

    def info(self, text: str) -> None:
        self._emit("INFO", f"  {text}")

    def warn(self, text: str) -> None:
        self._emit("ERROR" if text.startswith(FAILED_PREFIX) else "WARNING", text)

    def done(self, text: str) -> None:
        self._emit("INFO", text)

    def failure(self) -> str | None:
        """The reason the deploy failed, as the deployer reported it."""
        for line in reversed(self.lines):
            if line["message"].startswith(FAILED_PREFIX):
                return line["message"][len(FAILED_PREFIX):]
        return None


def read_log(path: Path) -> list[dict[str, str]] | None:
    """The stored lines of an app's last Plus API deploy (None when there was none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    found = []
    for raw in text.splitlines()[-MAX_LINES:]:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            found.append({k: str(line.get(k, "")) for k in ("timestamp", "level", "message")})
    return found


def system_lines(lines: list[str]) -> list[dict[str, str]]:
    """``<ts> [system] text`` lines of an app log, in the client's shape."""
    found = []
    for line in lines:
        stamp, _, rest = line.partition(" ")
        if rest.startswith("[system] "):
            found.append({"timestamp": stamp, "level": "INFO",
                          "message": rest.removeprefix("[system] ")})
    return found


@dataclass
class Tracked:
    """One deploy started through the Plus API."""

    app: str
    before: int                  # the newest release version when it was enqueued
    started: float = field(default_factory=time.time)
    running: bool = True
    error: str | None = None
    after: int | None = None     # the newest release version when it ended


def label(newest: Release | None, live: bool, runtime_state: str, scale: int,
          tracked: Tracked | None) -> dict[str, Any]:
    """``{status, error_message, error_suggested_fix}`` for the client."""
    version = newest.version if newest else 0
    if tracked is not None and tracked.running:
        building = newest is not None and version > tracked.before and newest.status == "building"
        return _words(BUILDING if building else ENQUEUED)
    if tracked is not None and tracked.error and tracked.after == version:
        return _failed(tracked.error)
    if newest is None:
        return _words(NOT_DEPLOYED)
    if newest.status == "building":
        return _words(BUILDING)
    if newest.status == "failed":
        return _failed(newest.error or "the deploy failed")
    if not live:
        return _words(NOT_DEPLOYED)
    if runtime_state == "crashed":
        return {**_words(FAILED), "error_message": "the crew keeps crashing",
                "error_suggested_fix": "see 'crewai deploy logs' and the app's logs "
                                       "('ssh ... logs NAME'), fix the crew and push again"}
    if scale == 0:
        return _words(STOPPED)
    return _words(ONLINE)


def _words(status: str) -> dict[str, Any]:
    return {"status": status, "error_message": None, "error_suggested_fix": None}


def _failed(error: str) -> dict[str, Any]:
    message, fix = split_fix(error)
    return {"status": FAILED, "error_message": message,
            "error_suggested_fix": fix or "see 'crewai deploy logs' for the build output"}
