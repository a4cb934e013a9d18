"""Pure parts of human in the loop (crewship/service/human.py): the kickoff's
``humanInputWebhook``, its authentication headers and the ``POST /resume`` body (C.5)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from crewship.errors import InvalidInputError
from crewship.service.human import auth_headers, human_webhook, resume_request, state_of
from crewship.store.history import parse_state


def test_a_human_input_webhook_is_checked_and_keeps_only_what_it_needs() -> None:
    assert human_webhook(None) is None
    assert human_webhook({"url": "https://hooks.example/hitl"}) == {
        "url": "https://hooks.example/hitl"}
    bearer = human_webhook({"url": "https://h.example/x", "extra": 1,
                            "authentication": {"strategy": "bearer", "token": "t0k", "x": 2}})
    assert bearer == {"url": "https://h.example/x",
                      "authentication": {"strategy": "bearer", "token": "t0k"}}
    assert auth_headers(bearer) == {"Authorization": "Bearer t0k"}
    basic = human_webhook({"url": "http://h.example/x", "authentication": {
        "strategy": "basic", "username": "ann", "password": "pw:1"}})
    assert basic is not None
    header = auth_headers(basic)["Authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")) == b"ann:pw:1"
    assert auth_headers({"url": "https://h.example/x"}) == {}


@pytest.mark.parametrize("bad", [
    "https://h.example/x",                                   # not an object
    {"url": "file:///etc/passwd"},                           # not http(s)
    {"url": "http://[::1"},                                  # not a URL
    {},                                                      # no url
    {"url": "https://h.example/x", "authentication": "tok"},
    {"url": "https://h.example/x", "authentication": {"strategy": "digest", "token": "t"}},
    {"url": "https://h.example/x", "authentication": {"strategy": "bearer"}},
    {"url": "https://h.example/x", "authentication": {"strategy": "basic", "username": "a"}},
    {"url": "https://h.example/x", "authentication": {"strategy": "bearer", "token": 5}},
])
def test_a_bad_human_input_webhook_is_refused_with_a_reason(bad: Any) -> None:
    with pytest.raises(InvalidInputError, match="humanInputWebhook"):
        human_webhook(bad)


def test_a_resume_body_is_checked() -> None:
    good = {"execution_id": "k1", "task_id": "research_task", "human_feedback": "more",
            "is_approve": False}
    assert resume_request(good) == ("k1", "research_task", False, "more")
    without = {k: v for k, v in good.items() if k != "human_feedback"}
    assert resume_request(without) == ("k1", "research_task", False, "")
    for field, value, message in [
            ("execution_id", None, "execution_id"), ("execution_id", 7, "execution_id"),
            ("task_id", "", "task_id"), ("human_feedback", 3, "human_feedback"),
            ("human_feedback", "x" * 100_001, "longer than"),
            ("is_approve", "yes", "is_approve"), ("is_approve", None, "is_approve")]:
        with pytest.raises(InvalidInputError, match=message):
            resume_request({**good, field: value})


def test_the_waiting_state_is_a_known_unfinished_state() -> None:
    assert parse_state("waiting") == "PENDING_HUMAN_INPUT"
    assert parse_state("pending_human_input") == "PENDING_HUMAN_INPUT"
    assert state_of(None) == {"waiting": None, "rounds": []}
    assert state_of('{"waiting": {"round": 1}, "rounds": []}')["waiting"] == {"round": 1}
