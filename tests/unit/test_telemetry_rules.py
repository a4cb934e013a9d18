"""Pure telemetry rules: alert de-duplication, history retention, events, URLs, metrics."""

from __future__ import annotations

import datetime as dt

import pytest

from crewship.errors import InvalidInputError
from crewship.service.metrics import Metrics
from crewship.service.notify import retry_delays
from crewship.store.alerts import DEFAULT_EVENTS, AlertGate, parse_events
from crewship.store.history import Retention, kickoffs_to_prune, parse_limit, parse_state
from crewship.urls import validate_url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ alert gate
def test_a_failed_kickoff_or_deploy_is_one_alert_however_often_reported() -> None:
    gate = AlertGate(Clock())
    assert gate.admit("kickoff_failed", "demo", "k1") == 0
    assert gate.admit("kickoff_failed", "demo", "k1") is None
    assert gate.admit("kickoff_failed", "demo", "k2") == 0
    assert gate.admit("deploy_failed", "demo", "v3") == 0
    assert gate.admit("deploy_failed", "demo", "v3") is None
    assert gate.admit("deploy_failed", "other", "v3") == 0


def test_crashed_is_raised_once_per_crash_loop_until_the_app_recovers() -> None:
    clock = Clock()
    gate = AlertGate(clock, quiet=600)
    assert gate.admit("crashed", "demo") == 0
    for _ in range(5):
        clock.now += 30
        assert gate.admit("crashed", "demo") is None
    assert gate.admit("crashed", "other") == 0
    gate.recovered("demo")           # a release went live
    assert gate.admit("crashed", "demo") == 0


def test_a_quiet_spell_ends_a_crash_loop() -> None:
    clock = Clock()
    gate = AlertGate(clock, quiet=600)
    assert gate.admit("crashed", "demo") == 0
    clock.now += 599
    assert gate.admit("crashed", "demo") is None
    clock.now += 600
    assert gate.admit("crashed", "demo") == 0


def test_a_storm_is_held_back_and_counted_in_the_next_alert() -> None:
    clock = Clock()
    gate = AlertGate(clock, burst=3, per=60)
    sent = [gate.admit("kickoff_failed", "demo", f"k{i}") for i in range(10)]
    assert sent == [0, 0, 0] + [None] * 7
    clock.now += 61
    assert gate.admit("kickoff_failed", "demo", "k10") == 7
    assert gate.admit("kickoff_failed", "demo", "k11") == 0


def test_alert_events_are_parsed_strictly() -> None:
    assert parse_events(None) == DEFAULT_EVENTS
    assert parse_events("crashed, deploy_failed,crashed") == ("deploy_failed", "crashed")
    with pytest.raises(InvalidInputError, match="unknown alert event"):
        parse_events("crashed,exploded")
    with pytest.raises(InvalidInputError):
        parse_events(",")


# ------------------------------------------------------------------- retention
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def stamp(days_ago: float) -> str:
    return (NOW - dt.timedelta(days=days_ago)).isoformat(timespec="seconds").replace("+00:00", "Z")


def test_retention_drops_finished_kickoffs_older_than_the_limit() -> None:
    rows = [("new", "SUCCESS", stamp(1)), ("old", "FAILURE", stamp(31)),
            ("edge", "SUCCESS", stamp(29.9)), ("old-running", "RUNNING", stamp(90)),
            ("old-pending", "PENDING", stamp(40)),
            ("old-waiting", "PENDING_HUMAN_INPUT", stamp(60))]  # a human may take weeks
    assert kickoffs_to_prune(rows, Retention(days=30), NOW) == ["old"]


def test_retention_keeps_the_newest_n_per_app() -> None:
    rows = [(f"k{i}", "SUCCESS", stamp(i / 100)) for i in range(10)]
    rows.append(("busy", "RUNNING", stamp(1)))
    doomed = kickoffs_to_prune(rows, Retention(days=30, max_per_app=4), NOW)
    assert sorted(doomed) == ["k4", "k5", "k6", "k7", "k8", "k9"]


def test_history_filters_are_validated() -> None:
    assert parse_state("failure") == "FAILURE"
    assert parse_state("failed") == "FAILURE"
    assert parse_state(None) is None
    with pytest.raises(InvalidInputError, match="unknown state"):
        parse_state("exploded")
    assert parse_limit(None) == 20
    assert parse_limit("5") == 5
    for bad in ("0", "1001", "many"):
        with pytest.raises(InvalidInputError):
            parse_limit(bad)


# ------------------------------------------------------------- URLs and retries
@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "https://hooks.example.com/a?b=c"])
def test_webhook_urls_must_be_absolute_http(url: str) -> None:
    assert validate_url(url) == url


@pytest.mark.parametrize("url", ["", "ftp://x/y", "file:///etc/passwd", "http://", "/relative",
                                 "http://a b/", "http://x/\n", 42, "http://x/" + "a" * 3000])
def test_bad_webhook_urls_are_refused(url: object) -> None:
    with pytest.raises(InvalidInputError):
        validate_url(url)


def test_retry_delays_double_up_to_the_cap() -> None:
    assert retry_delays(5, 0.5, 3.0) == [0.5, 1.0, 2.0, 3.0]
    assert retry_delays(1, 0.5, 3.0) == []


# --------------------------------------------------------------------- metrics
def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.kickoff_finished("demo", "SUCCESS", 1.5, {"total_tokens": 12, "prompt_tokens": 9})
    first.states = lambda: [("demo", "running", ["up", "up"], 2)]
    text = first.render().decode()
    assert 'crewship_kickoffs_total{app="demo",outcome="SUCCESS"} 1.0' in text
    assert 'crewship_llm_tokens_total{app="demo",kind="total"} 12.0' in text
    assert 'crewship_instances{app="demo",state="up"} 2.0' in text
    assert 'crewship_app_restarts{app="demo"} 2.0' in text
    assert "crewship_kickoffs_total{" not in second.render().decode()
