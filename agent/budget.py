"""The region's bandwidth budget: one token bucket that every fetch of the agent draws from.

``[agent] max_bandwidth`` caps the region's link to its sources, whatever the
number of copies fetching.  Copies run in separate worker processes, so the bucket
lives in a small file, ``<work_dir>/.bandwidth``: the tokens (bytes that may still
pass at once; negative, a debt), the monotonic time they were counted at, and the
bytes ever charged.  A fetch charges every block it received under an exclusive
``flock`` held for a read and a write, and while the bucket is in debt it waits
until its own bytes are paid for.  Over any interval ``t`` the agent's fetches
together receive at most ``burst + cap * t`` bytes, plus what is in flight when a
fetch starts waiting.

Nothing is set aside per copy: the cap goes to the copies fetching at the moment.
A copy alone gets all of it, two get about half each, a copy that is uploading, has
ended or died takes nothing.  A dead worker cannot hold anything back: the kernel
drops its lock however it died, and the only trace it leaves is the debt of bytes it
had already received, which time pays off at the cap.

How a fetch waits depends on who reads the bytes:

- paramiko's reader and the glance download sleep in their progress call: they ask
  for nothing more, so the SSH window or TCP's stops the sender;
- OpenSSH's ``sftp`` writes the ``.part`` itself; the thread that hashes the growing
  file charges what appeared, and the ``sftp`` process is stopped (``SIGSTOP``) for
  the wait, then continued.  Stopped, it reads nothing from its ``ssh``, whose channel
  window (2 MiB) then stops the server.  ``sftp -l`` at the whole cap still paces a
  copy between two charges (agent/ratelimit.py).
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent import ratelimit

BUDGET_NAME = ".bandwidth"
# tokens (bytes), stamp (time.monotonic(): one clock for every process of the host), bytes ever charged.
_STATE = struct.Struct("<ddQ")
# A debt longer than this at the cap is no state this module wrote: the file is started again.
MAX_DEBT_SECONDS = 3600.0

ProgressFn = Callable[[int, int], None]


def budget_path(work_dir: str) -> str:
    """The budget file of the region whose ``.part`` files are in ``work_dir``."""
    return os.path.join(work_dir, BUDGET_NAME)


@dataclass(frozen=True)
class State:
    """The bucket as last written: ``tokens`` at ``stamp``, and every byte ever charged."""

    tokens: float
    stamp: float
    charged: int


class SharedBucket:
    """The token bucket in ``path``, shared by every process and thread that opens it with the same rate."""

    def __init__(self, path: str, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.path, self.rate, self.clock = path, rate, clock
        self.burst = ratelimit.burst_for(rate) if burst is None else burst
        # flock excludes other open files, not threads sharing this object's.
        self._threads = threading.Lock()

    def charge(self, count: int) -> float:
        """Account for ``count`` bytes already received; the seconds to wait before receiving more."""
        with self._threads, self._locked() as fd:
            now = self.clock()
            state = self._read(fd, now)
            tokens = min(self.burst, state.tokens + (now - state.stamp) * self.rate) - count
            os.pwrite(fd, _STATE.pack(tokens, now, state.charged + count), 0)
        return max(0.0, -tokens / self.rate)

    def state(self) -> State:
        """The bucket as it stands (nothing charged)."""
        with self._threads, self._locked() as fd:
            return self._read(fd, self.clock())

    def _locked(self) -> _Locked:
        return _Locked(self.path)

    def _read(self, fd: int, now: float) -> State:
        raw = os.pread(fd, _STATE.size, 0)
        if len(raw) != _STATE.size:
            return State(self.burst, now, 0)  # a new file
        tokens, stamp, charged = _STATE.unpack(raw)
        if not (math.isfinite(tokens) and math.isfinite(stamp)) or tokens < -self.rate * MAX_DEBT_SECONDS:
            return State(self.burst, now, 0)
        if stamp > now:  # written before the host restarted its monotonic clock
            return State(min(tokens, self.burst), now, charged)
        return State(tokens, stamp, charged)


class _Locked:
    """The budget file, open and under an exclusive flock for one read and write (opened each time: no fd to leak)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing drops the lock


class Pacer:
    """``report(done, total)`` of one fetch: passes progress on, charges the bucket, waits while in debt.

    ``start`` is where the count begins (a resumed prefix is not fetched again).
    :meth:`attach` names a process that writes the bytes itself (``sftp``): it is
    stopped while the fetch waits.  Without a bucket, progress passes unchanged.
    """

    def __init__(self, bucket: Any, progress: ProgressFn, start: int = 0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.bucket, self.progress, self.sleep = bucket, progress, sleep
        self.last = start
        self.writer: Any = None

    def attach(self, process: Any) -> None:
        """The process writing this fetch's bytes (a ``subprocess.Popen``: signals skip it once it was reaped)."""
        self.writer = process

    def report(self, done: int, total: int) -> None:
        # Progress first: the upload may go on with the bytes on disk while this fetch waits.
        self.progress(done, total)
        if self.bucket is None:
            return
        wait = self.bucket.charge(max(0, done - self.last))
        self.last = max(self.last, done)
        if wait > 0:
            self._hold(wait)

    def _hold(self, wait: float) -> None:
        writer = self.writer
        if writer is None:
            self.sleep(wait)
            return
        writer.send_signal(signal.SIGSTOP)
        try:
            self.sleep(wait)
        finally:
            writer.send_signal(signal.SIGCONT)


def pacer(options: Any, progress: ProgressFn, start: int = 0) -> Pacer:
    """The pacer of one fetch under ``options`` (agent/transfer.py's FetchOptions): ``rate_limit``
    (bytes/s, 0: none) drawn from ``budget_file``, the region's budget.

    Without a budget file (a fetch run outside an agent), the fetch has a bucket of its own.
    """
    rate, path = options.rate_limit, options.budget_file
    if rate <= 0:
        return Pacer(None, progress, start)
    bucket = SharedBucket(path, rate) if path else ratelimit.RateLimit(rate, ratelimit.burst_for(rate))
    return Pacer(bucket, progress, start)
