"""One copy attempt with the fetch and the regional upload overlapped.

The fetch (agent/transfer.py, or agent/download.py for a snapshot read from its
region's glance API) runs in the worker's own thread, as before; once
its bytes are on their way (``on_start``: after ``sftp`` was forked, or paramiko
opened the file), a second thread creates the image in the region's glance and
uploads the ``.part`` while it grows (agent/upload.py with the body of
agent/stream.py).  The upload holds back its last piece until the fetch is over
and verified, and the bytes it read verify too (glancesync.verify): a corrupt
source is never made active.  A region therefore gets the image about when the
last byte arrives, not one whole upload later.

Either side ending badly ends the other: a failed fetch aborts the upload before
its last byte (glance puts the image back to ``queued``), and a failed upload
stops the fetch at its next block; the attempt then fails with the first side's
reason.  No new byte for ``transfer_idle_timeout`` ends it on both sides: the
fetch's own watch, the upload waiting for the fetch, and glance taking no piece
of the body (the upload is then cancelled, so it can never complete later).

Phases, reported through ``phase(name)`` before the bytes: ``fetching`` (bytes
fetched; the upload follows), ``uploading`` (the fetch is over; bytes uploaded),
``registering`` (glance has every byte; its record is read back and checked).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent import download, stream, transfer, upload
from agent import sources as peers
from glancesync import verify as check
from glancesync.exceptions import TransferError
from glancesync.storemap import GlanceEndpoint, SshStore

LOG = logging.getLogger(__name__)

# How often the worker's thread looks at a running upload while it waits for it.
WATCH_SECONDS = 0.5

FETCHING, UPLOADING, REGISTERING = "fetching", "uploading", "registering"


@dataclass(frozen=True)
class Copy:
    """What one attempt copies, from where, to where."""

    store: SshStore | None
    image: dict[str, Any]
    source: str | None
    dest: str
    client: Any
    endpoint: str
    fetch: transfer.FetchOptions
    ssh_timeout: float
    # A snapshot read from the glance API of the region that made it (agent/download.py)
    # instead of over SFTP: that region's download account, and its name.
    download: GlanceEndpoint | None = None
    source_region: str | None = None
    # Every source to try in order (agent/sources.py); empty: ``store`` and ``source`` only.
    sources: tuple[peers.Source, ...] = ()
    # Told the name of the source that served the bytes.
    served_by: Callable[[str], None] | None = None
    # What becomes of the verified file once the region has the image (default: removed).
    retire: Callable[[str], None] | None = None
    # Told the ``.part`` once its bytes are on their way (again after each source): the
    # cache relays it to the regions that follow this copy (agent/cache.py).
    relay: Callable[[str], None] | None = None

    def source_list(self) -> list[peers.Source]:
        if self.sources:
            return list(self.sources)
        return [peers.Source(self.source_region or peers.SOURCE_STORE, self.store, self.source)]  # type: ignore[arg-type]


class _Upload:
    """The upload thread and what it ended with."""

    def __init__(self, job: Copy, follow: upload.Follow) -> None:
        self.job, self.follow = job, follow
        self.digest: check.Digest | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"upload-{job.image['id']}", daemon=True)
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if self.thread.ident is None:
                self.thread.start()

    def _run(self) -> None:
        job = self.job
        try:
            self.digest = upload.register(job.client, job.image, job.dest, self.follow, job.endpoint,
                                          retire=job.retire)
        except BaseException as exc:  # handed to the worker's thread, which raises it
            self.error = exc

    def wait(self, idle_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Until the thread is over; cancels an upload glance took no piece of for ``idle_timeout``."""
        self.start()  # a fetch that never called on_start (nothing to fetch) still gets its upload
        while self.thread.is_alive():
            self.thread.join(WATCH_SECONDS)
            body = self.follow.body
            handed = body.handed_at if body is not None and body.digest is None else None
            if handed is not None and clock() - handed > idle_timeout:
                body.cancel(f"glance took no byte for {idle_timeout:g} s")
                image_id = str(self.job.image["id"])
                self.error = self.error or TransferError(
                    image_id=image_id, retryable=True,
                    detail=f"upload to {self.job.endpoint}: glance took no byte for {idle_timeout:g} s "
                    "(transfer_idle_timeout); cancelled")
                return


