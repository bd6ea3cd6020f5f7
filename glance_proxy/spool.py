"""The event outbox on disk: one fsync'd file per event, in order, bounded in size.

Layout of ``spool_dir`` (doc/outbox.md)::

    spool_dir/.usage            bytes of every event file below, shared by all workers
    spool_dir/<pid>-<random>/   one directory per sender (a glance-api or proxy worker)
        00000000000000000001.evt

A sender holds an exclusive ``flock`` on its directory for its whole life: the
lock, not a PID, says the directory is in use (PIDs are reused, after a reboot
above all).  A directory whose lock can be taken belongs to nobody: a live sender
*adopts* it (non-blocking lock, so exactly one does), replays its events in order
and then removes it.  The kernel drops the lock when its holder dies, however it
dies.

An event is written to ``.tmp-<seq>``, fsync'd, renamed to ``<seq>.evt`` and the
directory fsync'd, so after a crash a file is either whole or absent.  Names are a
zero-padded sequence number: their order is the order the events happened.  The
directory is listed once, when a spool is adopted; from then on an in-memory index
(sequence -> size) says what is pending, so sending never lists the directory.

``spool_max_bytes`` bounds the whole ``spool_dir``, across workers: every event file
appears (rename) and disappears (unlink) under the ``flock`` of ``.usage``, which
holds the total as one 8-byte integer.  Each sender recounts it from the files when
it starts, which mends what a crash between rename and update left behind.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import re
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

LOG = logging.getLogger(__name__)

SUFFIX = ".evt"
USAGE_FILE = ".usage"
_TMP_PREFIX = ".tmp-"
_SEQ_WIDTH = 20
_EVENT_NAME = re.compile(r"^(\d+)" + re.escape(SUFFIX) + "$")
_COUNTER = struct.Struct("<Q")
# A fresh directory can be adopted (as empty) and removed by another worker in the
# instant between its creation and our lock: then we simply make another.
_CREATE_ATTEMPTS = 10

# Every descriptor that holds a lock, so that a child forked without exec (which
# shares them) can close its copies and never keep a dead parent's spool "alive".
_OPEN_FDS: weakref.WeakSet[_Locked] = weakref.WeakSet()


class SpoolFull(Exception):
    """The outbox (the whole spool_dir) holds ``max_bytes`` already."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Locked:
    """A descriptor this process may hold a flock through."""

    fd: int = -1

    def _register(self, fd: int) -> None:
        self.fd = fd
        _OPEN_FDS.add(self)

    def _release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


def _close_in_child() -> None:
    for holder in list(_OPEN_FDS):
        with contextlib.suppress(OSError):
            holder._release()


os.register_at_fork(after_in_child=_close_in_child)


def _lock_dir(path: Path) -> int | None:
    """A descriptor of ``path`` holding its exclusive flock, or None when someone holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    # Its last holder may have removed it between our open and our lock.
    try:
        here, held = os.stat(path), os.fstat(fd)
        same = (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


class SharedUsage(_Locked):
    """The byte count of every event file under ``root``, shared by all workers through ``.usage``."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._register(os.open(self.root / USAGE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        # flock is per open file: threads of one process must also exclude each other.
        self._mutex = threading.Lock()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        with self._mutex:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _get(self) -> int:
        raw = os.pread(self.fd, _COUNTER.size, 0)
        return _COUNTER.unpack(raw)[0] if len(raw) == _COUNTER.size else 0

    def _set(self, value: int) -> None:
        os.pwrite(self.fd, _COUNTER.pack(max(0, value)), 0)

    @property
    def used(self) -> int:
        with self._held():
            return self._get()

    def admit(self, size: int, appear: Callable[[], None]) -> None:
        """Run ``appear`` (which makes ``size`` bytes of events appear) if they fit; else SpoolFull."""
        with self._held():
            used = self._get()
            if used + size > self.max_bytes:
                raise SpoolFull(f"{self.root} holds {used} bytes, limit {self.max_bytes}")
            appear()
            self._set(used + size)

    def release(self, size: int, disappear: Callable[[], None]) -> None:
        """Run ``disappear`` (which removes ``size`` bytes of events) and count them out."""
        with self._held():
            disappear()
            self._set(self._get() - size)

    def recount(self) -> int:
        """Sum the event files of every spool under ``root`` (one walk) and store the total."""
        with self._held():
            total = 0
            for sub in os.scandir(self.root):
                if sub.name.startswith(".") or not sub.is_dir(follow_symlinks=False):
                    continue
                for _, size in _scan_events(Path(sub.path)):
                    total += size
            self._set(total)
            return total

    def close(self) -> None:
        self._release()


def _scan_events(path: Path) -> list[tuple[int, int]]:
    """(sequence, size) of the event files in ``path``, oldest first."""
    found = []
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _EVENT_NAME.match(entry.name)
        if match is None:
            continue
        try:
            found.append((int(match.group(1)), entry.stat(follow_symlinks=False).st_size))
        except FileNotFoundError:
            continue
    found.sort()
    return found


