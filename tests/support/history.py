"""A seeded kickoff history in a real server's state.db, for the dashboard's figures at
scale (tests/integration/test_dashboard_pages.py, bench/dashboard.py).

Rows go straight into SQLite beside the running server (WAL lets both write): the
figures under test are computed by SQLite over whatever rows are there.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path

STATES = ["SUCCESS"] * 16 + ["FAILURE"] * 3 + ["REVOKED"]


def stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def percentile(values: list[float], q: float) -> float | None:
    """The reference: linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Seeded:
    """What was written: kickoffs in the last 24 h, and the finished ones' durations."""

    recent: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)


def seed_kickoffs(db_path: Path, app: str, count: int, *, now: dt.datetime | None = None,
                  older: int = 0, running: int = 0, seed: int = 17) -> Seeded:
    """``count`` finished kickoffs spread over the last 24 h (a few timed only by their
    start/finish stamps), ``running`` unfinished ones, and ``older`` from 1-3 days ago."""
    rng = random.Random(seed)
    moment = now or dt.datetime.now(dt.UTC)
    out = Seeded()
    rows = []
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        (app_id,) = conn.execute("SELECT id FROM apps WHERE name = ?", (app,)).fetchone()
        for index in range(count + running + older):
            if index < count + running:
                created = moment - dt.timedelta(seconds=rng.uniform(5, 86_390))
            else:
                created = moment - dt.timedelta(hours=rng.uniform(25, 72))
            state = rng.choice(STATES) if index < count or index >= count + running \
                else "RUNNING"
            seconds = round(rng.lognormvariate(2.5, 0.8), 3)
            started = created + dt.timedelta(seconds=1)
            finished = started + dt.timedelta(seconds=seconds) if state != "RUNNING" else None
            # one in ten has no execution_time: its duration is finished - started (whole s)
            timed = state != "RUNNING" and index % 10 != 0
            if index < count:
                out.recent += 1
                out.failed += state == "FAILURE"
                if finished is not None:
                    out.durations.append(seconds if timed else
                                         (stamp_s(finished) - stamp_s(started)))
            elif index < count + running:
                out.recent += 1
            rows.append((str(uuid.UUID(int=rng.getrandbits(128))), app_id, 1, state, "{}",
                         stamp(created), stamp(started),
                         stamp(finished) if finished else None, seconds if timed else None))
        with conn:
            conn.executemany(
                "INSERT INTO kickoffs (id, app_id, release, state, inputs_json, created_at, "
                "started_at, finished_at, execution_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows)
    finally:
        conn.close()
    return out


def stamp_s(when: dt.datetime) -> float:
    """Seconds of a moment as the stored (whole-second) stamp keeps it."""
    return float(int(when.timestamp()))
