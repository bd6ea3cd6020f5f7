"""Which coordinator of an active/passive pair acts: taking, renewing and losing the leader lease.

With ``[coordinator] pair = True`` (doc/database.md, "The active/passive pair") the
coordinator starts passive: :meth:`Leadership.wait` tries to take the lease in the
journal every ``leader_renew_interval`` and binds nothing meanwhile.  Once it holds
the lease, the journal's fence is set (coordinator/journal/leader.py) and the loop
calls :meth:`Leadership.hold` at the start of every iteration, with the loop's time:
it renews the lease when a renewal is due, in a small transaction of its own, and
says False once the lease is lost: another coordinator took it (the renewal or the
fence found a new generation), or it was not renewed before it expired (the database
unreachable for a whole lease: the passive one may have taken it by now).  The loop
then stops acting at once and the process exits with :data:`LOST_EXIT`.

On PostgreSQL and MariaDB the journal's sessions are bounded (coordinator/journal/leader.py,
"A frozen holder"): a transaction left idle, or a lock wait, ends after ``lease - interval``
seconds, so that a holder frozen mid-transaction with the lease row locked cannot delay the
takeover past its lease's expiry plus one interval.

A clean stop gives the lease back (:meth:`Leadership.release`), so the passive
coordinator takes over within one renew interval instead of one lease.

:attr:`Leadership.view` is what operators see of it (the status summary, the
``glancesync_coordinator_leader*`` series): an immutable :class:`LeaseView`, replaced
whole on every change, so the metrics thread reads it without a lock.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from coordinator.journal import Journal, LeaseLost
from glancesync.exceptions import JournalError

LOG = logging.getLogger(__name__)
# The exit status of a coordinator that lost the lease: not 0, so that systemd's
# Restart=on-failure starts it again, as a passive one.
LOST_EXIT = 3
# Seconds between two reminders that the journal is still unreachable (Outage).
REMIND_SECONDS = 300.0
_UNSEEN = object()  # the lease's row was not read (the journal did not answer)


def holder_id() -> str:
    """This process's name in the lease: host name and a random suffix (a restart is a new holder)."""
    return f"{socket.gethostname()[:200]}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseView:
    """The lease as this coordinator last saw it.

    ``role``: ``passive`` (waiting), ``active`` (holds it and acts), ``lost`` (stopped
    acting) or ``released`` (gave it back on a clean stop).  ``holder``, ``generation``
    and ``expires``: the lease's row as last written (active) or read (passive); None
    before the first read.
    """

    role: str
    me: str
    holder: str | None = None
    generation: int | None = None
    expires: float | None = None

    @property
    def acting(self) -> bool:
        return self.role == "active"

    def status(self) -> dict[str, Any]:
        """The ``coordinator.lease`` of a status summary (doc/status.md)."""
        return {"holder": self.holder, "generation": self.generation, "expires": self.expires}


class Outage:
    """The passive coordinator's view of an unreachable journal, logged by its edges.

    One warning when the tries start failing, one line when the journal answers again,
    and in between a reminder at most every ``remind`` seconds: a passive coordinator
    tries every few seconds, and a database down for an hour must not fill the log.
    """

    def __init__(self, remind: float = REMIND_SECONDS) -> None:
        self.remind = remind
        self.since: float | None = None
        self._told = 0.0

    def failed(self, now: float, exc: Exception) -> None:
        if self.since is None:
            self.since = self._told = now
            LOG.warning("passive: cannot reach the journal to try for the leader lease (%s); "
                        "trying again quietly, reminding every %g s", exc, self.remind)
        elif now - self._told >= self.remind:
            self._told = now
            LOG.warning("passive: the journal is still unreachable after %.0f s (%s)", now - self.since, exc)

    def recovered(self, now: float) -> None:
        if self.since is not None:
            LOG.info("passive: the journal answers again after %.0f s unreachable", now - self.since)
            self.since = None


