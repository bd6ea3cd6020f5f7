"""glancesync.liveness: heartbeat counting and jittered backoff, with the clock passed in."""

from __future__ import annotations

import random

import pytest

from glancesync.liveness import DEFAULT_MISSES, Backoff, Liveness, retry_delay


def test_alive_until_three_intervals_pass() -> None:
    peer = Liveness(interval=5.0)
    peer.heard(100.0)
    assert DEFAULT_MISSES == 3
    assert not peer.expired(114.9)
    assert not peer.expired(115.0)
    assert peer.expired(115.1)
    assert peer.deadline() == 115.0


def test_any_message_renews() -> None:
    peer = Liveness(interval=1.0, misses=2)
    peer.heard(0.0)
    peer.heard(1.5)
    assert not peer.expired(3.0)
    assert peer.expired(3.6)


def test_backoff_doubles_within_jitter_up_to_the_bound() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(7))
    nominal = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for expected in nominal:
        delay = backoff.next_delay()
        assert expected / 2 <= delay <= expected


def test_backoff_jitter_spreads_peers() -> None:
    delays = {Backoff(rng=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(delays) > 10


def test_backoff_reset() -> None:
    backoff = Backoff(initial=1.0, maximum=32.0, rng=random.Random(1))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0


@pytest.mark.parametrize(
    ("attempt", "expected"), [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0), (7, 300.0), (50, 300.0)]
)
def test_retry_delay(attempt: int, expected: float) -> None:
    assert retry_delay(attempt, base=5.0, maximum=300.0) == expected


@pytest.mark.parametrize("attempt", [1023, 1024, 1100, 10**6])
def test_backoff_stays_capped_for_any_attempt_count(attempt: int) -> None:
    backoff = Backoff(initial=1.0, maximum=32.0, attempt=attempt, rng=random.Random(3))
    for _ in range(3):
        delay = backoff.next_delay()
        assert 16.0 <= delay <= 32.0


@pytest.mark.parametrize("attempt", [1025, 10**6])
def test_retry_delay_stays_capped_for_any_attempt_count(attempt: int) -> None:
    assert retry_delay(attempt, base=5.0, maximum=300.0) == 300.0


def test_backoff_after_a_thousand_failures_in_a_row() -> None:
    # A coordinator down for a weekend: the agent retries on and on, never raising.
    backoff = Backoff(initial=1.0, maximum=32.0, rng=random.Random(5))
    delays = [backoff.next_delay() for _ in range(3000)]
    assert max(delays) <= 32.0 and min(delays[10:]) >= 16.0
