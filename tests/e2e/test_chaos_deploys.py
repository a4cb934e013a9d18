"""Short CI versions of chaos rows d and f (``bench/chaos_deploys.py``): every push and
kickoff is told its outcome, none is lost. Real daemon, git over OpenSSH, real crews."""

from __future__ import annotations

import os

import pytest

from bench.chaos_deploys import scenario_d, scenario_f

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_concurrent_pushes_to_several_apps_all_go_live() -> None:
    row = scenario_d(apps=4)
    assert row.lost == 0, row.line()
    assert row.succeeded == row.accepted == 4, row.line()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_data_dir_gives_clear_errors_and_recovers() -> None:
    row = scenario_f()
    assert row.lost == 0, row.line()
    assert row.failed >= 1, row.line()      # the push and kickoffs into the full disk
    assert row.succeeded >= 2, row.line()   # the push and the kickoff once space is back
