"""Fetching from a region whose own copy is still arriving: a chain source (doc/peers.md).

The coordinator may name as a source a region whose copy of the image runs
(``task.sources`` item with ``growing``).  That region's agent relays the file it
is receiving as ``.growing.<image id>`` beside its cached files (agent/cache.py);
once its copy is verified and admitted, the file is there under the image id.
:func:`fetch` reads whichever it finds, the finished file first, over one
paramiko SFTP session: it reads what is there, asks the open file's size again
while it grows (offset reads; OpenSSH's ``sftp`` cannot wait on a file), and stops
at the cascading image's size.  The checks are the store's: host key pinned, every
path component ``lstat``-ed (no links, a regular file), the ``.part`` resumed
after hashing it again.

No new byte for ``transfer_idle_timeout`` (no file yet, or a file that stopped
growing: the upstream agent died, or its copy failed) fails this source with a
TransferError, and agent/sources.py goes on to the next source with the ``.part``
as it is.  While it waits, the fetch tells the upload it is alive (the upload's
own idle watch would otherwise end the attempt together with this source).  The
whole file is then verified against the cascading image (glancesync.verify, as
for every source): an upstream copy that failed its own verification fails this
one too, and the coordinator retries it store first.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import time
from collections.abc import Callable
from typing import Any

import paramiko

from agent import budget, hashing, sshconnect, transfer
from agent.cache import RELAY_PREFIX
from glancesync.exceptions import SourceRefused, TransferError
from glancesync.storemap import SshStore

LOG = logging.getLogger(__name__)
# How often the size of a file that stopped growing (or a name not there yet) is asked again.
POLL_SECONDS = 0.5
# How often, while a relayed file does not grow, its names are looked at: both gone means the
# upstream's copy ended without a finished file here (failed, or not admitted).
ENDED_CHECK_SECONDS = 3.0


def relay_path(source_path: str) -> str:
    """The name under which the peer relays its running copy of ``source_path``."""
    return posixpath.join(posixpath.dirname(source_path), RELAY_PREFIX + posixpath.basename(source_path))


def fetch(store: SshStore, image: dict[str, Any], source_path: str, dest: str, progress: transfer.ProgressFn,
          timeout: float, options: transfer.FetchOptions, on_start: Callable[[], None],
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> transfer.Fetched:
    """Fetch the peer's copy of ``image`` (finished or growing) into ``dest`` and verify it."""
    image_id = str(image.get("id"))
    total = image.get("size")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise TransferError(image_id=image_id, detail="the cascading image has no size: a growing copy "
                            "cannot be followed")
    algo = image.get("os_hash_algo") or transfer.DEFAULT_HASH_ALGO
    transfer.checked_hashers(algo, image_id)
    started = clock()
    client = sshconnect.connect(store, image_id, timeout)
    sink = hashing.HashPipe(transfer.checked_hashers(algo, image_id))
    try:
        sftp = sshconnect.open_sftp(client, options.window_bytes)
        sftp.get_channel().settimeout(timeout)
        resumed = hashing.rehash(dest, sink)
        if resumed > total:  # not a prefix of this image: start again
            sink.close()
            sink = hashing.HashPipe(transfer.checked_hashers(algo, image_id))
            os.unlink(dest)
            resumed = 0
        with open(dest, "ab") as out:
            on_start()
            follower = _Follower(sftp, store, image_id, source_path, options.idle_timeout, clock, sleep)
            size = follower.run(out, resumed, total, sink, budget.pacer(options, progress, resumed).report)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            transfer.discard(dest)  # keeping it for a resume would hold the space that ran out
            raise TransferError(image_id=image_id, detail=f"work dir full writing {dest} ({exc.strerror}); "
                                "partial file removed") from None
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: {exc}") from None
    except (paramiko.SSHException, EOFError) as exc:
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: {exc}") from None
    finally:
        sink.close()
        client.close()
    digests = sink.hexdigests()
    fetched = transfer.Fetched(dest, size, digests[0], algo, digests[1], clock() - started, resumed)
    transfer.verify(image, fetched)
    return fetched


class _Follower:
    """Reads the peer's file while it grows, up to the image's size."""

    def __init__(self, sftp: paramiko.SFTPClient, store: SshStore, image_id: str, source_path: str,
                 idle_timeout: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.sftp, self.store, self.image_id, self.source_path = sftp, store, image_id, source_path
        self.idle_timeout, self.clock, self.sleep = idle_timeout, clock, sleep
        self.opened = source_path  # the name of the file read (the finished or the relayed one)

    def open(self) -> Any:
        """The finished file, else the relayed one, opened; None while neither is there."""
        for path, growing in ((self.source_path, False), (relay_path(self.source_path), True)):
            try:
                sshconnect.check_regular(self.sftp, self.store, self.image_id, path)
                handle = self.sftp.open(sshconnect.remote_path(self.store, path), "rb")
            except FileNotFoundError:
                continue
            except PermissionError:
                raise SourceRefused(image_id=self.image_id,
                                    detail=f"{path}: permission denied on {self.store.host}") from None
            if growing:
                LOG.info("image %s: following the copy still arriving at %s:%d (%s)", self.image_id,
                         self.store.host, self.store.port, path)
            self.opened = path
            return handle
        return None

    def ended(self) -> bool:
        """Whether neither the relayed nor the finished file is there any more.

        The relayed file we read stopped short of the image: with both names gone the
        upstream's copy is over without a file to give (it failed, or was not kept), so
        no byte will come; waiting for the idle timeout would only delay the fallback.
        """
        for path in (self.source_path, relay_path(self.source_path)):
            try:
                self.sftp.lstat(sshconnect.remote_path(self.store, path))
                return False
            except FileNotFoundError:
                continue
        return True

    def run(self, out: Any, done: int, total: int, sink: hashing.HashPipe, progress: transfer.ProgressFn) -> int:
        remote = None
        last_news = self.clock()
        next_check = ENDED_CHECK_SECONDS
        try:
            while done < total:
                remote = remote or self.open()
                have = min(remote.stat().st_size or 0, total) if remote is not None else done
                if have > done:
                    done = transfer.copy_range(remote, out, done, have, sink, progress)
                    last_news, next_check = self.clock(), ENDED_CHECK_SECONDS
                    continue
                waited = self.clock() - last_news
                if remote is not None and self.opened != self.source_path and waited >= next_check:
                    next_check = waited + ENDED_CHECK_SECONDS
                    # Asked again after the names: the copy may have ended well in between.
                    if self.ended() and (remote.stat().st_size or 0) <= done:
                        raise TransferError(image_id=self.image_id, detail=f"{self.opened} on {self.store.host}: "
                                            f"the copy there ended at byte {done} of {total} without a finished file")
                if waited >= self.idle_timeout:
                    what = "no copy appeared" if remote is None else f"no new byte at {done} of {total}"
                    raise TransferError(image_id=self.image_id, detail=f"{self.opened} on {self.store.host}: "
                                        f"{what} for {self.idle_timeout:g} s (transfer_idle_timeout)")
                progress(done, total)  # alive, waiting for the upstream: the upload must not give up
                self.sleep(POLL_SECONDS)
        finally:
            if remote is not None:
                remote.close()
        return done
