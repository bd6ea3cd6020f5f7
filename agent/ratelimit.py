"""The agent's bandwidth cap in units: ``max_bandwidth`` in bytes/s, ``sftp -l``, the paramiko window, a token bucket.

The cap is the region's (one agent's) total over all its copies; agent/budget.py
shares it between the copies fetching at the moment.  This module holds what one
fetch needs besides: OpenSSH's ``sftp`` takes a fixed rate (``-l``, in OpenSSH's
Kbit/s: 1024 bit/s) when it starts, and gets the whole cap, so that a copy alone
is paced by ``sftp`` itself between two charges of the budget; paramiko's fetch
gets an SSH window near one second of the cap (:func:`window`), so the bytes the
link carries cannot run far ahead of its paced reader.  :class:`RateLimit` is the
bucket of a fetch run outside an agent (no shared budget file).
"""

from __future__ import annotations

import time
from collections.abc import Callable

# OpenSSH's "-l" unit (sftp.c multiplies it by 1024 to get bit/s) and the largest value it takes.
OPENSSH_KBIT = 1024
OPENSSH_MAX_LIMIT = 100 * 1024 * 1024
# The smallest SSH window given to a capped paramiko fetch (paramiko's own default).
MIN_WINDOW_BYTES = 2 * 1024 * 1024
# A bucket holds about this long of the cap, and at least one block a fetch charges at
# once (agent/hashing.py's piece): bytes that arrived while the fetch was busy between
# two charges are then not charged twice over (with no burst, a fetch whose link runs
# just at the cap would wait once for the bytes and once more for the time they took).
BURST_SECONDS = 0.25
MIN_BURST_BYTES = 1024 * 1024


def cap_bytes(max_bandwidth_mbit: float) -> float:
    """``max_bandwidth`` (Mbit/s, 10^6 bit/s) in bytes per second; 0: no cap."""
    return max_bandwidth_mbit * 1e6 / 8 if max_bandwidth_mbit > 0 else 0.0


def burst_for(bytes_per_second: float) -> float:
    """The bytes a bucket of this rate lets pass at once (see ``BURST_SECONDS``)."""
    return max(float(MIN_BURST_BYTES), bytes_per_second * BURST_SECONDS)


def sftp_limit(bytes_per_second: float) -> int:
    """The value of ``sftp -l`` for a rate (rounded down, so the copy stays under it); 0: no limit."""
    if bytes_per_second <= 0:
        return 0
    return min(OPENSSH_MAX_LIMIT, max(1, int(bytes_per_second * 8 // OPENSSH_KBIT)))


def window(window_bytes: int, bytes_per_second: float) -> int:
    """paramiko's SSH window for a capped fetch: about one second of the rate, never above ``window_bytes``.

    A one-second window still covers any round trip under a second, so the cap,
    not the window, is what limits; a larger one would let the link carry that
    much ahead of the paced reader at the start.
    """
    if bytes_per_second <= 0:
        return window_bytes
    return min(window_bytes, max(MIN_WINDOW_BYTES, int(bytes_per_second)))


class RateLimit:
    """A token bucket in this process: ``take(n)`` sleeps until ``n`` more bytes fit under ``rate`` bytes/s.

    The bucket starts with ``burst`` tokens and holds at most that many, so over
    any interval ``t`` at most ``burst + rate * t`` bytes pass.  With ``burst`` 0,
    ``N`` bytes take at least ``N / rate`` seconds.
    """

    def __init__(self, rate: float, burst: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate, self.burst = rate, burst
        self.clock, self.sleep = clock, sleep
        self.tokens = burst
        self.stamp = clock()

    def charge(self, count: int) -> float:
        """Account for ``count`` bytes; the seconds to wait before more may pass."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - count
        self.stamp = now
        return max(0.0, -self.tokens / self.rate)

    def take(self, count: int) -> float:
        """Account for ``count`` bytes; sleeps while the bucket is in debt. Returns the seconds slept."""
        wait = self.charge(count)
        if wait > 0:
            self.sleep(wait)
        return wait
