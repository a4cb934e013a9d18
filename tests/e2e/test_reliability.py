"""Nothing accepted is lost (issue 12 items 2, 3, 7): the CI sizes of ``make chaos``.

Each test runs one scenario of bench/chaos.py (its own server, the real classic crew on
the fake LLM, loopback only) at the short sizes and asserts that no accepted kickoff is
lost. Failed kickoffs are allowed only where an instance really died (scenario b).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.chaos import Context, Sizes, burst, context, daemon_kills, instance_kills

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def ctx() -> Iterator[Context]:
    with context("process", Sizes.short()) as chaos:
        yield chaos


def test_a_burst_of_200_kickoffs_at_concurrency_20_loses_none(ctx: Context) -> None:
    row = burst(ctx)
    print(row.line())
    assert row.accepted == 200
    assert row.lost == 0
    assert row.failed == 0  # no accepted kickoff fails because of connection handling
    assert row.succeeded == 200


def test_kill_9_of_crew_instances_while_kickoffs_stream_in_loses_none(ctx: Context) -> None:
    row = instance_kills(ctx)
    print(row.line())
    assert row.accepted > 0
    assert row.lost == 0
    assert row.succeeded > 0
    assert row.recover_s is not None  # both instances came back


def test_kill_9_of_the_daemon_during_kickoffs_loses_none(ctx: Context) -> None:
    row = daemon_kills(ctx)
    print(row.line())
    assert row.accepted > 0
    assert row.lost == 0
    assert row.failed == 0  # the instances lived: every run was collected after the restart
    assert row.succeeded == row.accepted