class Leadership:
    """The leader lease as this coordinator sees it; ``journal`` is the one the loop writes through."""

    def __init__(self, journal: Journal, lease: float, interval: float, holder: str | None = None) -> None:
        if interval > lease / 2:
            raise ValueError(f"leader_renew_interval ({interval:g} s) must be at most half of "
                             f"leader_lease_time ({lease:g} s)")
        self.journal = journal
        self.lease = lease
        self.interval = interval
        self.holder = holder or holder_id()
        self.generation: int | None = None
        # The expiry of the lease as last written by us, on the loop's clock.
        self.expires = 0.0
        self.renewed_at = 0.0
        self._next_renewal = 0.0
        self.lost: str | None = None
        self.view = LeaseView("passive", self.holder)
        self._outage = Outage()
        bounds = journal.bound_sessions(lease - interval)
        if bounds:
            LOG.info("journal sessions bounded for the pair: %s", "; ".join(bounds))

    @property
    def held(self) -> bool:
        return self.generation is not None and self.lost is None

    def try_take(self, now: float) -> bool:
        """One try to take the lease; True when this coordinator holds it now."""
        try:
            generation = self.journal.take_leader(self.holder, now, self.lease)
        except JournalError as exc:
            self._outage.failed(now, exc)
            return False
        self._outage.recovered(now)
        if generation is None:
            return False
        self.generation, self.expires, self.renewed_at, self.lost = generation, now + self.lease, now, None
        self._next_renewal = now + self.interval
        self.journal.fence_with(self.holder, generation)
        self.view = LeaseView("active", self.holder, self.holder, generation, self.expires)
        LOG.info("leader lease taken by %s (generation %d): this coordinator is active", self.holder, generation)
        return True

    def wait(self, stop: threading.Event, now: Callable[[], float]) -> bool:
        """Passive: try to take the lease every ``interval`` until it is ours (True) or ``stop`` is set."""
        shown: str | None = None
        while not stop.is_set():
            at = now()
            if self.try_take(at):
                return True
            try:
                row = self.journal.leader_row()
            except JournalError as exc:
                self._outage.failed(at, exc)
                row = _UNSEEN
            if row is not _UNSEEN:
                shown = self._seen(row, shown)
            stop.wait(self.interval)
        return False

    def _seen(self, row: tuple[str | None, float, int] | None, shown: str | None) -> str | None:
        """Keep the lease's row for the view; one line per holder seen, not one per try."""
        holder = row[0] if row else None
        if row is not None:
            self.view = LeaseView("passive", self.holder, holder, row[2], row[1])
        if holder != shown:
            LOG.info("passive: the leader lease is held by %s (generation %s); trying to take it every %g s",
                     holder, row[2] if row else "?", self.interval)
        return holder

    def hold(self, now: float) -> bool:
        """Active: renew the lease when due; False once it is lost (then stop acting at once)."""
        if self.lost is not None:
            return False
        if self.journal.fence_broken is not None:
            return self._lose(self.journal.fence_broken)
        if now >= self.expires:
            return self._lose(f"not renewed before it expired ({now - self.renewed_at:.1f} s since the last renewal)")
        if now < self._next_renewal:
            return True
        try:
            renewed = self.journal.renew_leader(self.holder, self.generation, now, self.lease)
        except LeaseLost as exc:
            return self._lose(str(exc))
        except JournalError as exc:
            # Tried again soon: one failure must not cost the lease while it has time left.
            self._next_renewal = now + min(1.0, self.interval)
            LOG.warning("leader lease not renewed (%s); it expires in %.1f s", exc, self.expires - now)
            return True
        if not renewed:
            return self._lose("another coordinator took it")
        self.expires, self.renewed_at, self._next_renewal = now + self.lease, now, now + self.interval
        self.view = replace(self.view, expires=self.expires)
        return True

    def _lose(self, why: str) -> bool:
        self.lost = why
        self.view = replace(self.view, role="lost")
        LOG.error("leader lease lost (%s): this coordinator stops acting now", why)
        return False

    def release(self) -> None:
        """Give the lease back on a clean stop, if still ours."""
        if not self.held:
            return
        try:
            if self.journal.release_leader(self.holder, self.generation):
                LOG.info("leader lease released by %s (generation %d)", self.holder, self.generation)
        except JournalError as exc:
            LOG.warning("leader lease not released (%s): the other coordinator takes over once it expires", exc)
        self.generation = None
        self.view = replace(self.view, role="released", holder=None)
