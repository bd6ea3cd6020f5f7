"""One writer per ``.part`` file: an exclusive flock that an attempt holds for its whole life.

A copy attempt writes ``<work_dir>/<image_id>.part`` while fetching and reads it
while uploading; a delete removes it.  Two attempts on one file (a worker still
finishing while the restarted agent starts the same image again) would interleave
their writes, so every attempt first takes ``<image_id>.part.lock`` with
``flock(LOCK_EX | LOCK_NB)`` and keeps it until it is over.  An attempt that cannot
take it fails at once, retryable, and never touches the ``.part``.

The kernel drops the lock when its holder dies, however it dies (``kill -9``
included), so a lock is never stale.  A ``.part`` found by the holder is therefore
left by an attempt that is over: the fetch resumes from it only after hashing again
what is there (agent/transfer.py), and the upload hashes every byte it sends.

The lock file is removed by its holder while still locked; whoever opened the old
file meanwhile finds, once it gets the lock, that the name points elsewhere (or
nowhere) and opens it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from glancesync.exceptions import TransferError

LOCK_SUFFIX = ".lock"
# Opening again after losing the race with a holder that removed the file: each
# loss means another attempt got the lock and released it; a few are plenty.
_OPEN_TRIES = 5


def lock_path(part: str) -> str:
    return part + LOCK_SUFFIX


def _busy(part: str, image_id: str) -> TransferError:
    return TransferError(image_id=image_id, detail=f"another attempt still writes {part}", retryable=True)


def _acquire(part: str, image_id: str) -> int:
    path = lock_path(part)
    for _ in range(_OPEN_TRIES):
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise TransferError(image_id=image_id, detail=f"cannot open lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(part, image_id) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder we waited behind removed this file: lock the current one
    raise _busy(part, image_id)


@contextlib.contextmanager
def hold(part: str, image_id: str) -> Iterator[None]:
    """Hold the lock of ``part`` for the ``with`` block; TransferError (retryable) when another attempt has it."""
    fd = _acquire(part, image_id)
    try:
        yield
    finally:
        try:
            os.unlink(lock_path(part))
        except OSError:
            pass
        os.close(fd)
