"""The agent's cache of verified image files, which other regions fetch over SFTP (doc/peers.md).

``[agent] cache_dir`` holds one file per image, named by its id, and nothing else
a peer may read: a file enters only at the end of a copy whose bytes were
verified three ways (the fetch, the upload, and glance's record of the upload),
written under a dot-name and renamed into place, so a peer never sees a partial
file.  The files together stay within ``cache_max_bytes``: admitting one evicts
the least recently used (admitted or served longest ago, the file's mtime) until
it fits; a file that cannot fit is not admitted.  Never evicted:

- a file being written (dot-names are never candidates);
- a file another region is fetching now: the coordinator lists them in its
  heartbeats, the agent writes the list to ``.serving`` (``pin``) and every
  eviction reads it.

Workers of one agent admit concurrently: admission and eviction run under an
exclusive ``flock`` of ``.lock`` in the directory.

A copy still running is *relayed* (chained distribution): its ``.part`` is
hard-linked as ``.growing.<image id>`` while it grows, so a peer can follow it
(agent/growing.py).  That name is a dot-name, so never an entry, never evicted and
never confused with a finished file; it costs no space of its own (the same
inode as the ``.part``, which is why relaying needs ``cache_dir`` and ``work_dir``
on one file system), and it goes when the copy ends, whatever the outcome (a
verified file is admitted under its own name before).  Names left by an agent
that died are removed when the next one starts (``clear_relays``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from glancesync import untrusted

LOG = logging.getLogger(__name__)

PIN_FILE = ".serving"
RELAY_PREFIX = ".growing."
LOCK_FILE = ".lock"
# Cache files are read by the region's SFTP account: the agent's group (doc/peers.md).
FILE_MODE = 0o640


@dataclass(frozen=True)
class Entry:
    image_id: str
    size: int
    last_used: float


class Cache:
    """A bounded directory of verified image files, LRU by mtime."""

    def __init__(self, root: str, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, image_id: str) -> str:
        if not untrusted.is_image_id(image_id):
            raise ValueError(f"not an image id: {untrusted.quote(image_id)}")
        return os.path.join(self.root, image_id)

    def holds(self, image_id: str) -> bool:
        return os.path.isfile(self.path(image_id))

    def relay_path(self, image_id: str) -> str:
        return os.path.join(self.root, relay_name(self.path(image_id)))

    def can_relay(self, work_dir: str | None) -> bool:
        """Whether running copies in ``work_dir`` can be relayed: one file system, so a hard link."""
        try:
            return work_dir is not None and os.stat(self.root).st_dev == os.stat(work_dir).st_dev
        except OSError:
            return False

    def relay(self, image_id: str, part: str) -> None:
        """Let peers follow ``part`` (the running copy's file) as ``.growing.<image_id>``, replacing a stale one."""
        final = self.relay_path(image_id)
        tmp = f"{final}.{os.getpid()}"
        os.chmod(part, FILE_MODE)  # the peer account reads through the group, as for cached files
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.link(part, tmp)
        os.replace(tmp, final)

    def unrelay(self, image_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.relay_path(image_id))

    def clear_relays(self) -> None:
        """Remove every relay name: at start, no copy of ours runs."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(RELAY_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.root, name))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(os.path.join(self.root, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def entries(self) -> list[Entry]:
        """The cached files, least recently used first (dot-names are not entries)."""
        found = []
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith(".") or not untrusted.is_image_id(name):
                continue
            try:
                info = os.stat(os.path.join(self.root, name))
            except FileNotFoundError:
                continue
            found.append(Entry(name, info.st_size, info.st_mtime))
        return sorted(found, key=lambda e: (e.last_used, e.image_id))

    def pinned(self) -> set[str]:
        """Images another region fetches now (the coordinator's last word)."""
        try:
            with open(os.path.join(self.root, PIN_FILE), encoding="utf-8") as handle:
                return {line.strip() for line in handle if line.strip()}
        except FileNotFoundError:
            return set()

    def pin(self, image_ids: Iterable[str]) -> None:
        """Record what is being served (replacing the last list); a served file counts as used now."""
        ids = sorted({i for i in image_ids if untrusted.is_image_id(i)})
        if ids == sorted(self.pinned()):
            return
        os.makedirs(self.root, exist_ok=True)
        tmp = os.path.join(self.root, f"{PIN_FILE}.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{i}\n" for i in ids))
        os.replace(tmp, os.path.join(self.root, PIN_FILE))
        for image_id in ids:
            with contextlib.suppress(OSError):
                os.utime(self.path(image_id))

    def _make_room(self, need: int, keep: set[str]) -> bool:
        """Evict least recently used files until ``need`` more bytes fit; whether they do."""
        entries = [e for e in self.entries() if e.image_id not in keep]
        total = sum(e.size for e in entries)
        pinned = self.pinned()
        for entry in entries:
            if total + need <= self.max_bytes:
                break
            if entry.image_id in pinned:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(entry.image_id))
            total -= entry.size
            LOG.info("cache: evicted %s (%d bytes) to make room", entry.image_id, entry.size)
        return total + need <= self.max_bytes

    def admit(self, image_id: str, source: str) -> bool:
        """Put the verified file ``source`` in the cache as ``image_id`` (a link when it can); whether it is in.

        ``source`` itself is left in place (the caller removes it).  A file larger
        than the bound, or one that would need a pinned file evicted, is not admitted.
        """
        final = self.path(image_id)
        size = os.path.getsize(source)
        if size > self.max_bytes:
            LOG.info("cache: %s (%d bytes) is larger than cache_max_bytes; not kept", image_id, size)
            return False
        with self._locked():
            if not self._make_room(size, keep={image_id}):
                LOG.info("cache: no room for %s (%d bytes) without evicting files being served; not kept",
                         image_id, size)
                return False
            tmp = os.path.join(self.root, f".{image_id}.{os.getpid()}.in")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            try:
                os.link(source, tmp)
            except OSError:  # another file system, or links refused: copy
                shutil.copyfile(source, tmp)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, final)
            os.utime(final)
        LOG.info("cache: kept %s (%d bytes) for other regions", image_id, size)
        return True

    def remove(self, image_id: str) -> None:
        """Drop an image's file (the image was deleted in the region), and its relay."""
        with self._locked():
            for path in (self.path(image_id), self.relay_path(image_id)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def relay_name(path: str) -> str:
    """The name under which the running copy of the cached file ``path`` is relayed, beside it."""
    return RELAY_PREFIX + os.path.basename(path)
