"""AckWatch: turns a coordinator that stopped acking into a few log lines an operator sees.

The sender retries an unacked event quietly (DEBUG), which is right for a blip
but hid a real outage: events pile up in the outbox and glance-api's log said
nothing above DEBUG.  The watch is told of every send that got no ack and of
every ack; from that it logs

- one WARNING once no ack has come for ``warn_after`` seconds while an event
  waits (``[proxy] outage_warning_after``);
- one reminder WARNING every ``remind_every`` seconds (5 minutes) while it lasts;
- one INFO when acks resume, saying how long the silence lasted.

Nothing else: no line per attempt.  Time is passed in, so a fake clock tests it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

LOG = logging.getLogger("glance_proxy.sender")

# Between two reminders of one outage: often enough to be seen in a log that is
# tailed, rare enough not to flood it during a long one.
REMIND_EVERY = 300.0


class AckWatch:
    """Outage state of one sender; ``where`` names the coordinator, ``backlog()`` the events waiting."""

    def __init__(
        self,
        warn_after: float,
        where: str,
        backlog: Callable[[], int],
        *,
        remind_every: float = REMIND_EVERY,
    ) -> None:
        self.warn_after = warn_after
        self.remind_every = remind_every
        self.where = where
        self.backlog = backlog
        self.silent_since: float | None = None  # when the first unacked send of this silence began
        self.warned_at: float | None = None  # last WARNING of this silence

    @property
    def warned(self) -> bool:
        return self.warned_at is not None

    def unacked(self, sent_at: float, now: float) -> None:
        """A send that began at ``sent_at`` got no ack (silence, transient error, socket error)."""
        if self.silent_since is None:
            self.silent_since = sent_at
        self.check(now)

    def check(self, now: float) -> None:
        """Log the first WARNING or a reminder when due; called on each round of the sender."""
        if self.silent_since is None:
            return
        silent = now - self.silent_since
        if self.warned_at is None:
            if silent >= self.warn_after:
                self.warned_at = now
                LOG.warning(
                    "glance-sync: no ack from the coordinator at %s for %.0f s; %d event(s) wait in the "
                    "outbox and are sent when it answers (image requests are served as usual)",
                    self.where, silent, self.backlog(),
                )  # fmt: skip
        elif now - self.warned_at >= self.remind_every:
            self.warned_at = now
            LOG.warning(
                "glance-sync: still no ack from the coordinator at %s after %.0f s; %d event(s) wait in the outbox",
                self.where, silent, self.backlog(),
            )  # fmt: skip

    def acked(self, now: float) -> None:
        """The coordinator answered an event: the silence, if any, is over."""
        if self.warned_at is not None and self.silent_since is not None:
            LOG.info(
                "glance-sync: the coordinator at %s acks events again after %.0f s of silence; "
                "%d event(s) left to send",
                self.where, now - self.silent_since, self.backlog(),
            )  # fmt: skip
        self.silent_since = None
        self.warned_at = None
