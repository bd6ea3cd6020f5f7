"""The event outbox on disk: one fsync'd file per event, in order, bounded in size.

Each process (a glance-api worker, a proxy worker) owns ``<spool_dir>/<pid>/``.  An
event is written to ``.tmp-<seq>``, fsync'd, renamed to ``<seq>.evt`` and the
directory fsync'd, so after a crash a file is either whole or absent.  Names are a
zero-padded sequence number, so sorting the names gives the order events happened.
A file is removed only once the coordinator has acknowledged its event.

A worker that dies leaves its directory behind; the next sender to start in any
worker *adopts* it (moves its files into its own directory, keeping their order,
ahead of anything newer) so no event is lost to a worker restart.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

LOG = logging.getLogger(__name__)

SUFFIX = ".evt"
_TMP_PREFIX = ".tmp-"
_SEQ_WIDTH = 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Someone else's live process: not ours to adopt.
        return True
    return True


class SpoolFull(Exception):
    """The outbox holds ``max_bytes`` already."""


class Spool:
    """The outbox directory of one process."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int, pid: int | None = None) -> None:
        self.root = Path(root)
        self.pid = os.getpid() if pid is None else pid
        self.dir = self.root / str(self.pid)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(_TMP_PREFIX + "*"):
            # A temp file is an event whose write never completed: it was never spooled.
            stale.unlink(missing_ok=True)
        files = self.pending()
        self._next_seq = self._seq(files[-1]) + 1 if files else 1
        self._bytes = sum(self._size(f) for f in files)

    @staticmethod
    def _seq(path: Path) -> int:
        return int(path.name[: -len(SUFFIX)])

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def _name(self, seq: int) -> Path:
        return self.dir / f"{seq:0{_SEQ_WIDTH}d}{SUFFIX}"

    def put(self, data: bytes) -> Path:
        """Write one event durably; raises SpoolFull when it would exceed ``max_bytes``."""
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"{self.dir} holds {self._bytes} bytes, limit {self.max_bytes}")
            seq = self._next_seq
            self._next_seq += 1
        tmp = self.dir / f"{_TMP_PREFIX}{seq}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        final = self._name(seq)
        os.rename(tmp, final)
        _fsync_dir(self.dir)
        with self._lock:
            self._bytes += len(data)
        return final

    def pending(self) -> list[Path]:
        """Spooled event files, oldest first."""
        return sorted(p for p in self.dir.iterdir() if p.name.endswith(SUFFIX) and p.name[0] != ".")

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def remove(self, path: Path) -> None:
        size = self._size(path)
        path.unlink(missing_ok=True)
        with self._lock:
            self._bytes = max(0, self._bytes - size)

    def adopt_orphans(self) -> int:
        """Move the files of dead processes' directories into ours; returns how many."""
        adopted = 0
        for other in sorted(self.root.iterdir()):
            if not other.is_dir() or not other.name.isdigit() or other == self.dir:
                continue
            if _pid_alive(int(other.name)):
                continue
            adopted += self._adopt(other)
        return adopted

    def _adopt(self, other: Path) -> int:
        moved = 0
        for src in sorted(p for p in other.iterdir() if p.name.endswith(SUFFIX)):
            with self._lock:
                seq = self._next_seq
                self._next_seq += 1
            size = self._size(src)
            try:
                os.rename(src, self._name(seq))
            except FileNotFoundError:
                continue  # another worker adopted it first
            with self._lock:
                self._bytes += size
            moved += 1
        if moved:
            _fsync_dir(self.dir)
            LOG.info("adopted %d spooled event(s) of dead process %s from %s", moved, other.name, other)
        for leftover in other.glob(_TMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)
        try:
            other.rmdir()
        except OSError:
            pass  # not empty yet (a concurrent adopter) or gone already
        return moved
