"""Heartbeat liveness and jittered exponential backoff, with the clock passed in.

Both sides of every zmq session use these: a peer is alive while it was heard from
within ``misses`` heartbeat intervals (any message counts), and reconnects wait
1, 2, 4 ... seconds up to a bound, each with jitter so that a hundred agents that
lost the coordinator at once do not all come back in the same millisecond.
Delays stay finite and capped for any attempt count (``doubled``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Three missed beats before a peer is declared dead: one lost beat is noise on a
# busy host, three in a row is a dead or partitioned peer (zguide's Paranoid Pirate).
DEFAULT_MISSES = 3
# 2.0 ** 1100 already overflows a float: larger exponents mean nothing more.
_MAX_EXPONENT = 1100


@dataclass
class Liveness:
    """Tracks when a peer was last heard from; times are seconds from any monotonic clock."""

    interval: float
    misses: int = DEFAULT_MISSES
    last_heard: float = 0.0

    def heard(self, now: float) -> None:
        self.last_heard = now

    def expired(self, now: float) -> bool:
        return now - self.last_heard > self.interval * self.misses

    def deadline(self) -> float:
        return self.last_heard + self.interval * self.misses


@dataclass
class Backoff:
    """Exponential backoff with full jitter on the upper half: delay in [d/2, d]."""

    initial: float = 1.0
    maximum: float = 32.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        delay = doubled(self.initial, self.attempt, self.maximum)
        self.attempt += 1
        return delay / 2 + self.rng.random() * delay / 2

    def reset(self) -> None:
        self.attempt = 0


def doubled(base: float, times: int, maximum: float) -> float:
    """``min(maximum, base * 2**times)`` for any ``times``, without overflow.

    A process that retries for days reaches attempt counts where ``2**times`` no
    longer fits a float; past the bound the answer is the bound.
    """
    if times <= 0:
        return min(maximum, base)
    try:
        value = base * 2.0 ** min(times, _MAX_EXPONENT)
    except OverflowError:
        return maximum
    return min(maximum, value)


def retry_delay(attempt: int, base: float, maximum: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based) of a failed task."""
    return doubled(base, attempt - 1, maximum)
