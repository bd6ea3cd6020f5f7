"""When the loop's queries are worth running: after something they read can have changed.

The loop wakes for every frame: with 500 agents online, a heartbeat arrives about a
hundred times a second.  A heartbeat changes no task and no credit, so the queries
behind dispatch, registrations due, planning and the copies a delete waits behind
would find what they found last time (doc/status.md).  A ``ChangeGate`` lets them run
when the journal was written since they last ran (``Journal.writes``: a report, an
event, a plan, a requeue...), when the loop was told of another change (``stir``: a
credit, a hello, a glance result), and at least every ``recheck`` seconds, for what
only time changes (a retry's ``not_before`` that comes due, an event deferred) and
for writes made by another process.
"""

from __future__ import annotations

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

    def stir(self) -> None:
        """Something the query reads changed outside the journal (credits, a glance result)."""
        self._stirred = True

    def due(self, now: float) -> bool:
        """True when the query should run now (and from now on counts as having run)."""
        writes = self._writes()
        waited = None if self._ran_at is None else now - self._ran_at
        # A clock that went back counts as time passed: never stall on it.
        if not self._stirred and writes == self._seen and waited is not None and 0 <= waited < self.recheck:
            return False
        # What the query will see includes every write so far; its own writes move the count again.
        self._stirred, self._seen, self._ran_at = False, writes, now
        return True
