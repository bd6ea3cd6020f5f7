"""Fetching image bytes over SFTP, hashing and verifying them while they arrive.

A copy task names its source (``{"type": "sftp", "path": ...}``): a file in the
cascading glance's store directory, reached with paramiko.  Host keys come only
from the configured ``known_hosts`` file (``RejectPolicy``: never auto-added), the
client key from ``private_key_file``; no agent, no password.  The bytes go to
``<work_dir>/<image_id>.part`` and through md5 and the image's ``os_hash_algo`` in
the same loop, so verification costs no second pass.

A ``.part`` left by an earlier attempt is resumed: its bytes are hashed again and
only the rest is fetched.  Whatever happens, the file goes no further unless it
passes glancesync.verify against the cascading image (size, ``checksum``,
``os_hash_value``; doc/verification.md); on a mismatch the file is deleted, so the
retry starts clean.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko

from glancesync import verify as check
from glancesync.exceptions import SourceRefused, TransferError, VerificationError
from glancesync.storemap import SshStore

ProgressFn = Callable[[int, int], None]

# paramiko's best read pattern measured here (GLANCE-NOTES): readv over large
# batches; each batch is split into 1 MiB pieces so hashing and writing overlap
# with the next requests already in flight.  Measured on loopback as fast as
# prefetch() of the whole file (130-200 vs ~170 MiB/s), but prefetch() buffers
# without bound when the disk or the hashing lags; a batch bounds memory to 32 MiB.
BATCH_BYTES = 32 * 1024 * 1024
PIECE_BYTES = 1024 * 1024
DEFAULT_HASH_ALGO = "sha512"
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


class _UnknownHostKey(paramiko.SSHException):
    pass


class _RejectUnknown(paramiko.RejectPolicy):
    """RejectPolicy that raises a type we can tell apart from other SSH errors."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _UnknownHostKey(f"no {key.get_name()} host key for {hostname}")


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


def remote_path(store: SshStore, path: str) -> str:
    """The name the SFTP server knows ``path`` (a checked path in ``store_dir``) by.

    When sshd chroots the account into ``sftp_root``, the server shows that
    directory as ``/``: ``<sftp_root>/images/x`` is asked for as ``/images/x``.
    """
    if store.sftp_root is None:
        return path
    return posixpath.normpath(posixpath.join("/", posixpath.relpath(path, store.sftp_root)))


