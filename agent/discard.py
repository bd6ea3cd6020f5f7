"""Partial files of cancelled copies: removed once the killed worker has let go of them.

A ``cancel`` with ``discard`` (an operator's ``glance-sync-manage cancel``, or a delete
of the cascading image) ends a copy for good, so its ``<work_dir>/<image_id>.part``
is not kept for a resume.  The worker is killed first; it held the ``.part`` lock
(agent/partlock.py) for its whole life and the kernel drops that lock only when it
is dead, so the file is removed under that same lock, on a later loop step if the
worker is still on its way out.  A new attempt of the same image started here in
the meantime owns the file again: its entry is dropped (``forget``).  An entry that
cannot be removed for ``GIVE_UP_AFTER`` seconds is dropped with one warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from agent import partlock, transfer
from glancesync.exceptions import GlanceSyncError, TransferError

LOG = logging.getLogger(__name__)
GIVE_UP_AFTER = 600.0


@dataclass
class _Pending:
    image_id: str
    path: str
    since: float


class Discards:
    """The ``.part`` files to remove, by image id; ``sweep(now)`` from every loop step."""

    def __init__(self, work_dir: str | None) -> None:
        self.work_dir = work_dir
        self.pending: dict[str, _Pending] = {}

    def add(self, image_id: str, now: float) -> None:
        if not self.work_dir:
            LOG.warning("image %s: cancelled, but this agent knows no work_dir: its partial file stays", image_id)
            return
        try:
            path = transfer.part_path(self.work_dir, image_id)
        except GlanceSyncError as exc:  # not a plain file name: nothing of ours
            LOG.warning("image %s: partial file not removed: %s", image_id, exc)
            return
        self.pending[image_id] = _Pending(image_id, path, now)

    def forget(self, image_id: str) -> None:
        """A new attempt of ``image_id`` runs here: its ``.part`` is its own again."""
        self.pending.pop(image_id, None)

    def sweep(self, now: float) -> None:
        for image_id, entry in list(self.pending.items()):
            try:
                with partlock.hold(entry.path, image_id):
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except TransferError:  # the killed worker still holds the lock: next step
                if now - entry.since > GIVE_UP_AFTER:
                    LOG.warning("image %s: %s still locked %.0f s after its copy was cancelled; left in place",
                                image_id, entry.path, now - entry.since)
                    del self.pending[image_id]
                continue
            except OSError as exc:
                LOG.warning("image %s: cannot remove %s: %s", image_id, entry.path, exc.strerror or exc)
            else:
                LOG.info("image %s: partial file %s of the cancelled copy removed", image_id, entry.path)
            del self.pending[image_id]
