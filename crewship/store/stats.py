"""Exact figures over a whole window of history, computed by SQLite.

The dashboard's numbers (kickoffs in the last 24 h, failures, p50/p95 duration, per hour)
and its deploy chart are aggregates over every row in the window, never over a capped
list: with 10,000 kickoffs in a day the count says 10000 and the percentiles rank all of
them. Percentiles interpolate linearly between ranks (as numpy's default does), ranked by
window functions; only the kickoffs that finished (SUCCESS, FAILURE, REVOKED) have a
duration: the crew's own ``execution_time``, else ``finished_at - started_at``.
Timestamps are ``state.now()`` strings, which sort as they compare, so the
``kickoffs_app (app_id, created_at)`` index bounds every scan.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from crewship.store.state import Database

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")
_FINISHED_SQL = "('SUCCESS', 'FAILURE', 'REVOKED')"
_DURATION = ("COALESCE(execution_time, "
             "(julianday(finished_at) - julianday(started_at)) * 86400.0)")
# The bucket of a row: whole ``?`` seconds since the window's start, capped at the last.
_BUCKET = "MIN(CAST((unixepoch(created_at) - ?) / ? AS INTEGER), ?)"


def _quantile_sql(q: float) -> str:
    """Linear interpolation between the ranks around ``(n - 1) * q`` of an ordered group
    whose rows carry ``i`` (0-based rank), ``n`` (group size) and ``dur``."""
    rank = f"((n - 1) * {q!r})"
    low = f"CAST({rank} AS INTEGER)"
    at_low = f"MAX(CASE WHEN i = {low} THEN dur END)"
    at_high = f"MAX(CASE WHEN i = MIN({low} + 1, n - 1) THEN dur END)"
    return f"{at_low} + ({at_high} - {at_low}) * ({rank} - {low})"


def _near(q: float, i: str = "i", n: str = "n") -> str:
    """The row is one of the two ranks a ``q`` quantile interpolates between."""
    low = f"CAST(({n} - 1) * {q!r} AS INTEGER)"
    return f"({i} = {low} OR {i} = MIN({low} + 1, {n} - 1))"


_IN_BUCKET = f"{_near(0.5)} OR {_near(0.95)}"
_IN_ALL = f"{_near(0.5, 'gi', 'gn')} OR {_near(0.95, 'gi', 'gn')}"
# Each finished duration ranked within its bucket (i of n) and within the window (gi of
# gn); only the few rows a quantile needs are kept before aggregating.
_PERCENTILES = f"""
    WITH d AS (
        SELECT {_BUCKET} AS b, {_DURATION} AS dur FROM kickoffs
        WHERE app_id = ? AND created_at >= ? AND created_at <= ? AND state IN {_FINISHED_SQL}
    ), r AS (
        SELECT b, dur, ROW_NUMBER() OVER (PARTITION BY b ORDER BY dur) - 1 AS i,
               COUNT(*) OVER (PARTITION BY b) AS n,
               ROW_NUMBER() OVER (ORDER BY dur) - 1 AS gi, COUNT(*) OVER () AS gn
        FROM d WHERE dur IS NOT NULL
    ), k AS MATERIALIZED (
        SELECT * FROM r WHERE {_IN_BUCKET} OR {_IN_ALL}
    )
    SELECT b, MAX(n) AS n, {_quantile_sql(0.5)} AS p50, {_quantile_sql(0.95)} AS p95
    FROM k WHERE {_IN_BUCKET} GROUP BY b
    UNION ALL
    SELECT -1, MAX(n), {_quantile_sql(0.5)}, {_quantile_sql(0.95)}
    FROM (SELECT gi AS i, gn AS n, dur FROM k WHERE {_IN_ALL})
"""

_COUNTS = f"""
    SELECT {_BUCKET} AS b, COUNT(*) AS n, SUM(state = 'FAILURE') AS failed FROM kickoffs
    WHERE app_id = ? AND created_at >= ? AND created_at <= ? GROUP BY b
"""

_DEPLOYS = """
    SELECT substr(created_at, 1, 10) AS day, COUNT(*) AS n, SUM(status = 'failed') AS failed
    FROM releases WHERE app_id = ? AND created_at >= ? AND created_at <= ? GROUP BY day
"""


def stamp(when: dt.datetime) -> str:
    """``when`` as the stored timestamp format (``2026-11-26T10:00:00Z``)."""
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Bucket:
    """One slice of a window: kickoffs created in it, failed, and finished durations."""

    start: dt.datetime
    count: int = 0
    failed: int = 0
    finished: int = 0
    p50: float | None = None
    p95: float | None = None


@dataclass(frozen=True)
class Window:
    """A window's totals and its buckets, oldest first."""

    since: dt.datetime
    until: dt.datetime
    total: Bucket
    buckets: list[Bucket]

    def as_dict(self) -> dict[str, Any]:
        def one(b: Bucket) -> dict[str, Any]:
            return {"start": stamp(b.start), "count": b.count, "failed": b.failed,
                    "finished": b.finished, "p50": b.p50, "p95": b.p95}
        return {"since": stamp(self.since), "until": stamp(self.until),
                "count": self.total.count, "failed": self.total.failed,
                "finished": self.total.finished, "p50": self.total.p50, "p95": self.total.p95,
                "buckets": [one(b) for b in self.buckets]}


class HistoryStats:
    """Aggregates over an app's kickoffs and releases (read-only)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def kickoffs(self, app_id: int, until: dt.datetime, span: dt.timedelta,
                 buckets: int) -> Window:
        """Counts and p50/p95 over every kickoff created in ``(until - span, until]``,
        in total and in ``buckets`` equal slices."""
        since = until - span
        width = span.total_seconds() / buckets
        bucket_args = (int(since.timestamp()), width, buckets - 1)
        window_args = (app_id, stamp(since), stamp(until))
        counts = {r["b"]: r for r in self.db.all(_COUNTS, *bucket_args, *window_args)}
        spread = {r["b"]: r for r in self.db.all(_PERCENTILES, *bucket_args, *window_args)}

        def bucket(index: int, start: dt.datetime) -> Bucket:
            c, p = counts.get(index), spread.get(index)
            return Bucket(start, int(c["n"]) if c else 0, int(c["failed"] or 0) if c else 0,
                          int(p["n"] or 0) if p else 0, p["p50"] if p else None,
                          p["p95"] if p else None)

        slices = [bucket(i, since + dt.timedelta(seconds=width * i)) for i in range(buckets)]
        whole = bucket(-1, since)
        total = Bucket(since, sum(b.count for b in slices), sum(b.failed for b in slices),
                       whole.finished, whole.p50, whole.p95)
        return Window(since, until, total, slices)

    def deploys(self, app_id: int, until: dt.datetime, days: int) -> list[dict[str, Any]]:
        """Releases made per UTC day over the last ``days`` days, oldest first (0s kept)."""
        first = (until - dt.timedelta(days=days - 1)).date()
        since = dt.datetime.combine(first, dt.time(), dt.UTC)
        rows = {r["day"]: r for r in self.db.all(_DEPLOYS, app_id, stamp(since), stamp(until))}
        out = []
        for offset in range(days):
            day = (first + dt.timedelta(days=offset)).isoformat()
            row = rows.get(day)
            out.append({"day": day, "count": int(row["n"]) if row else 0,
                        "failed": int(row["failed"] or 0) if row else 0})
        return out
