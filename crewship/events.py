"""What the platform tells its observers (metrics, alerts, webhooks): value types only.

The deployer and the kickoff service emit these through an ``EventSink``; the daemon
wires the sink to ``crewship.service.telemetry.Telemetry``. The supervisor's own events
(``runtime.events``: ``InstanceExited``, ``AppCrashed``, ...) reach the same sink.
No event ever carries a config value or a token (``HumanInputDue`` carries the
human-input receiver's own credentials for its delivery, never in its repr).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DeployFinished:
    """A release went live (``outcome="succeeded"``) or did not (``"failed"``)."""

    app: str
    release: int
    user: str
    kind: str                  # push | config | rollback | restart
    outcome: str               # succeeded | failed
    duration: float            # seconds, build included
    error: str | None = None
    cache_hit: bool | None = None   # pushes only: was the dependency env reused?


@dataclass(frozen=True)
class KickoffFinished:
    """A kickoff reached a terminal state (SUCCESS, FAILURE, REVOKED)."""

    app: str
    kickoff_id: str
    release: int | None
    state: str
    execution_time: float | None
    error: str | None = None
    result: str | None = None
    result_json: Any = None
    token_usage: dict[str, int] | None = None
    meta: Any = None
    webhooks: dict[str, str] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)   # its spans (traces.py)


@dataclass(frozen=True)
class WebhookDue:
    """A task or step webhook a running kickoff produced, to deliver to ``url`` (C.7), or
    (``kind="event"``) a streamed crewAI event, which the kickoff service hands to its
    event streamer (with the kickoff's credentials) instead of to telemetry."""

    app: str
    kickoff_id: str
    kind: str                  # task | step | event
    url: str
    body: dict[str, Any]


@dataclass(frozen=True)
class HumanInputDue:
    """A kickoff waits for a human (C.5): tell ``url`` (with ``headers``) and the task webhook."""

    app: str
    kickoff_id: str
    body: dict[str, Any]
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # its own credentials
    task_url: str | None = None


@dataclass(frozen=True)
class BackupFinished:
    """A backup was made (``outcome="succeeded"``) or failed (``"failed"``)."""

    backup: str
    outcome: str               # succeeded | failed
    duration: float
    size: int
    error: str | None = None
    trigger: str = "manual"    # manual | automatic
    failing_since: str | None = None   # failed: the first backup of this run of failures


EventSink = Callable[[object], None]


def ignore(event: object) -> None:
    """The sink of a part nobody wired to telemetry (unit tests)."""
