"""The agent's bandwidth cap: each copy's share of ``[agent] max_bandwidth``, and the paramiko limiter.

The cap is the region's (one agent's) total over all its concurrent copies.
Copies run in separate worker processes and OpenSSH's ``sftp`` only takes a
fixed rate (``-l``, in OpenSSH's Kbit/s: 1024 bit/s) when it starts, so the cap
is divided up front: every copy gets ``max_bandwidth / max_concurrent_copies``
and the pool never runs more copies than that at once (agent/pool.py).  The sum
of the shares is the cap whatever starts or ends when; the price is that a copy
running alone uses only its share, not the whole cap (doc/performance.md says
how to choose the two options).

paramiko's fetch has no such knob: :class:`RateLimit` paces the reader instead
(the bytes it consumes never get ahead of the rate by more than ``burst``), and
:func:`window` keeps the SSH window near one second of the rate, so the bytes
the link carries cannot run far ahead of the reader either.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# OpenSSH's "-l" unit (sftp.c multiplies it by 1024 to get bit/s) and the largest value it takes.
OPENSSH_KBIT = 1024
OPENSSH_MAX_LIMIT = 100 * 1024 * 1024
# The smallest SSH window given to a capped paramiko fetch (paramiko's own default).
MIN_WINDOW_BYTES = 2 * 1024 * 1024


def copy_share(max_bandwidth_mbit: float, copies: int) -> float:
    """Bytes per second one copy may fetch at: the region's cap over the copies that may run at once; 0: no cap."""
    if max_bandwidth_mbit <= 0:
        return 0.0
    return max_bandwidth_mbit * 1e6 / 8 / max(1, copies)


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
    """A token bucket: ``take(n)`` sleeps until ``n`` more bytes fit under ``rate`` bytes/s.

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

    def take(self, count: int) -> float:
        """Account for ``count`` bytes; sleeps while the bucket is in debt. Returns the seconds slept."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - count
        self.stamp = now
        if self.tokens >= 0:
            return 0.0
        wait = -self.tokens / self.rate
        self.sleep(wait)
        return wait


def paced(progress: Callable[[int, int], None], bytes_per_second: float, start: int = 0,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Callable[[int, int], None]:
    """``progress(done, total)`` of a reader that also holds the reader to ``bytes_per_second``.

    paramiko's fetch reports every block it consumed (agent/transfer.py), so the
    wait goes there: the reader asks for no more bytes until the rate allows.
    ``start`` is where the count begins (a resumed prefix is not fetched again).
    Without a rate, ``progress`` itself.
    """
    if bytes_per_second <= 0:
        return progress
    limit = RateLimit(bytes_per_second, clock=clock, sleep=sleep)
    last = [start]

    def report(done: int, total: int) -> None:
        limit.take(max(0, done - last[0]))
        last[0] = done
        progress(done, total)

    return report
