"""The coordinator loop's clock: wall-clock seconds that never jump.

Leases, retries and liveness are stored as wall-clock times (they must mean something
after a restart), so the loop runs on the wall clock of its start plus monotonic
progress, and only warns when the wall clock moves away from it.
"""

from __future__ import annotations

import logging
import time

LOG = logging.getLogger(__name__)


class SteadyClock:
    """Wall-clock seconds that never jump: the start's wall time plus monotonic progress.

    Leases, retries and liveness are stored as wall-clock times (they must mean
    something after a restart), but an NTP step or a resumed VM would lapse every
    lease at once, or stop heartbeats for as long as the clock went back. The loop
    therefore runs on this clock and only warns when the wall clock moves away from
    it; a restart takes the wall clock again and gives handed-out tasks a new lease.
    """

    WARN_AFTER = 5.0

    def __init__(self) -> None:
        self.base_wall, self.base_mono = time.time(), time.monotonic()
        self.warned = 0.0

    def now(self) -> float:
        steady = self.base_wall + (time.monotonic() - self.base_mono)
        drift = time.time() - steady
        if abs(drift - self.warned) > self.WARN_AFTER:
            self.warned = drift
            LOG.warning("the wall clock moved %+.0f s away from the coordinator's steady clock; "
                        "leases and heartbeats keep the steady clock until the next restart", drift)
        return steady
