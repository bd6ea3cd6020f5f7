"""Fetching image bytes over SFTP, hashing and verifying them while they arrive.

A copy task names its source (``{"type": "sftp", "path": ...}``): a file in the
cascading glance's store directory.  paramiko does the control part
(agent/sshconnect.py): host keys come only from the configured ``known_hosts``
file (``RejectPolicy``: never auto-added), the client key from
``private_key_file``, no agent, no password; it ``lstat``s every component of the
path so links and non-files are refused.  The
bytes then come through OpenSSH's ``sftp`` client (``fetch_method = openssh``,
agent/sftp_openssh.py, pinned the same way) or through paramiko itself
(``paramiko``, the portable fallback, with a window sized for a WAN).  Either way
they go to ``<work_dir>/<image_id>.part`` and through md5 and the image's
``os_hash_algo`` in their own threads (agent/hashing.py), so verification costs
no second pass.  No new byte for ``transfer_idle_timeout`` seconds ends the
attempt, retryable.

A ``.part`` left by an earlier attempt is resumed: its bytes are hashed again and
only the rest is fetched (``reget`` for OpenSSH).  Whatever happens, the file goes
no further unless it passes glancesync.verify against the cascading image (size,
``checksum``, ``os_hash_value``; doc/verification.md); on a mismatch the file is
deleted, so the retry starts clean.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko

from agent import budget, hashing, ratelimit, sftp_openssh, sshconnect
from glancesync import verify as check
from glancesync.exceptions import SourceRefused, TransferError, VerificationError
from glancesync.storemap import SshStore

LOG = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]

# paramiko's best read pattern measured here (doc/glance-behaviour.md): readv over large
# batches; each batch is split into 1 MiB pieces so hashing and writing overlap
# with the next requests already in flight.  Measured on loopback as fast as
# prefetch() of the whole file (130-200 vs ~170 MiB/s), but prefetch() buffers
# without bound when the disk or the hashing lags; a batch bounds memory to 32 MiB.
BATCH_BYTES = 32 * 1024 * 1024
PIECE_BYTES = 1024 * 1024
DEFAULT_HASH_ALGO = "sha512"
METHODS = ("openssh", "paramiko")
# paramiko's SFTP window: 32 MiB keeps ~1 Gbit/s busy over a 250 ms round trip
# (its own 2 MiB default caps a 100 ms link near 20 MiB/s).
DEFAULT_WINDOW_BYTES = 32 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_FOLLOW_START_TIMEOUT = 30.0
# SFTP read requests (32 KiB each) kept outstanding: 2 MiB, as OpenSSH's ``sftp`` does
# (``-R 64``).  paramiko's readv otherwise asks for a whole 32 MiB batch at once; a follower
# that fell a batch behind then had 32 MiB pushed at a shaped link and read far below its
# rate (doc/performance.md, WAN bench, "Chained distribution").  Like OpenSSH's, this caps
# one stream at 2 MiB per round trip.
READS_IN_FLIGHT = 64
# Image ids become file names: allow only what glance ids look like.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Fetched:
    """A verified local copy of an image's bytes."""

    path: str
    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str
    elapsed: float
    resumed_from: int = 0

    def digest(self) -> check.Digest:
        return check.Digest("received bytes", self.size, self.checksum, {self.os_hash_algo: self.os_hash_value})


@dataclass(frozen=True)
class FetchOptions:
    """How bytes are fetched ([agent] fetch_method, transfer_idle_timeout, follow_start_timeout,
    paramiko_window_mib, max_bandwidth)."""

    method: str = "openssh"
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    follow_start_timeout: float = DEFAULT_FOLLOW_START_TIMEOUT  # agent/growing.py: no upstream file at all
    window_bytes: int = DEFAULT_WINDOW_BYTES
    sftp_binary: str = sftp_openssh.DEFAULT_BINARY
    rate_limit: float = 0.0  # bytes/s: max_bandwidth, the region's cap (agent/ratelimit.py); 0: none
    budget_file: str = ""  # the region's shared budget (agent/budget.py); "": a bucket of the fetch's own


def part_path(work_dir: str, image_id: str) -> str:
    """``<work_dir>/<image_id>.part``; refuses ids that are not plain file names."""
    if not _SAFE_ID.match(image_id):
        raise SourceRefused(image_id=image_id[:80], detail="image id is not a plain identifier")
    return os.path.join(work_dir, f"{image_id}.part")