class _Phase:
    """The phase of the attempt; it only moves forward, whichever thread moves it."""

    ORDER = (FETCHING, UPLOADING, REGISTERING)

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        self.name: str | None = None
        self.lock = threading.Lock()

    def enter(self, name: str) -> bool:
        """Move to ``name`` unless the attempt is there or past it already; whether it moved."""
        with self.lock:
            if self.name is not None and self.ORDER.index(self.name) >= self.ORDER.index(name):
                return False
            self.name = name
            self.report(name)
            return True


def copy(job: Copy, progress: Callable[[int, int], None], phase: Callable[[str], None]) -> tuple[check.Digest, str]:
    """Fetch and upload ``job`` at once; (what was sent and verified, the cascading image's algorithm).

    Raises the fetch's error when the fetch failed, else the upload's.
    """
    image = job.image
    image_id = str(image["id"])
    total = image.get("size") or 0
    algo = image.get("os_hash_algo") or transfer.DEFAULT_HASH_ALGO
    arrival = stream.Arrival()
    now = _Phase(phase)

    def uploaded_bytes(sent: int) -> None:
        if now.name == UPLOADING:
            progress(sent, total)

    def at_registering() -> None:
        if now.enter(REGISTERING):
            progress(total, total)

    follow = upload.Follow(arrival, [algo], job.fetch.idle_timeout, uploaded_bytes, at_registering)
    side = _Upload(job, follow)

    def fetched_bytes(done: int, of: int) -> None:
        arrival.landed()
        if side.error is not None:  # the upload gave up: stop fetching for nothing
            raise stream.Aborted(image_id, f"the upload to {job.endpoint} failed")
        progress(done, of)

    def started() -> None:
        _relay(job)
        side.start()

    now.enter(FETCHING)
    try:
        fetched, source = _fetch(job, fetched_bytes, started)
    except BaseException as exc:
        arrival.failed(exc)
        if side.thread.ident is not None:
            side.wait(job.fetch.idle_timeout)
        if side.error is not None and not isinstance(side.error, stream.Aborted):
            # The upload failed on its own (glance refused, the id is gone): that is the
            # reason; the fetch only ended because of it, or went on for nothing.
            _drop_if_final(side.error, job.dest)
            raise side.error from None
        raise
    arrival.finished(fetched.digest())
    if job.served_by is not None:
        job.served_by(source)
    body = follow.body
    if now.enter(UPLOADING):
        progress(body.sent if body is not None else 0, total)
    side.wait(job.fetch.idle_timeout)
    if side.error is not None:
        _drop_if_final(side.error, job.dest)
        raise side.error
    assert side.digest is not None
    return side.digest, algo


def _fetch(job: Copy, progress: Callable[[int, int], None],
           on_start: Callable[[], None]) -> tuple[transfer.Fetched, str]:
    """The fetch side and who served it: a snapshot's download from its region's glance, else
    SFTP along the sources (the cascading store, regions holding the image, or a snapshot's region)."""
    if job.download is not None:
        fetched = download.fetch(job.download, str(job.source_region), job.image, job.dest, progress, job.fetch,
                                 on_start)
        return fetched, str(job.source_region)
    return peers.fetch_any(job.source_list(), job.image, job.dest, progress, job.ssh_timeout, job.fetch, on_start)


def _relay(job: Copy) -> None:
    """Let the next regions follow the ``.part``; a failure only costs them their wait (one line)."""
    if job.relay is None:
        return
    try:
        job.relay(job.dest)
    except OSError as exc:
        LOG.warning("image %s: the running copy cannot be relayed to other regions: %s", job.image["id"], exc)


def _drop_if_final(error: BaseException, dest: str) -> None:
    """A failure no retry fixes leaves no ``.part``, even one the fetch wrote after the upload removed it."""
    if not getattr(error, "retryable", True):
        upload.remove_file(dest)
