"""Journal, progress reports: checked against the current attempt, kept in memory, written every few seconds.

A ``progress`` report only moves a figure (bytes done of bytes total) that ``done``
brings up to date anyway, so it is noted in memory (the status view shows it at
once) and ``flush_progress`` writes every noted figure in one transaction, which the
loop runs every few seconds and at shutdown.  A crash loses at most those seconds.
"""

from __future__ import annotations

from coordinator.journal.base import LIVE_TASK_STATES, byte_count
from coordinator.journal.engine import retry_on_deadlock
from coordinator.schema import image_regions, tasks
from glancesync.states import SyncState

S = SyncState


class ProgressMixin:
    """Progress of running tasks; uses ``TaskStateMixin._current`` of the same journal."""

    @retry_on_deadlock
    def progress(self, task_id: str, attempt: int, bytes_done: int, bytes_total: int, now: float) -> None:
        """Note a progress report of the current attempt; written by ``flush_progress``, shown at once.

        Progress is a hint (``done`` brings the final count): keeping it in memory
        saves a write per report, and losing the last few seconds of it in a crash
        costs nothing but a stale figure until the next report.
        """
        bytes_done, bytes_total = byte_count("bytes_done", bytes_done), byte_count("bytes_total", bytes_total)
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED, S.TRANSFERRING])
        self._progress[task_id] = (attempt, task.image_id, task.region, bytes_done, bytes_total, now)

    def flush_progress(self) -> int:
        """Write the progress noted since the last flush (one transaction); how many tasks it touched."""
        pending, self._progress = self._progress, {}
        written = 0
        try:
            with self.transaction() as conn:
                for task_id, (attempt, image_id, region, done, total, at) in pending.items():
                    if not conn.execute(tasks.update().where(
                            tasks.c.task_id == task_id, tasks.c.attempt == attempt, tasks.c.state.in_(LIVE_TASK_STATES),
                    ).values(bytes_done=done, bytes_total=total, updated_at=at)).rowcount:
                        continue
                    conn.execute(image_regions.update().where(
                        image_regions.c.image_id == image_id, image_regions.c.region == region,
                        image_regions.c.task_id == task_id).values(bytes_done=done, bytes_total=total,
                                                                   updated_at=at))
                    written += 1
        except BaseException:
            self._progress = {**pending, **self._progress}  # kept for the next flush
            raise
        return written

