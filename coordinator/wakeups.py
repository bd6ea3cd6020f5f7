"""When the loop's queries are worth running: after something they read can have changed.

The loop wakes for every frame: with 500 agents online, a heartbeat arrives about a
hundred times a second.  A heartbeat changes no task and no credit, so the queries
behind dispatch, registrations due, planning and the copies a delete waits behind
would find what they found last time (doc/status.md).  A ``ChangeGate`` lets them run
when the journal was written since they last ran (``Journal.writes``: a report, an
event, a plan, a requeue...), when the loop was told of another change (``stir``: a
credit, a hello, a glance result), when a time it was told of comes (``wake_at``: a
retry's backoff ends, a registration retried, an event fetched again), and at least
every ``recheck`` seconds, for the times nobody told it of and for writes made by
another process (a restart tells it the earliest deferred event and pending task,
``Journal.next_due``; a registration left under way is redone at once).  The loop polls no longer than until
the earliest of those times (``poll_timeout``), so a retry is handed out when its
backoff ends, not up to ``recheck`` later.

A glance job finishes on a thread of the registrar's pool, where the loop's poll cannot
see it: the job rings a ``Doorbell``, a pipe the poll watches beside the sockets, so the
loop applies the result (an event's image fetched: plan and hand out its copies) at
once instead of when the poll times out (doc/control-plane.md).
"""

from __future__ import annotations

import heapq
import os
import threading
import weakref
from collections.abc import Callable

# Seconds after which a gated query runs again even when nothing said it should: a retry
# waits for seconds (retry_backoff), so this delays it by at most that much more.
RECHECK_SECONDS = 1.0


class ChangeGate:
    """Says whether a query can find anything new since it last ran, and notes that it runs now."""

    def __init__(self, writes: Callable[[], int], recheck: float = RECHECK_SECONDS) -> None:
        self._writes = writes
        self.recheck = recheck
        self._seen: int | None = None
        self._stirred = True
        self._ran_at: float | None = None
        self._wakes: list[float] = []  # a heap of the times told by wake_at, earliest first

    def wake_at(self, when: float) -> None:
        """What the query reads changes at ``when`` by time alone (a retry's backoff ends): run it then."""
        heapq.heappush(self._wakes, when)

    def next_wake(self) -> float | None:
        """The earliest time told by ``wake_at`` that has not come yet at the last ``due``."""
        return self._wakes[0] if self._wakes else None

    def stir(self) -> None:
        """Something the query reads changed outside the journal (credits, a glance result)."""
        self._stirred = True

    def due(self, now: float) -> bool:
        """True when the query should run now (and from now on counts as having run)."""
        writes = self._writes()
        waited = None if self._ran_at is None else now - self._ran_at
        woken = False
        while self._wakes and self._wakes[0] <= now:
            heapq.heappop(self._wakes)
            woken = True
        # A clock that went back counts as time passed: never stall on it.
        if (not self._stirred and not woken and writes == self._seen and waited is not None
                and 0 <= waited < self.recheck):
            return False
        # What the query will see includes every write so far; its own writes move the count again.
        self._stirred, self._seen, self._ran_at = False, writes, now
        return True


def poll_timeout(now: float, longest: float, *gates: ChangeGate) -> float:
    """Seconds the loop may wait for frames: ``longest``, or less when a gate's wake-up comes sooner."""
    wakes = [when for gate in gates if (when := gate.next_wake()) is not None]
    return max(0.0, min([longest, *(when - now for when in wakes)]))


class Doorbell:
    """Wakes the loop's poll from any thread: ``ring()`` writes to a pipe whose read end
    (``fileno()``) the poll watches; ``clear()`` empties it before the results are taken, so
    a result that comes after the clear rings again."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        # Held by ring and close: a late ring never writes to a descriptor number reused since.
        self._lock = threading.Lock()
        self._open = True
        # A Service never shut down (a test's) gives its pipe back when it is garbage.
        self._release = weakref.finalize(self, _close_pipe, self._read, self._write)

    @property
    def closed(self) -> bool:
        return not self._open

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        with self._lock:
            if not self._open:
                return
            try:
                os.write(self._write, b"\0")
            except BlockingIOError:  # full: it rings already
                pass

    def clear(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:  # empty
            pass

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                self._release()


def _close_pipe(read: int, write: int) -> None:
    os.close(read)
    os.close(write)
