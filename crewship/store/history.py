"""Execution history: which kickoffs to keep (pure) and pruning the rest from SQLite.

Every kickoff is a row of ``kickoffs`` (crewship/kickoffs.py). Kept per app: the newest
``max_per_app`` rows, and of those only the ones younger than ``days``. A kickoff that
has not finished (``PENDING``, ``RUNNING``, ``PENDING_HUMAN_INPUT``) is never removed,
however old. A kickoff's trace (``kickoff_traces``) goes with it (ON DELETE CASCADE).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from crewship import log
from crewship.errors import InvalidInputError, StorageFullError
from crewship.store.state import Database

logger = log.get("crewship.store.history")

STATES = ("PENDING", "RUNNING", "PENDING_HUMAN_INPUT", "SUCCESS", "FAILURE", "REVOKED")
ALIASES = {"FAILED": "FAILURE", "ERROR": "FAILURE", "COMPLETED": "SUCCESS",
           "SUCCEEDED": "SUCCESS", "STOPPED": "REVOKED", "QUEUED": "PENDING",
           "WAITING": "PENDING_HUMAN_INPUT"}
UNFINISHED = ("PENDING", "RUNNING", "PENDING_HUMAN_INPUT")
MAX_LIMIT = 1000
DELETE_CHUNK = 500


def parse_state(value: str | None) -> str | None:
    """``--state failure`` / ``?state=FAILURE``: one of STATES, or None for all."""
    if not value:
        return None
    state = ALIASES.get(value.strip().upper(), value.strip().upper())
    if state not in STATES:
        raise InvalidInputError(f"unknown state {value[:40]!r}: use one of {', '.join(STATES)}")
    return state


def parse_limit(value: str | int | None, default: int = 20) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        raise InvalidInputError(f"limit must be a number, not {str(value)[:20]!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


@dataclass(frozen=True)
class Retention:
    days: float = 30.0
    max_per_app: int = 10_000

    def cutoff(self, now: dt.datetime) -> str:
        """The ``created_at`` below which a finished kickoff is too old (state.now() format)."""
        when = now - dt.timedelta(days=self.days)
        return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def kickoffs_to_prune(rows: Sequence[tuple[str, str, str]], retention: Retention,
                      now: dt.datetime) -> list[str]:
    """Ids to delete among one app's ``(id, state, created_at)`` rows, in any order."""
    cutoff = retention.cutoff(now)
    newest_first = sorted(rows, key=lambda r: (r[2], r[0]), reverse=True)
    doomed = []
    for rank, (kickoff_id, state, created_at) in enumerate(newest_first):
        if state in UNFINISHED:
            continue
        if rank >= retention.max_per_app or created_at < cutoff:
            doomed.append(kickoff_id)
    return doomed


def prune_kickoffs(db: Database, retention: Retention,
                   now: dt.datetime | None = None) -> dict[str, int]:
    """Apply ``retention`` to every app; returns {app: kickoffs removed} (apps with some)."""
    moment = now or dt.datetime.now(dt.UTC)
    removed: dict[str, int] = {}
    for app in db.all("SELECT id, name FROM apps ORDER BY name"):
        rows = db.all("SELECT id, state, created_at FROM kickoffs WHERE app_id = ?", app["id"])
        doomed = kickoffs_to_prune([(r["id"], r["state"], r["created_at"]) for r in rows],
                                   retention, moment)
        for start in range(0, len(doomed), DELETE_CHUNK):
            chunk = doomed[start:start + DELETE_CHUNK]
            marks = ", ".join("?" * len(chunk))
            db.execute(f"DELETE FROM kickoffs WHERE id IN ({marks})", *chunk)
        if doomed:
            removed[app["name"]] = len(doomed)
    if removed:
        logger.info("kickoffs_pruned", removed=removed, days=retention.days,
                    max_per_app=retention.max_per_app)
    return removed


async def prune_forever(db: Database, retention: Retention, interval: float) -> None:
    """The daemon's housekeeping task: prune at start, then every ``interval`` seconds."""
    while True:
        try:
            await asyncio.to_thread(prune_kickoffs, db, retention)
        except (sqlite3.Error, StorageFullError) as exc:
            logger.warning("kickoffs_prune_failed", error=str(exc))
        await asyncio.sleep(interval)
