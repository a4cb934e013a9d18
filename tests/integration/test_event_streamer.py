"""The event streamer (crewship/service/streaming.py) against a real receiver on 127.0.0.1:
per kickoff in order, batched or one by one, with the kickoff's credentials, retried."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from crewship.service.notify import Deliverer
from crewship.service.streaming import EventStreamer, parse_webhooks
from crewship.urls import Policy
from tests.support.receiver import Receiver

META = {"requestId": "r-9"}


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def _event(n: int) -> dict[str, Any]:
    return {"id": f"e{n}", "execution_id": "k1", "timestamp": f"2026-12-01T10:00:{n:02d}Z",
            "type": "llm_call_started", "data": {"n": n}}


def _stream(streamer: EventStreamer, webhooks: dict[str, Any], count: int,
            pause: float = 0.0) -> Any:
    spec = parse_webhooks(webhooks)

    async def scenario() -> list[tuple[bool, int]]:
        for n in range(count):
            streamer.push("k1", spec, META, _event(n))
            if pause:
                await asyncio.sleep(pause)
        streamer.close("k1")
        await streamer.drain()
        await streamer.aclose()
        return outcomes

    outcomes: list[tuple[bool, int]] = []
    streamer.done = lambda ok, n: outcomes.append((ok, n))
    return asyncio.run(scenario())


def _deliverer() -> Deliverer:
    return Deliverer(Policy(allow_private=True), base_delay=0.05, max_delay=0.1)


def test_batched_events_come_in_order_with_the_bearer_token(rx: Receiver) -> None:
    streamer = EventStreamer(_deliverer(), window=0.3, batch_max=4)
    outcomes = _stream(streamer, {"events": ["llm_call_started"], "url": rx.url("/b"),
                                  "authentication": {"strategy": "bearer", "token": "t0k"}},
                       count=10)
    bodies = rx.bodies("/b")
    assert [len(b["events"]) for b in bodies] == [4, 4, 2]  # batch_max, then the rest at close
    assert [e["id"] for b in bodies for e in b["events"]] == [f"e{n}" for n in range(10)]
    assert all((b["kickoff_id"], b["meta"]) == ("k1", META) for b in bodies)
    assert rx.authorizations("/b") == ["Bearer t0k"] * 3
    assert outcomes == [(True, 4), (True, 4), (True, 2)]


def test_realtime_events_go_one_by_one_and_a_failure_is_retried_in_place(rx: Receiver) -> None:
    rx.fail_first("/r", 2)
    streamer = EventStreamer(_deliverer(), window=5.0)
    _stream(streamer, {"events": ["llm_call_started"], "url": rx.url("/r"), "realtime": True,
                       "authentication": {"strategy": "basic", "username": "ann",
                                          "password": "pw"}}, count=5, pause=0.05)
    bodies = rx.bodies("/r")
    assert [[e["id"] for e in b["events"]] for b in bodies] == [[f"e{n}"] for n in range(5)]
    assert len(rx.attempts("/r")) == 7  # e0 three times, then each once
    assert set(rx.authorizations("/r")) == {"Basic YW5uOnB3"}


def test_a_receiver_that_keeps_failing_does_not_hold_up_the_rest_forever(rx: Receiver) -> None:
    rx.fail_first("/f", 5)  # every try of the first batch (5 attempts)
    streamer = EventStreamer(_deliverer(), window=0.0, batch_max=2)
    outcomes = _stream(streamer, {"events": ["llm_call_started"], "url": rx.url("/f")},
                       count=4)
    assert outcomes[0] == (False, 2)
    assert [e["id"] for b in rx.bodies("/f") for e in b["events"]] == ["e2", "e3"]
    assert rx.authorizations("/f")[-1] is None  # no credentials asked for, none sent


def test_a_refused_receiver_gets_nothing(rx: Receiver) -> None:
    streamer = EventStreamer(Deliverer(Policy()), window=0.0)  # loopback is not allowed
    outcomes = _stream(streamer, {"events": ["llm_call_started"], "url": rx.url("/x")},
                       count=1)
    assert outcomes == [(False, 1)]
    assert rx.attempts("/x") == []
