"""The upload body that follows a ``.part`` while the fetch still writes it, and holds back its last piece.

The fetch (agent/transfer.py) and the upload to the region's glance run at the
same time (agent/pipeline.py): :class:`Arrival` is what the fetch tells the
upload (bytes landed, the fetch verified, or the fetch failed), and
:class:`FollowingBody` is the file-like object python-glanceclient reads the
request body from.  It reads the ``.part`` from byte 0 (a prefix that an earlier
attempt left is sent too), hashes exactly the pieces it hands out (md5 and the
image's algorithm, one pass), and waits when it has caught up with the writer.

The piece that completes the image's size never leaves before three things hold
(doc/verification.md): the fetch is over and verified the stream, the file ends
at that size, and glancesync.verify accepts the size and both hashes of what was
read.  Otherwise ``read`` raises and the request is aborted before its last
byte: glance puts the image back to ``queued`` and never makes it active.
``read`` also raises when the fetch failed, when no new byte came for
``idle_timeout`` seconds (``transfer_idle_timeout``), and once the upload is
cancelled, so an abandoned upload can never complete later.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from glancesync import verify as check
from glancesync.exceptions import TransferError, VerificationError

# Pieces handed to glance while uploading: gunicorn's chunked reader copies its
# buffer per 64 KiB read, and 64 KiB chunks cut glance's CPU by about a quarter
# against glanceclient's 1 MiB (doc/glance-behaviour.md).
UPLOAD_PIECE = 64 * 1024
# Longest wait for news from the fetch between two looks at the file: the fetch
# wakes the reader on every block, so this only bounds a missed wake-up.
WAIT_SECONDS = 0.2


class Aborted(TransferError):
    """The upload stops before its last byte because the other side of the copy ended."""

    def __init__(self, image_id: str, detail: str) -> None:
        super().__init__(image_id=image_id, detail=detail, retryable=True)


class Arrival:
    """How the fetch of a ``.part`` is going, told to the upload that follows it (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.digest: check.Digest | None = None
        self.error: BaseException | None = None
        self._news = 0

    @classmethod
    def complete(cls, digest: check.Digest) -> Arrival:
        """The arrival of a file fetched and verified before the upload started."""
        arrival = cls()
        arrival.finished(digest)
        return arrival

    def landed(self) -> None:
        """More bytes are in the file."""
        with self._cond:
            self._news += 1
            self._cond.notify_all()

    def finished(self, digest: check.Digest) -> None:
        """The fetch is over and its bytes verified as ``digest``."""
        with self._cond:
            self.digest = digest
            self._cond.notify_all()

    def failed(self, error: BaseException) -> None:
        with self._cond:
            self.error = error
            self._cond.notify_all()

    @property
    def over(self) -> bool:
        return self.digest is not None or self.error is not None

    @property
    def news(self) -> int:
        """A count that grows whenever the fetch has something to tell."""
        return self._news

    def wait(self, seen: int, timeout: float) -> int:
        """Wait until news after ``seen`` (a value this returned) or ``timeout``; the news count now."""
        with self._cond:
            if self._news == seen and not self.over:
                self._cond.wait(timeout)
            return self._news

    def result(self, timeout: float) -> check.Digest | None:
        """The fetch's digest once it is over (None if it failed), waiting at most ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self.over, timeout)
            return self.digest


def hashers(algos: Iterable[str], image_id: str) -> dict[str, Any]:
    try:
        return {algo: hashlib.new(algo) for algo in algos}
    except ValueError as exc:
        raise VerificationError(image_id=image_id, detail=f"unsupported hashing algorithm: {exc}",
                                retryable=False) from None


class FollowingBody:
    """The upload body: the ``.part`` in pieces, following the fetch, the last piece held back.

    ``digest`` is set once the last piece passed; ``sent`` counts the bytes handed
    to glance; ``handed_at`` is the clock when the body last handed glance a piece
    (or was made), None while a ``read`` runs: from then on glance owes the next call.
    """

    def __init__(self, handle: Any, expected: check.Digest, algos: Iterable[str], image_id: str,
                 arrival: Arrival, idle_timeout: float = 300.0, progress: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.handle = handle
        self.expected = expected
        self.image_id = image_id
        self.arrival = arrival
        self.idle_timeout = idle_timeout
        self.progress = progress
        self.clock = clock
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.hashers = hashers(algos, image_id)
        self.sent = 0
        self.digest: check.Digest | None = None
        self.cancelled: str | None = None
        self.handed_at: float | None = clock()

    def cancel(self, why: str) -> None:
        """Every later ``read`` raises: the request can no longer complete."""
        self.cancelled = why
        self.arrival.landed()  # wakes a read waiting for bytes

    def read(self, _size: int = -1) -> bytes:
        self.handed_at = None  # waiting for the fetch is not glance's stall
        if self.digest is not None:
            return b""
        want = (self.expected.size or 0) - self.sent
        piece, last = self._next_piece(want) if want > 0 else (b"", True)
        for hasher in (self.md5, *self.hashers.values()):
            hasher.update(piece)
        if last:
            self._check(self.sent + len(piece), longer=bool(self._read(1)))
        self.sent += len(piece)
        if self.progress is not None:
            self.progress(self.sent)
        self.handed_at = self.clock()
        return piece

    def _read(self, size: int) -> bytes:
        try:
            return self.handle.read(size)
        except OSError as exc:
            raise TransferError(image_id=self.image_id, detail=f"cannot read {self.handle.name}: {exc.strerror}",
                                retryable=True) from None

    def _next_piece(self, want: int) -> tuple[bytes, bool]:
        """(piece, last): one UPLOAD_PIECE (or what is left) of the file, waiting for the fetch when caught up.

        ``last``: the piece completes the image's size (returned only once the fetch
        is over), or the fetch is over and the file ends short of that size.
        """
        target = min(UPLOAD_PIECE, want)
        got = b""
        news = self.arrival.news
        idle_since = self.clock()
        while True:
            self._raise_if_ended()
            over = self.arrival.over  # asked before reading: all the fetch wrote before it ended is read below
            got += self._read(target - len(got))
            if len(got) == target and (target < want or over):
                return got, target == want
            if over:
                return got, True  # the file ends short of the image: the check says so
            # Caught up with the fetch (a partial piece waits to be whole: glance's CPU goes
            # per chunk), or holding the last piece until the fetch is over.
            if self.clock() - idle_since >= self.idle_timeout:
                raise TransferError(image_id=self.image_id, retryable=True,
                                    detail=f"upload of {self.handle.name}: no new byte for "
                                    f"{self.idle_timeout:g} s (transfer_idle_timeout)")
            before, news = news, self.arrival.wait(news, WAIT_SECONDS)
            if news != before:
                idle_since = self.clock()

    def _raise_if_ended(self) -> None:
        if self.cancelled:
            raise Aborted(self.image_id, f"upload cancelled: {self.cancelled}")
        error = self.arrival.error
        if error is not None:
            raise Aborted(self.image_id, f"the fetch failed ({error})")

    def _check(self, read: int, longer: bool) -> None:
        """Verify everything read before the last piece leaves; the file's real size when it is not ``read``."""
        self._raise_if_ended()
        short = read < (self.expected.size or 0)
        size = os.fstat(self.handle.fileno()).st_size if short or longer else read
        digest = check.Digest("bytes being uploaded", size, self.md5.hexdigest(),
                              {algo: h.hexdigest() for algo, h in self.hashers.items()})
        check.verify(self.expected, digest, image_id=self.image_id, mismatch_retryable=True)
        if short or longer:  # same size on disk but the file changed under us: never send it
            raise VerificationError(image_id=self.image_id, retryable=True,
                                    detail=f"{self.handle.name} changed size while it was uploaded")
        self.digest = digest
