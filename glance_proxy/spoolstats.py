"""The outbox's depth for node_exporter's textfile collector: a ``.prom`` file, rewritten now and then.

glance-api has no port of ours to serve ``/metrics`` from, and it runs several workers,
each with a sender; so the senders write a file instead (``[proxy] metrics_textfile``,
in the directory node_exporter's ``--collector.textfile.directory`` reads), every
``WRITE_SECONDS``.  The file describes the whole ``spool_dir`` (every worker's spool and
any orphan), so whichever worker wrote it last wrote the same truth; the write is atomic
(a temporary file renamed over it), so the collector never reads half a file.

Series: ``glancesync_sender_spool_events`` (events waiting for the coordinator's ack),
``glancesync_sender_spool_bytes`` and ``glancesync_sender_oldest_event_age_seconds``
(0 when the outbox is empty): see doc/metrics.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from glance_proxy.spool import SUFFIX

LOG = logging.getLogger(__name__)
# Seconds between two writes: node_exporter is scraped every 15-60 s, and a write lists
# the spool directories (a few entries each while the coordinator acks).
WRITE_SECONDS = 15.0


def spool_depth(spool_dir: str | os.PathLike[str], now: float) -> tuple[int, int, float]:
    """(events, bytes, age of the oldest event in seconds) of every spool under ``spool_dir``."""
    events = size = 0
    oldest: float | None = None
    root = Path(spool_dir)
    for spool in (p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
        try:
            entries = list(os.scandir(spool))
        except OSError:  # adopted and removed meanwhile
            continue
        for entry in entries:
            if not entry.name.endswith(SUFFIX):
                continue
            try:
                stat = entry.stat()
            except OSError:  # acked and removed meanwhile
                continue
            events += 1
            size += stat.st_size
            oldest = stat.st_mtime if oldest is None else min(oldest, stat.st_mtime)
    return events, size, max(0.0, now - oldest) if oldest is not None else 0.0


def write(path: str, spool_dir: str | os.PathLike[str], now: float) -> None:
    """Write the spool's depth to ``path`` (a ``.prom`` file) atomically; ``now`` is wall-clock time."""
    events, size, age = spool_depth(spool_dir, now)
    registry = CollectorRegistry()
    Gauge("glancesync_sender_spool_events", "Image events in glance-api's outbox, not acked by the coordinator.",
          registry=registry).set(events)
    Gauge("glancesync_sender_spool_bytes", "Bytes of the events in glance-api's outbox.", registry=registry).set(size)
    Gauge("glancesync_sender_oldest_event_age_seconds", "Age of the oldest event in glance-api's outbox "
          "(0 when empty).", registry=registry).set(age)
    write_to_textfile(path, registry)


class TextfileWriter:
    """Calls ``write`` at most every WRITE_SECONDS; a failing write is one log line, never an error."""

    def __init__(self, path: str, spool_dir: str | os.PathLike[str]) -> None:
        self.path, self.spool_dir = path, spool_dir
        self._next = 0.0
        self._failing = False

    def maybe_write(self, monotonic_now: float, wall_now: float) -> None:
        if monotonic_now < self._next:
            return
        self._next = monotonic_now + WRITE_SECONDS
        try:
            write(self.path, self.spool_dir, wall_now)
            self._failing = False
        except OSError as exc:
            if not self._failing:
                LOG.error("glance-sync: cannot write the outbox metrics to %s: %s", self.path, exc)
            self._failing = True
