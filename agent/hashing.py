"""Hashing image bytes off the transfer's thread, and following a ``.part`` file while it grows.

:class:`HashPipe` runs md5 and the image's ``os_hash_algo`` each in its own
thread: hashlib releases the GIL on large blocks, so the two digests cost wall
time of one and leave the receiving thread (paramiko) or process (OpenSSH's
``sftp``) free.  Blocks travel through small bounded queues, so memory stays at
a few MiB whatever the speed of the link.

:func:`follow` is the reader of a file another process writes (``sftp get`` into
the ``.part``): it reads from byte 0 (a resumed prefix is hashed again, as
doc/verification.md asks; a follower's later ``sftp`` runs go on where the last
one stopped, agent/growing.py), hashes whatever is new, reports progress, and returns
once the writer has exited and every byte is read.  When no byte has arrived for
``idle_timeout`` seconds it calls ``stall`` (which kills the writer) and raises.
The digests are ready when the transfer ends: no second pass over the file.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

PIECE_BYTES = 1024 * 1024
# Blocks waiting per hash thread: bounds memory to QUEUE_DEPTH MiB per digest.
QUEUE_DEPTH = 8
# How often a follower looks at the file when nothing new was there.
POLL_SECONDS = 0.05


class Stalled(Exception):
    """No new byte for ``idle`` seconds."""

    def __init__(self, idle: float, done: int) -> None:
        super().__init__(f"no new byte for {idle:g} s (stalled at byte {done})")
        self.idle, self.done = idle, done


def new_hashers(algo: str) -> tuple[Any, Any]:
    """md5 and ``algo``; ValueError for an algorithm hashlib does not know."""
    return hashlib.md5(usedforsecurity=False), hashlib.new(algo)


class HashPipe:
    """``update(block)`` feeds every hasher, each in its own thread; ``hexdigests()`` waits for them."""

    def __init__(self, hashers: tuple[Any, ...]) -> None:
        self.hashers = hashers
        self.size = 0
        self._queues = [queue.Queue(maxsize=QUEUE_DEPTH) for _ in hashers]
        self._threads = [
            threading.Thread(target=self._run, args=(h, q), name=f"hash-{h.name}", daemon=True)
            for h, q in zip(hashers, self._queues, strict=True)
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False

    @staticmethod
    def _run(hasher: Any, blocks: queue.Queue) -> None:
        while (block := blocks.get()) is not None:
            hasher.update(block)

    def update(self, block: bytes) -> None:
        self.size += len(block)
        for blocks in self._queues:
            blocks.put(block)

    def close(self) -> None:
        """Stop the threads once they have hashed what they were given (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for blocks in self._queues:
            blocks.put(None)
        for thread in self._threads:
            thread.join()

    def hexdigests(self) -> tuple[str, ...]:
        self.close()
        return tuple(h.hexdigest() for h in self.hashers)

    def __enter__(self) -> HashPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rehash(path: str, sink: HashPipe) -> int:
    """Feed what ``path`` holds to ``sink``; its size (0 when absent)."""
    done = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(PIECE_BYTES):
                sink.update(block)
                done += len(block)
    except FileNotFoundError:
        return 0
    return done


def follow(
    path: str,
    sink: HashPipe,
    writer_done: Callable[[], bool],
    progress: Callable[[int], None],
    idle_timeout: float,
    stall: Callable[[], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    report_from: int = 0,
    start: int = 0,
) -> int:
    """Hash ``path`` from byte ``start`` while another process appends to it; the size read up to.

    ``start``: bytes the hashers already hold (a follower that runs ``sftp`` again and
    again goes on hashing where the last run stopped).  Returns when ``writer_done()``
    was true before a read that found nothing new.  ``progress(done)`` is called for
    what lies past ``report_from`` (the prefix an earlier attempt left is hashed, but
    it is not progress of this transfer).  Raises :class:`Stalled` (after calling
    ``stall``) when nothing arrived for ``idle_timeout`` seconds while the writer still ran.
    """
    done = start
    last_new = clock()
    with open(path, "rb") as handle:
        handle.seek(start)
        while True:
            # Asked before reading: whatever the writer wrote before it exited is read below.
            finished = writer_done()
            grew = False
            while block := handle.read(PIECE_BYTES):
                sink.update(block)
                done += len(block)
                grew = True
                if done > report_from:
                    progress(done)
            if finished:
                return done
            now = clock()
            if grew:
                last_new = now
            elif now - last_new >= idle_timeout:
                stall()
                raise Stalled(idle_timeout, done)
            else:
                sleep(POLL_SECONDS)
