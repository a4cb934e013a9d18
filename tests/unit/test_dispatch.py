"""Pure parts of the kickoff dispatcher (crewship/service/dispatch.py) and its settings."""

from __future__ import annotations

import json
import sqlite3

import pytest

from crewship.config import from_env
from crewship.errors import InvalidInputError
from crewship.service.dispatch import _release_of, usable
from crewship.service.runhooks import hook_urls, run_body
from runtime.events import Endpoint


def _row(**values: object) -> sqlite3.Row:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    names = ", ".join(f"? AS {k}" for k in values)
    row: sqlite3.Row = conn.execute(f"SELECT {names}", tuple(values.values())).fetchone()
    return row


def test_the_release_is_read_from_the_instance_id() -> None:
    assert _release_of("demo-v3.1-abc123") == 3
    assert _release_of("my-venue-v12.2-0f0f0f") == 12
    assert _release_of("garbage") is None


def test_the_runner_records_task_and_step_webhooks_but_never_sees_a_url() -> None:
    hooks = {"task": "https://x/t", "step": "https://x/s", "crew": "https://x/c"}
    row = _row(id="k1", inputs_json=json.dumps({"topic": "a"}),
               webhooks_json=json.dumps(hooks), meta_json=json.dumps({"m": 1}),
               human_webhook=None)
    body = run_body(row)
    assert body == {"kickoff_id": "k1", "inputs": {"topic": "a"},
                    "webhooks": {"task": True, "step": True}, "meta": {"m": 1}}
    assert "https://" not in json.dumps(body)
    assert hook_urls(row) == {"task": "https://x/t", "step": "https://x/s"}  # kept by the daemon
    plain = run_body(_row(id="k2", inputs_json="{}", webhooks_json=None, meta_json=None,
                          human_webhook=None))
    assert plain == {"kickoff_id": "k2", "inputs": {}}
    waits = run_body(_row(id="k3", inputs_json="{}", webhooks_json=None, meta_json=None,
                          human_webhook="fernet:sealed"))
    assert waits["webhooks"] == {"task": True, "step": True}  # a resume may bring URLs


def test_kickoff_settings_come_from_the_environment_and_are_checked() -> None:
    settings = from_env({"CREWSHIP_KICKOFF_CONCURRENCY": "2", "CREWSHIP_KICKOFF_QUEUE": "7",
                         "CREWSHIP_KICKOFF_TIMEOUT": "90"})
    assert (settings.kickoff_concurrency, settings.kickoff_queue, settings.kickoff_timeout) == \
        (2, 7, 90.0)
    defaults = from_env({})
    assert (defaults.kickoff_concurrency, defaults.kickoff_queue) == (4, 100)
    for bad in ({"CREWSHIP_KICKOFF_CONCURRENCY": "0"}, {"CREWSHIP_KICKOFF_QUEUE": "x"},
                {"CREWSHIP_KICKOFF_TIMEOUT": "-1"}):
        with pytest.raises(InvalidInputError):
            from_env(bad)


def test_an_instance_without_its_secret_gets_no_runs_and_is_logged_once(
        capsys: pytest.CaptureFixture[str]) -> None:
    ok = Endpoint("demo-v2.1-aaa", "127.0.0.1", 30001, "s" * 64)
    lost = Endpoint("demo-v2.2-bbb", "127.0.0.1", 30002, "")
    logged: set[str] = set()
    assert usable("demo", [ok, lost], logged) == [ok]
    assert usable("demo", [ok, lost], logged) == [ok]
    assert logged == {"demo-v2.2-bbb"}
    said = capsys.readouterr()
    text = said.out + said.err
    assert text.count("instance_without_secret") == 1, text
    assert "restart demo" in text