def checked_source(image_id: str, source: Any, store: SshStore) -> str:
    """The source path of a task, refused unless it is an SFTP path inside ``store_dir``."""
    if not isinstance(source, dict) or source.get("type") != "sftp":
        kind = source.get("type") if isinstance(source, dict) else source
        raise SourceRefused(image_id=image_id, detail=f"unsupported source type {kind!r}")
    raw = source.get("path")
    if not isinstance(raw, str) or not raw.startswith("/") or "\x00" in raw:
        raise SourceRefused(image_id=image_id, detail=f"source path {raw!r} is not an absolute path")
    path = posixpath.normpath(raw)
    root = posixpath.normpath(store.store_dir)
    if posixpath.commonpath([root, path]) != root or path == root:
        raise SourceRefused(image_id=image_id, detail=f"path {path!r} is outside the store directory {root!r}")
    return path


def checked_hashers(algo: str, image_id: str) -> tuple[Any, Any]:
    try:
        return hashing.new_hashers(algo)
    except ValueError:
        raise SourceRefused(image_id=image_id, detail=f"unsupported os_hash_algo {algo!r}") from None


def reads_in_flight(window_bytes: int) -> int:
    """Read requests a store fetch keeps outstanding: enough to fill its SSH window.

    The window is the operator's bandwidth-delay product (``paramiko_window_mib``, shrunk to
    about a second of a capped rate by ratelimit.window); fewer requests than that would cap
    one stream at ``READS_IN_FLIGHT`` packets per round trip (2 MiB: 40 MiB/s at 50 ms),
    below a 1 Gbit/s WAN link, whatever the window.
    """
    return max(READS_IN_FLIGHT, window_bytes // sshconnect.PACKET_BYTES)


def copy_range(remote: Any, out: Any, start: int, total: int, sink: hashing.HashPipe, progress: ProgressFn,
               in_flight: int = READS_IN_FLIGHT) -> int:
    """Read ``[start, total)`` of ``remote`` into ``out`` and ``sink``; ``in_flight``: at most that
    many SFTP read requests outstanding at once."""
    done = start
    extra = {"max_concurrent_prefetch_requests": in_flight}
    while done < total:
        batch_end = min(total, done + BATCH_BYTES)
        pieces = [(off, min(PIECE_BYTES, batch_end - off)) for off in range(done, batch_end, PIECE_BYTES)]
        for block in remote.readv(pieces, **extra):
            if not block:
                raise EOFError(f"source ended at byte {done} of {total}")
            out.write(block)
            sink.update(block)
            done += len(block)
            progress(done, total)
    return done


def resolve_method(method: str, binary: str = sftp_openssh.DEFAULT_BINARY) -> str:
    """``method`` as it will run: ``openssh`` without an ``sftp`` binary becomes ``paramiko``, said once."""
    if method == "openssh" and sftp_openssh.find_binary(binary) is None:
        LOG.warning("fetch_method is openssh but %r is not installed: fetching with paramiko "
                    "(about three times the CPU; install openssh-client)", binary)
        return "paramiko"
    return method


def fetch(
    store: SshStore,
    image: dict[str, Any],
    source_path: str,
    dest: str,
    progress: ProgressFn,
    timeout: float = 30.0,
    options: FetchOptions | None = None,
    on_start: Callable[[], None] | None = None,
) -> Fetched:
    """Fetch ``source_path`` into ``dest`` and verify it against ``image``.

    ``timeout`` bounds connecting and each control request; ``options`` chooses
    the method and the idle timeout.  ``on_start()`` is called once ``dest`` exists
    and its bytes are on their way (after ``sftp`` was started: a reader of the
    growing file may start its threads then, none exists when ``sftp`` forks).
    Raises SourceRefused (not retryable), TransferError or VerificationError
    (retryable).
    """
    options = options or FetchOptions()
    on_start = on_start or (lambda: None)
    image_id = str(image.get("id"))
    algo = image.get("os_hash_algo") or DEFAULT_HASH_ALGO
    checked_hashers(algo, image_id)  # refuse an unknown algorithm before connecting
    started = time.monotonic()
    try:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    except OSError as exc:
        raise TransferError(image_id=image_id, detail=f"cannot create work dir for {dest}: {exc.strerror}") from None
    try:
        if options.method == "openssh":
            size, resumed, digests = _via_openssh(store, image_id, algo, source_path, dest, progress, timeout,
                                                  options, on_start)
        else:
            size, resumed, digests = _via_paramiko(store, image_id, algo, source_path, dest, progress, timeout,
                                                   options, on_start)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Keeping the partial file for a resume would hold the space that ran out.
            discard(dest)
            raise TransferError(
                image_id=image_id, detail=f"work dir full writing {dest} ({exc.strerror}); partial file removed"
            ) from None
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: {exc}") from None
    fetched = Fetched(dest, size, digests[0], algo, digests[1], time.monotonic() - started, resumed)
    verify(image, fetched)
    return fetched


def _checked_remote(client: paramiko.SSHClient, store: SshStore, image_id: str, source_path: str,
                    timeout: float, window: int) -> tuple[Any, Any]:
    """(sftp session, attributes of ``source_path``) after the control checks."""
    try:
        sftp = sshconnect.open_sftp(client, window)
        sftp.get_channel().settimeout(timeout)
        return sftp, sshconnect.check_regular(sftp, store, image_id, source_path)
    except FileNotFoundError:
        raise TransferError(image_id=image_id, detail=f"{source_path} not found on {store.host}") from None
    except PermissionError:
        raise SourceRefused(image_id=image_id, detail=f"{source_path}: permission denied on {store.host}") from None
    except (TimeoutError, paramiko.SSHException, EOFError) as exc:
        raise TransferError(image_id=image_id, detail=f"checking {source_path}: {exc}") from None


def _via_openssh(store: SshStore, image_id: str, algo: str, source_path: str, dest: str, progress: ProgressFn,
                 timeout: float, options: FetchOptions,
                 on_start: Callable[[], None]) -> tuple[int, int, tuple[str, ...]]:
    remote = sftp_openssh.plain_path(image_id, sshconnect.remote_path(store, source_path), "remote")
    sftp_openssh.plain_path(image_id, os.path.abspath(dest), "local")
    client = sshconnect.connect(store, image_id, timeout)
    try:
        checked = _checked_remote(client, store, image_id, source_path, timeout, options.window_bytes)[1]
    finally:
        # Closed before sftp forks: no paramiko thread is running then.
        client.close()
    total = checked.st_size or 0
    try:
        resumed = os.path.getsize(dest)
    except FileNotFoundError:
        resumed = 0
    if resumed > total:  # not a prefix of this source: start again
        os.unlink(dest)
        resumed = 0
    with open(dest, "ab"):
        pass  # the follower opens it before sftp writes a byte
    if resumed == total:
        on_start()
        with hashing.HashPipe(checked_hashers(algo, image_id)) as sink:
            size = hashing.rehash(dest, sink)
            return size, resumed, sink.hexdigests()
    pace = budget.pacer(options, progress, resumed)  # stops sftp while in debt
    size, digests = sftp_openssh.run(store, image_id, remote, os.path.abspath(dest), checked_hashers(algo, image_id),
                                     lambda done: pace.report(done, total), options.idle_timeout, timeout,
                                     options.sftp_binary, on_start, ratelimit.sftp_limit(options.rate_limit),
                                     on_spawn=pace.attach)
    return size, resumed, digests


def _via_paramiko(store: SshStore, image_id: str, algo: str, source_path: str, dest: str, progress: ProgressFn,
                  timeout: float, options: FetchOptions,
                  on_start: Callable[[], None]) -> tuple[int, int, tuple[str, ...]]:
    client = sshconnect.connect(store, image_id, timeout)
    sink = hashing.HashPipe(checked_hashers(algo, image_id))
    try:
        sftp, checked = _checked_remote(client, store, image_id, source_path, timeout, options.window_bytes)
        resumed = hashing.rehash(dest, sink)  # what an earlier attempt left
        with sftp.open(sshconnect.remote_path(store, source_path), "rb") as remote:
            opened = remote.stat()
            if not stat.S_ISREG(opened.st_mode or 0) or (opened.st_size, opened.st_mtime) != (
                checked.st_size,
                checked.st_mtime,
            ):
                raise SourceRefused(image_id=image_id, detail=f"{source_path} changed while it was opened")
            total = opened.st_size or 0
            if resumed > total:
                # Not a prefix of this source: start again.
                sink.close()
                sink = hashing.HashPipe(checked_hashers(algo, image_id))
                resumed = 0
                os.unlink(dest)
            # From here a stall is what the idle timeout is about, not the control timeout.
            sftp.get_channel().settimeout(options.idle_timeout)
            with open(dest, "ab") as out:
                on_start()
                size = copy_range(remote, out, resumed, total, sink, budget.pacer(options, progress, resumed).report,
                                  in_flight=reads_in_flight(options.window_bytes))
    except FileNotFoundError:
        raise TransferError(image_id=image_id, detail=f"{source_path} not found on {store.host}") from None
    except PermissionError:
        raise SourceRefused(image_id=image_id, detail=f"{source_path}: permission denied on {store.host}") from None
    except TimeoutError:
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: no new byte for "
                            f"{options.idle_timeout:g} s (transfer_idle_timeout)") from None
    except (paramiko.SSHException, EOFError) as exc:
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: {exc}") from None
    finally:
        sink.close()
        client.close()
    return size, resumed, sink.hexdigests()


def discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def verify(image: dict[str, Any], fetched: Fetched) -> None:
    """Compare what arrived with the image record (glancesync.verify); on a mismatch delete the file and raise.

    A mismatch is retryable: bytes corrupted on the way arrive right next time.
    """
    try:
        check.verify(check.Digest.of_record(image, "cascading image"), fetched.digest(),
                     image_id=str(image.get("id")), mismatch_retryable=True)
    except VerificationError:
        discard(fetched.path)
        raise
