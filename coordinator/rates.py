"""Phase, transfer rate and ETA of each running task, from the agents' successive progress reports.

Kept in memory only: a restarted coordinator shows no rate until two new reports
of a task have come (a few seconds).  Per task attempt, the samples of the last
``WINDOW`` seconds of its current phase give the rate; a new phase, a new attempt
or bytes going backwards start afresh, since their bytes count something else
(agent/pipeline.py: fetched, then uploaded bytes).  A task with no report for
``STALE`` seconds has no current rate (a stall shows as no rate and no ETA, not
as the last speed it had).  Tasks not heard of for ``FORGET`` seconds are
dropped, so the memory is bounded by the transfers running now.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Seconds of samples a rate is computed over: long enough to smooth the 1 s reports
# of a busy agent, short enough to follow a link that slows down.
WINDOW = 30.0
STALE = 15.0
FORGET = 600.0


@dataclass
class _Track:
    attempt: int
    phase: str | None
    total: int
    samples: deque[tuple[float, int]] = field(default_factory=deque)


class Rates:
    """``record`` each progress report; ``view`` gives a task's phase, rate and ETA."""

    def __init__(self) -> None:
        self._tracks: dict[str, _Track] = {}
        self._pruned_at = 0.0

    def record(self, task_id: str, attempt: int, phase: str | None, done: int, total: int, now: float) -> None:
        track = self._tracks.get(task_id)
        if (track is None or track.attempt != attempt or track.phase != phase
                or (track.samples and done < track.samples[-1][1])):
            track = self._tracks[task_id] = _Track(attempt, phase, total)
        track.total = total
        track.samples.append((now, done))
        while len(track.samples) > 2 and now - track.samples[1][0] >= WINDOW:
            track.samples.popleft()
        self._prune(now)

    def forget(self, task_id: str) -> None:
        self._tracks.pop(task_id, None)

    def view(self, task_id: str | None, attempt: int | None, now: float) -> dict[str, Any] | None:
        """``{"phase", "bytes_done", "rate_bytes_per_s", "eta_seconds"}`` of the attempt, or None if unheard of."""
        track = self._tracks.get(task_id) if task_id else None
        if track is None or (attempt is not None and track.attempt != attempt) or not track.samples:
            return None
        (first_at, first), (last_at, last) = track.samples[0], track.samples[-1]
        rate = eta = None
        if now - last_at < STALE and last_at > first_at:
            rate = max(0.0, (last - first) / (last_at - first_at))
            if rate > 0:
                # Counted from the last report, not from now: between reports it holds still.
                eta = max(0.0, (track.total - last) / rate - (now - last_at))
        return {"phase": track.phase, "bytes_done": last, "rate_bytes_per_s": rate, "eta_seconds": eta}

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < FORGET / 10:
            return
        self._pruned_at = now
        for task_id in [t for t, track in self._tracks.items() if now - track.samples[-1][0] > FORGET]:
            del self._tracks[task_id]
