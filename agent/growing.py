"""Fetching from a region whose own copy is still arriving: a chain source (doc/peers.md).

The coordinator may name as a source a region whose copy of the image runs
(``task.sources`` item with ``growing``).  That region's agent relays the file it
is receiving as ``.growing.<image id>`` beside its cached files (agent/cache.py);
once its copy is verified and admitted, the file is there under the image id.
:func:`fetch` reads whichever it finds, the finished file first, and stops at the
cascading image's size.  A paramiko SFTP session (agent/sshconnect.py) is the
control: host key pinned, every path component ``lstat``-ed (no links, a regular
file), and the open file's size asked again while it grows.  The bytes come, as
from the store, through OpenSSH's ``sftp`` (``fetch_method = openssh``, a third of
paramiko's CPU): it cannot wait on a growing file, so it runs again with ``reget``
(resuming from the ``.part``) each time enough new bytes are there, and its runs
hash on where the last one stopped (agent/sftp_openssh.py).  With ``paramiko`` (or
no ``sftp`` binary) the control session reads them itself.  The ``.part`` of an
earlier attempt is resumed after hashing it again.

No new byte for ``transfer_idle_timeout`` (a file that stopped growing: the
upstream agent died, or its copy failed), or no file at all for
``follow_start_timeout``, fails this source with a TransferError, and
agent/sources.py goes on to the next source with the ``.part`` as it is.  While it
waits, the fetch tells the upload it is alive (the upload's own idle watch would
otherwise end the attempt together with this source).  The whole file is then
verified against the cascading image (glancesync.verify, as for every source): an
upstream copy that failed its own verification fails this one too, and the
coordinator retries it store first.
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

from agent import budget, hashing, ratelimit, sftp_openssh, sshconnect, transfer
from agent.cache import RELAY_PREFIX
from glancesync.exceptions import SourceRefused, TransferError
from glancesync.storemap import SshStore

LOG = logging.getLogger(__name__)
# How often the size of a file that stopped growing (or a name not there yet) is asked again.
POLL_SECONDS = 0.5
# How often, while a relayed file does not grow, its names are looked at: both gone means the
# upstream's copy ended without a finished file here (failed, or not admitted).
ENDED_CHECK_SECONDS = 3.0
# Each run of OpenSSH's sftp is a new SSH connection: key exchange, authentication and a
# session process in the peer's sshd.  Measured here (doc/performance.md) one run costs about
# 0.14 CPU-s on the two hosts together, and reading with sftp instead of paramiko saves about
# 10 CPU-s per GiB: a run for less than about 15 MiB costs more than it saves.  So a run
# waits until RUN_BYTES are new (then the runs add at most ~4 CPU-s per GiB), or the rest of
# the image is there, or new bytes have waited RUN_LAG_SECONDS (a slow upstream: at most one
# run per that many seconds, and the follower stays that close behind).  A run reads to the
# file's end as it finds it, so a follower whose link is no faster than its upstream's stays
# in one run, RUN_BYTES behind.
RUN_BYTES = 32 * 1024 * 1024
RUN_LAG_SECONDS = 5.0


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
    hashers = transfer.checked_hashers(algo, image_id)
    openssh = options.method == "openssh" and sftp_openssh.find_binary(options.sftp_binary) is not None
    started = clock()
    client = sshconnect.connect(store, image_id, timeout)
    try:
        sftp = sshconnect.open_sftp(client, options.window_bytes)
        sftp.get_channel().settimeout(timeout)
        resumed = _kept(dest, total, hashers)
        upstream = _Upstream(sftp, store, image_id, source_path, options, clock, sleep)
        pace = budget.pacer(options, progress, resumed)
        if openssh:
            # Started before the first run, as paramiko's reader does: the upload follows the
            # .part, and this region relays it at once to the regions that follow it.  So,
            # unlike a fetch from the store, sftp forks while threads run here (paramiko's,
            # the upload's); its child only sets PR_SET_PDEATHSIG before exec.
            reader = _OpensshReader(upstream, dest, hashers, pace, timeout, options, total)
            on_start()
            size = upstream.follow(reader.read, resumed, total, pace.report, RUN_BYTES)
        else:
            with open(dest, "ab") as out, hashing.HashPipe(hashers) as sink:
                on_start()
                size = upstream.follow(
                    lambda remote, done, have: transfer.copy_range(remote, out, done, have, sink, pace.report),
                    resumed, total, pace.report, 1)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            transfer.discard(dest)  # keeping it for a resume would hold the space that ran out
            raise TransferError(image_id=image_id, detail=f"work dir full writing {dest} ({exc.strerror}); "
                                "partial file removed") from None
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: {exc}") from None
    except (paramiko.SSHException, EOFError) as exc:
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: {exc}") from None
    finally:
        client.close()
    fetched = transfer.Fetched(dest, size, hashers[0].hexdigest(), algo, hashers[1].hexdigest(), clock() - started,
                               resumed)
    transfer.verify(image, fetched)
    return fetched


def _kept(dest: str, total: int, hashers: tuple[Any, Any]) -> int:
    """The bytes of ``dest`` an earlier attempt left, hashed into ``hashers``; ``dest`` exists afterwards."""
    try:
        if os.path.getsize(dest) > total:  # not a prefix of this image: start again
            os.unlink(dest)
    except FileNotFoundError:
        pass
    with open(dest, "ab"), hashing.HashPipe(hashers) as sink:
        return hashing.rehash(dest, sink)


class _Upstream:
    """The peer's file as the control session sees it: its names, checks, size, and the wait for it."""

    def __init__(self, sftp: paramiko.SFTPClient, store: SshStore, image_id: str, source_path: str,
                 options: transfer.FetchOptions, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.sftp, self.store, self.image_id, self.source_path = sftp, store, image_id, source_path
        self.idle_timeout, self.clock, self.sleep = options.idle_timeout, clock, sleep
        self.start_timeout = min(options.follow_start_timeout, options.idle_timeout)
        self.opened = source_path  # the name of the file read (the finished or the relayed one)

    def name(self) -> str | None:
        """The finished file, else the relayed one, once every component passed the checks; None: neither."""
        for path, growing in ((self.source_path, False), (relay_path(self.source_path), True)):
            try:
                sshconnect.check_regular(self.sftp, self.store, self.image_id, path)
            except FileNotFoundError:
                continue
            except PermissionError:
                raise SourceRefused(image_id=self.image_id,
                                    detail=f"{path}: permission denied on {self.store.host}") from None
            if growing and self.opened != path:
                LOG.info("image %s: following the copy still arriving at %s:%d (%s)", self.image_id,
                         self.store.host, self.store.port, path)
            self.opened = path
            return path
        return None

    def open(self) -> Any:
        """The file :meth:`name` finds, opened (its size is asked through it); None while neither is there."""
        path = self.name()
        if path is None:
            return None
        try:
            return self.sftp.open(sshconnect.remote_path(self.store, path), "rb")
        except FileNotFoundError:
            return None
        except PermissionError:
            raise SourceRefused(image_id=self.image_id, detail=f"{path}: permission denied on {self.store.host}") from None

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

    def follow(self, read: Callable[[Any, int, int], int], done: int, total: int, progress: transfer.ProgressFn,
               batch: int) -> int:
        """Call ``read(remote, done, have)`` as the file grows until ``total`` bytes are here; the bytes here.

        ``read`` is called once ``batch`` bytes are new, or the rest of the image is
        there, or new bytes waited :data:`RUN_LAG_SECONDS`.
        """
        remote = None
        began = last_news = self.clock()
        seen, waiting_since, next_check = done, None, ENDED_CHECK_SECONDS
        try:
            while done < total:
                remote = remote or self.open()
                have = min(remote.stat().st_size or 0, total) if remote is not None else done
                now = self.clock()
                if have > seen:  # the upstream is alive, whether or not a read is worth it yet
                    seen, last_news, next_check = have, now, ENDED_CHECK_SECONDS
                waiting_since = (waiting_since or now) if have > done else None
                if have > done and (have - done >= batch or have >= total or now - waiting_since >= RUN_LAG_SECONDS):
                    got = read(remote, done, have)
                    if got > done:
                        done, waiting_since = got, None
                        last_news, next_check = self.clock(), ENDED_CHECK_SECONDS
                        continue
                waited = now - last_news
                if remote is not None and self.opened != self.source_path and waited >= next_check:
                    next_check = waited + ENDED_CHECK_SECONDS
                    self._check_ended(remote, done, total)
                self._check_waits(remote is None, done, total, waited, now - began)
                progress(done, total)  # alive, waiting for the upstream: the upload must not give up
                self.sleep(POLL_SECONDS)
        finally:
            if remote is not None:
                remote.close()
        return done

    def _check_ended(self, remote: Any, done: int, total: int) -> None:
        # Asked again after the names: the copy may have ended well in between.
        if self.ended() and (remote.stat().st_size or 0) <= done:
            raise TransferError(image_id=self.image_id, detail=f"{self.opened} on {self.store.host}: the copy there "
                                f"ended at byte {done} of {total} without a finished file")

    def _check_waits(self, missing: bool, done: int, total: int, waited: float, since_start: float) -> None:
        where = f"{self.opened} on {self.store.host}"
        if missing and since_start >= self.start_timeout:
            # The upstream relays its file as its fetch starts: none by now is none coming.
            raise TransferError(image_id=self.image_id, detail=f"{where}: no copy appeared for "
                                f"{self.start_timeout:g} s (follow_start_timeout)")
        if waited >= self.idle_timeout:
            raise TransferError(image_id=self.image_id, detail=f"{where}: no new byte at {done} of {total} for "
                                f"{self.idle_timeout:g} s (transfer_idle_timeout)")


class _OpensshReader:
    """Reads what is new of the peer's file with OpenSSH's ``sftp``: one ``reget`` run per call."""

    def __init__(self, upstream: _Upstream, dest: str, hashers: tuple[Any, Any], pace: budget.Pacer,
                 timeout: float, options: transfer.FetchOptions, total: int) -> None:
        self.upstream, self.dest, self.hashers, self.pace = upstream, os.path.abspath(dest), hashers, pace
        self.timeout, self.options, self.total = timeout, options, total
        sftp_openssh.plain_path(upstream.image_id, self.dest, "local")
        self.runs = 0

    def read(self, remote: Any, done: int, have: int) -> int:
        """Run ``sftp`` once from ``done`` (the ``.part``'s size, all hashed); the ``.part``'s size after it."""
        up, options = self.upstream, self.options
        path = up.name()  # checked again before every run; the finished name once it is there
        if path is None:  # what the open handle still shows cannot be read by name
            raise TransferError(image_id=up.image_id, detail=f"{up.opened} on {up.store.host}: the copy there "
                                f"ended at byte {done} of {self.total} without a finished file")
        remote_name = sftp_openssh.plain_path(up.image_id, sshconnect.remote_path(up.store, path), "remote")
        if self.runs == 0:
            LOG.info("image %s: reading %s:%d (%s) with OpenSSH's sftp, again as it grows", up.image_id,
                     up.store.host, up.store.port, path)
        self.runs += 1
        try:
            size, _ = sftp_openssh.run(
                up.store, up.image_id, remote_name, self.dest, self.hashers,
                lambda got: self.pace.report(got, self.total), up.idle_timeout, self.timeout, options.sftp_binary,
                limit=ratelimit.sftp_limit(options.rate_limit), on_spawn=self.pace.attach, hashed=done)
        except TransferError:
            # The relay name can go between our check and sftp's open (the upstream admitted
            # its copy under the image id): nothing was written, the finished name is next.
            if path == up.source_path or os.path.getsize(self.dest) != done or up.name() != up.source_path:
                raise
            return done
        return size
