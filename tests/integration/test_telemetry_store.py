"""On a real SQLite file and a real 127.0.0.1 receiver: kickoff retention, alert
receivers, and telemetry's deliveries (one alert per failure, retries, never blocking)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crewship.config import Layout, Settings
from crewship.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from crewship.events import DeployFinished, KickoffFinished
from crewship.model import AccessLevel, App, User
from crewship.service.notify import Deliverer
from crewship.service.platform import Platform
from crewship.service.telemetry import Telemetry
from crewship.store.alerts import AlertGate
from crewship.store.history import Retention, prune_kickoffs
from crewship.store.state import Database
from runtime.events import AppCrashed, InstanceExited
from tests.support.receiver import Receiver

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    layout = Layout(tmp_path / "data")
    layout.ensure()
    db = Database(layout.state_db)
    yield Platform(Settings(data_dir=layout.root, allow_private_urls=True), layout, db)
    db.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


def make_app(platform: Platform, name: str = "demo") -> tuple[User, App]:
    owner = platform.accounts.ensure_user("owner", admin=True)
    return owner, platform.apps_store.create(name, owner.id)


def add_kickoff(platform: Platform, app: App, kickoff_id: str, state: str, days_ago: float) -> None:
    created = (NOW - dt.timedelta(days=days_ago)).isoformat(timespec="seconds")
    platform.db.execute("INSERT INTO kickoffs (id, app_id, state, inputs_json, created_at) "
                        "VALUES (?, ?, ?, '{}', ?)", kickoff_id, app.id, state,
                        created.replace("+00:00", "Z"))


def kickoff_ids(platform: Platform) -> set[str]:
    return {r["id"] for r in platform.db.all("SELECT id FROM kickoffs")}


def test_prune_applies_age_and_count_per_app_and_spares_running(platform: Platform) -> None:
    _, demo = make_app(platform, "demo")
    _, other = make_app(platform, "other")
    for i in range(5):
        add_kickoff(platform, demo, f"d{i}", "SUCCESS", i)
    add_kickoff(platform, demo, "d-old", "FAILURE", 45)
    add_kickoff(platform, demo, "d-stuck", "RUNNING", 45)
    for i in range(3):
        add_kickoff(platform, other, f"o{i}", "SUCCESS", i)
    removed = prune_kickoffs(platform.db, Retention(days=30, max_per_app=3), NOW)
    assert removed == {"demo": 3}
    assert kickoff_ids(platform) == {"d0", "d1", "d2", "d-stuck", "o0", "o1", "o2"}
    assert prune_kickoffs(platform.db, Retention(days=30, max_per_app=3), NOW) == {}


def test_a_kickoffs_trace_goes_with_it(platform: Platform) -> None:
    _, demo = make_app(platform, "demo")
    for kickoff_id, days in (("new", 1), ("old", 45)):
        add_kickoff(platform, demo, kickoff_id, "SUCCESS", days)
        platform.db.execute("INSERT INTO kickoff_traces (kickoff_id, spans_json) VALUES (?, '[]')",
                            kickoff_id)
    assert prune_kickoffs(platform.db, Retention(days=30, max_per_app=10), NOW) == {"demo": 1}
    assert [r["kickoff_id"] for r in platform.db.all("SELECT kickoff_id FROM kickoff_traces")] == [
        "new"]
    platform.db.execute("DELETE FROM apps WHERE id = ?", demo.id)  # and with its app
    assert platform.db.all("SELECT kickoff_id FROM kickoff_traces") == []


def test_alert_receivers_are_checked_and_scoped(platform: Platform) -> None:
    owner, app = make_app(platform)
    alert = platform.monitoring.add_alert(owner, "demo", "http://127.0.0.1:9/hook", "crashed,deploy_failed")
    assert alert.events == ("deploy_failed", "crashed")
    assert [a.id for a in platform.monitoring.alert_receivers(owner, "demo")] == [alert.id]
    reader = platform.accounts.ensure_user("reader")
    platform.apps_store.set_grant(app, reader.id, AccessLevel.READ)
    assert platform.monitoring.alert_receivers(reader, "demo")
    with pytest.raises(PermissionDeniedError):
        platform.monitoring.add_alert(reader, "demo", "http://127.0.0.1:9/x")
    stranger = platform.accounts.ensure_user("stranger")
    with pytest.raises(NotFoundError, match="app not found"):
        platform.monitoring.alert_receivers(stranger, "demo")
    with pytest.raises(InvalidInputError):
        platform.monitoring.add_alert(owner, "demo", "file:///etc/passwd")
    with pytest.raises(InvalidInputError, match="unknown alert event"):
        platform.monitoring.add_alert(owner, "demo", "http://127.0.0.1:9/x", "everything")
    platform.monitoring.remove_alert(owner, "demo", alert.id)
    assert platform.monitoring.alert_receivers(owner, "demo") == []
    with pytest.raises(NotFoundError):
        platform.monitoring.remove_alert(owner, "demo", alert.id)


def telemetry(platform: Platform) -> Telemetry:
    return Telemetry(platform.settings, platform.metrics, platform.alerts,
                     Deliverer(platform.settings.url_policy(), attempts=4, base_delay=0.05), AlertGate())


def failed_kickoff(kickoff_id: str, **extra: object) -> KickoffFinished:
    return KickoffFinished(app="demo", kickoff_id=kickoff_id, release=2, state="FAILURE",
                           execution_time=1.5, error="LLM said 500", meta={"requestId": "r1"},
                           **extra)  # type: ignore[arg-type]


def test_one_alert_per_failure_kind_with_retries(platform: Platform, receiver: Receiver) -> None:
    owner, _ = make_app(platform)
    platform.monitoring.add_alert(owner, "demo", receiver.url("/alerts"))
    platform.monitoring.add_alert(owner, "demo", receiver.url("/flaky"), "kickoff_failed")
    receiver.fail_first("/flaky", 2)

    async def scenario() -> None:
        tele = telemetry(platform)
        failed = DeployFinished("demo", 3, "owner", "push", "failed", 12.0, "missing_tasks_yaml")
        for event in (failed, failed, failed_kickoff("k1"), failed_kickoff("k1"),
                      InstanceExited("demo", "i1", 2, -9), AppCrashed("demo", 2, 3),
                      AppCrashed("demo", 2, 4)):
            tele.handle(event)
        await tele.deliverer.drain(10)
        await tele.aclose()

    asyncio.run(scenario())
    kinds = sorted(b["event"] for b in receiver.bodies("/alerts"))
    assert kinds == ["crashed", "deploy_failed", "kickoff_failed"]
    kickoff = next(b for b in receiver.bodies("/alerts") if b["event"] == "kickoff_failed")
    assert kickoff["app"] == "demo"
    assert kickoff["release"] == "v2"
    assert kickoff["details"]["kickoff_id"] == "k1"
    assert kickoff["url"].endswith("/apps/demo")
    assert len(receiver.bodies("/flaky")) == 1
    assert len(receiver.attempts("/flaky")) == 3
    text = platform.metrics.render().decode()
    assert 'crewship_deploys_total{app="demo",kind="push",outcome="failed"} 2.0' in text
    assert 'crewship_instance_crashes_total{app="demo"} 1.0' in text
    assert 'crewship_alerts_total{event="kickoff_failed",outcome="delivered"} 2.0' in text


def test_crew_webhook_payload_and_a_dead_receiver_never_blocks(
        platform: Platform, receiver: Receiver) -> None:
    make_app(platform)

    async def scenario() -> float:
        tele = telemetry(platform)
        started = time.monotonic()
        tele.handle(KickoffFinished(
            app="demo", kickoff_id="k2", release=1, state="SUCCESS", execution_time=2.0,
            result="done", result_json={"a": 1}, meta={"requestId": "r2"},
            token_usage={"total_tokens": 7, "prompt_tokens": 5, "completion_tokens": 2},
            webhooks={"crew": receiver.url("/crew")}))
        tele.handle(failed_kickoff("k3", webhooks={"crew": "http://127.0.0.1:9/nobody"}))
        elapsed = time.monotonic() - started
        await tele.deliverer.drain(10)
        await tele.aclose()
        return elapsed

    assert asyncio.run(scenario()) < 0.1
    [body] = receiver.bodies("/crew")
    assert body == {"kickoff_id": "k2", "result": "done", "result_json": {"a": 1},
                    "token_usage": {"total_tokens": 7, "prompt_tokens": 5,
                                    "completion_tokens": 2},
                    "meta": {"requestId": "r2"}, "state": "SUCCESS", "error": None}
    text = platform.metrics.render().decode()
    assert 'crewship_webhooks_total{kind="crew",outcome="failed"} 1.0' in text
