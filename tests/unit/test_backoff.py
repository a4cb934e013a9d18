"""The crash policy of DESIGN.md section 4, driven by a fake clock."""

from __future__ import annotations

from runtime.backoff import BackoffPolicy, RestartBackoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_first_restart_is_immediate_then_doubles_from_one_second() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(BackoffPolicy(max_crashes=100), clock)
    delays = []
    for _ in range(6):
        decision = backoff.on_crash(1, up_since=None)
        assert decision.restart
        delays.append(decision.delay)
        clock.advance(decision.delay + 0.5)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_delay_is_capped_at_five_minutes() -> None:
    policy = BackoffPolicy()
    assert policy.delay(10) == 256.0
    assert policy.delay(11) == 300.0
    assert policy.delay(40) == 300.0


def test_sixty_seconds_up_resets_the_delay() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(BackoffPolicy(), clock)
    for _ in range(3):
        backoff.on_crash(1, up_since=None)
    up = clock()
    clock.advance(59.0)
    assert backoff.on_crash(1, up_since=up).delay == 4.0
    up = clock()
    clock.advance(60.0)
    assert backoff.on_crash(1, up_since=up).delay == 0.0
    assert backoff.on_crash(1, up_since=clock()).delay == 1.0


def test_ten_crashes_in_ten_minutes_is_crashed() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(BackoffPolicy(), clock)
    for n in range(1, 10):
        decision = backoff.on_crash(1, up_since=None)
        assert decision.restart, n
        assert decision.crashes == n
        clock.advance(1.0)
    decision = backoff.on_crash(1, up_since=None)
    assert not decision.restart
    assert decision.crashes == 10
    assert backoff.crashed
    # crashed stays crashed: later crashes (other slots) are not restarted either
    clock.advance(3600.0)
    assert not backoff.on_crash(2, up_since=None).restart


def test_crashes_spread_over_more_than_ten_minutes_keep_restarting() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(BackoffPolicy(), clock)
    for _ in range(30):
        up = clock()
        clock.advance(67.0)  # 10 crashes span 9 * 67 s > 10 min
        decision = backoff.on_crash(1, up_since=up)
        assert decision.restart
        assert decision.delay == 0.0
    assert not backoff.crashed
    assert backoff.restarts == 30


def test_reset_allows_restarts_again() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(BackoffPolicy(max_crashes=2), clock)
    backoff.on_crash(1, None)
    assert not backoff.on_crash(1, None).restart
    backoff.reset()
    assert not backoff.crashed
    assert backoff.restarts == 0
    decision = backoff.on_crash(1, None)
    assert decision.restart
    assert decision.delay == 0.0


def test_slots_back_off_independently_but_share_the_window() -> None:
    clock = FakeClock()
    backoff = RestartBackoff(BackoffPolicy(max_crashes=4), clock)
    assert backoff.on_crash(1, None).delay == 0.0
    assert backoff.on_crash(1, None).delay == 1.0
    assert backoff.on_crash(2, None).delay == 0.0
    assert not backoff.on_crash(2, None).restart


def test_describe_names_the_rule() -> None:
    assert BackoffPolicy().describe() == "10 crashes in 10 min"
    assert BackoffPolicy(max_crashes=3, window=5).describe() == "3 crashes in 5 s"