class Spool(_Locked):
    """One locked spool directory and its in-memory index, oldest event first.

    Built by ``create`` (a fresh directory for this sender) or ``adopt`` (a directory
    nobody holds).  ``put`` appends; ``first``/``read``/``remove`` serve the sender.
    """

    def __init__(self, path: Path, fd: int, usage: SharedUsage, index: list[tuple[int, int]]) -> None:
        self.dir = path
        self.usage = usage
        self._register(fd)
        self._index: collections.OrderedDict[int, int] = collections.OrderedDict(index)
        self._bytes = sum(self._index.values())
        self._next_seq = (index[-1][0] + 1) if index else 1
        self._forgotten: list[tuple[int, int]] = []  # (seq, size) whose files ``purge`` removes
        self._mutex = threading.Lock()  # the index
        self._put_lock = threading.Lock()  # puts in sequence order

    @classmethod
    def create(cls, root: str | os.PathLike[str], usage: SharedUsage) -> Spool:
        """A new, empty spool directory under ``root``, locked for this process's life."""
        for _ in range(_CREATE_ATTEMPTS):
            path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
            fd = _lock_dir(path)
            if fd is not None:
                return cls(path, fd, usage, [])
        raise OSError(f"cannot lock a spool directory under {root}")

    @classmethod
    def adopt(cls, path: Path, usage: SharedUsage) -> Spool | None:
        """The spool at ``path`` if nobody holds it (its owner died); None otherwise."""
        fd = _lock_dir(path)
        if fd is None:
            return None
        try:
            for leftover in path.glob(_TMP_PREFIX + "*"):
                # An event whose write never completed: it was never spooled.
                leftover.unlink(missing_ok=True)
            return cls(path, fd, usage, _scan_events(path))
        except BaseException:
            os.close(fd)
            raise

    def __len__(self) -> int:
        return len(self._index)

    @property
    def used_bytes(self) -> int:
        """Bytes of this directory's events (the cap counts the whole spool_dir: ``usage.used``)."""
        return self._bytes

    def _name(self, seq: int) -> Path:
        return self.dir / f"{seq:0{_SEQ_WIDTH}d}{SUFFIX}"

    def put(self, data: bytes) -> int:
        """Write one event durably and return its sequence; SpoolFull when the spool_dir is full."""
        with self._put_lock:
            seq = self._next_seq
            self._next_seq += 1
            tmp = self.dir / f"{_TMP_PREFIX}{seq}"
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                self.usage.admit(len(data), lambda: os.rename(tmp, self._name(seq)))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(self.dir)
            with self._mutex:
                self._index[seq] = len(data)
                self._bytes += len(data)
        return seq

    def first(self) -> int | None:
        """The sequence of the oldest pending event, or None."""
        with self._mutex:
            return next(iter(self._index), None)

    def oldest(self, count: int, after: int = 0) -> list[int]:
        """The sequences of the ``count`` oldest pending events above ``after``, oldest first."""
        with self._mutex:
            return list(itertools.islice(itertools.dropwhile(lambda seq: seq <= after, self._index), count))

    def read(self, seq: int) -> bytes:
        return self._name(seq).read_bytes()

    def remove(self, seq: int) -> None:
        """Forget an event (acknowledged, or unsendable); its bytes leave the shared count."""
        with self._mutex:
            size = self._index.pop(seq, None)
            if size is None:
                return
            self._bytes -= size
        self.usage.release(size, lambda: self._name(seq).unlink(missing_ok=True))

    def forget(self, seq: int) -> None:
        """Take an event off the pending index now; its file goes at the next ``purge``.

        The sender forgets each event as its ack comes and purges once no event is in
        flight, so that unlinks do not contend with the coordinator's commits for the
        disk.  A crash in between leaves the file: the event is sent again and the
        coordinator, which knows its id, acks it again.
        """
        with self._mutex:
            size = self._index.pop(seq, None)
            if size is not None:
                self._bytes -= size
                self._forgotten.append((seq, size))

    def purge(self) -> None:
        """Remove the files of the forgotten events (one update of the shared count)."""
        with self._mutex:
            gone, self._forgotten = self._forgotten, []
        if gone:
            def disappear() -> None:
                for seq, _size in gone:
                    self._name(seq).unlink(missing_ok=True)

            self.usage.release(sum(size for _seq, size in gone), disappear)

    def pending(self) -> list[Path]:
        """Paths of the pending events, oldest first (from the index: for tests and tools)."""
        with self._mutex:
            return [self._name(seq) for seq in self._index]

    def close(self) -> None:
        """Let go of the directory: removed when empty, else left for another worker to adopt."""
        if self.fd < 0:
            return
        self.purge()
        if not self._index:
            with contextlib.suppress(OSError):
                for leftover in self.dir.glob(_TMP_PREFIX + "*"):
                    leftover.unlink(missing_ok=True)
                self.dir.rmdir()  # while still locked: nobody adopts it half-removed
        self._release()