def connect(store: SshStore, image_id: str, timeout: float) -> paramiko.SSHClient:
    """An SSHClient to the store host, host key checked against ``known_hosts_file`` only."""
    where = f"{store.host}:{store.port}"
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(store.known_hosts_file)
    except OSError as exc:
        raise SourceRefused(
            image_id=image_id, detail=f"cannot read known_hosts file {store.known_hosts_file}: {exc.strerror}"
        ) from None
    client.set_missing_host_key_policy(_RejectUnknown())
    try:
        client.connect(
            store.host,
            port=store.port,
            username=store.user,
            key_filename=store.private_key_file,
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException:
        client.close()
        raise SourceRefused(
            image_id=image_id,
            detail=f"host key of {where} does not match {store.known_hosts_file} (changed host key?)",
        ) from None
    except _UnknownHostKey:
        client.close()
        raise SourceRefused(
            image_id=image_id, detail=f"host {where} is not in known_hosts file {store.known_hosts_file}"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise SourceRefused(
            image_id=image_id, detail=f"{store.user}@{where} refused key {store.private_key_file}: {exc}"
        ) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise TransferError(image_id=image_id, detail=f"cannot connect to {where}: {exc}") from None
    # paramiko's own first cipher choice is aes128-ctr, its fastest here
    # (GLANCE-NOTES: gcm slower, no chacha20), so no cipher list is forced.
    return client


def _check_regular(sftp: Any, store: SshStore, image_id: str, source_path: str) -> Any:
    """``lstat`` every component below ``store_dir``: directories, then a regular file, no links.

    ``checked_source`` only checks the path as text; the sftp server follows
    symbolic links, so a link in the store directory could otherwise hand out any
    file the store account can read.  Returns the file's attributes.
    """
    root = posixpath.normpath(store.store_dir)
    parts = posixpath.relpath(source_path, root).split("/")
    current = root
    for index, part in enumerate(parts):
        current = posixpath.join(current, part)
        attrs = sftp.lstat(remote_path(store, current))
        mode = attrs.st_mode or 0
        last = index == len(parts) - 1
        if stat.S_ISLNK(mode):
            raise SourceRefused(image_id=image_id, detail=f"{current} on {store.host} is a symbolic link")
        if last and not stat.S_ISREG(mode):
            raise SourceRefused(image_id=image_id, detail=f"{current} on {store.host} is not a regular file")
        if not last and not stat.S_ISDIR(mode):
            raise SourceRefused(image_id=image_id, detail=f"{current} on {store.host} is not a directory")
    return attrs


def _hashers(algo: str, image_id: str) -> tuple[Any, Any]:
    try:
        return hashlib.md5(usedforsecurity=False), hashlib.new(algo)
    except ValueError:
        raise SourceRefused(image_id=image_id, detail=f"unsupported os_hash_algo {algo!r}") from None


def _rehash_part(path: str, hashers: tuple[Any, ...]) -> int:
    """Hash what an earlier attempt left in ``path``; returns its size (0 when absent)."""
    done = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(PIECE_BYTES):
                for hasher in hashers:
                    hasher.update(block)
                done += len(block)
    except FileNotFoundError:
        return 0
    return done


def _copy(remote: Any, out: Any, start: int, total: int, hashers: tuple[Any, ...], progress: ProgressFn) -> int:
    done = start
    while done < total:
        batch_end = min(total, done + BATCH_BYTES)
        pieces = [(off, min(PIECE_BYTES, batch_end - off)) for off in range(done, batch_end, PIECE_BYTES)]
        for block in remote.readv(pieces):
            if not block:
                raise EOFError(f"source ended at byte {done} of {total}")
            out.write(block)
            for hasher in hashers:
                hasher.update(block)
            done += len(block)
            progress(done, total)
    return done


def fetch(
    store: SshStore,
    image: dict[str, Any],
    source_path: str,
    dest: str,
    progress: ProgressFn,
    timeout: float = 30.0,
) -> Fetched:
    """Fetch ``source_path`` into ``dest`` over SFTP and verify it against ``image``.

    Raises SourceRefused (not retryable), TransferError or VerificationError (retryable).
    """
    image_id = str(image.get("id"))
    algo = image.get("os_hash_algo") or DEFAULT_HASH_ALGO
    md5, other = _hashers(algo, image_id)
    started = time.monotonic()
    try:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    except OSError as exc:
        raise TransferError(image_id=image_id, detail=f"cannot create work dir for {dest}: {exc.strerror}") from None
    resumed = _rehash_part(dest, (md5, other))
    client = connect(store, image_id, timeout)
    try:
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(timeout)
        checked = _check_regular(sftp, store, image_id, source_path)
        with sftp.open(remote_path(store, source_path), "rb") as remote:
            opened = remote.stat()
            if not stat.S_ISREG(opened.st_mode or 0) or (opened.st_size, opened.st_mtime) != (
                checked.st_size,
                checked.st_mtime,
            ):
                raise SourceRefused(image_id=image_id, detail=f"{source_path} changed while it was opened")
            total = opened.st_size or 0
            if resumed > total:
                # Not a prefix of this source: start again.
                md5, other = _hashers(algo, image_id)
                resumed = 0
                os.unlink(dest)
            with open(dest, "ab") as out:
                size = _copy(remote, out, resumed, total, (md5, other), progress)
    except FileNotFoundError:
        raise TransferError(image_id=image_id, detail=f"{source_path} not found on {store.host}") from None
    except PermissionError:
        raise SourceRefused(image_id=image_id, detail=f"{source_path}: permission denied on {store.host}") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Keeping the partial file for a resume would hold the space that ran out.
            _discard(dest)
            raise TransferError(
                image_id=image_id, detail=f"work dir full writing {dest} ({exc.strerror}); partial file removed"
            ) from None
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: {exc}") from None
    except (TimeoutError, paramiko.SSHException, EOFError) as exc:
        raise TransferError(image_id=image_id, detail=f"reading {source_path}: {exc}") from None
    finally:
        client.close()
    fetched = Fetched(dest, size, md5.hexdigest(), algo, other.hexdigest(), time.monotonic() - started, resumed)
    verify(image, fetched)
    return fetched


def _discard(path: str) -> None:
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
        _discard(fetched.path)
        raise
