"""Where a copy's bytes come from: the task's ordered sources, and falling back along them (doc/peers.md).

A task from a coordinator that plans distribution trees carries ``sources``: a
peer region holding a verified copy in its cache first (or, ``growing``, one
whose copy is still arriving: agent/growing.py follows it), maybe other peers,
and the cascading store last.  Older tasks carry only ``source`` (the store).  A peer
is named by region only; everything about reaching it comes from this agent's
own ``glance_store.yaml`` (``regions.<name>.peer``): host, port, account, the
cache path, and the host keys, which are written into a known_hosts file of our
own (``<work_dir>/peer_known_hosts``) and checked exactly as the store's are
(never added).  The agent authenticates with the store's key.

:func:`fetch_any` tries each source in turn.  A source that fails (refused
connection, unknown host key, file evicted, sshd killed mid-transfer) hands over
to the next with the ``.part`` as it is: the next fetch resumes from it (``reget``)
after hashing it again, and the whole file is verified against the cascading
image whatever mix of sources wrote it (glancesync.verify).  A verification
failure ends the attempt (the upload following the file has read those bytes);
the coordinator puts the store first for the retry.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent import growing, stream, transfer
from glancesync.exceptions import SourceRefused, TransferError, VerificationError
from glancesync.protocol import SOURCE_STORE
from glancesync.storemap import PeerSource, SshStore

LOG = logging.getLogger(__name__)

KNOWN_HOSTS = "peer_known_hosts"


@dataclass(frozen=True)
class Source:
    """One place to fetch from: its name (``cascading`` or a region), the SFTP account, the file's path."""

    name: str
    store: SshStore
    path: str
    # The region's copy may still be arriving there: follow it as it grows (agent/growing.py).
    growing: bool = False


def known_hosts_text(peers: Mapping[str, PeerSource]) -> str:
    """known_hosts lines pinning every peer's host keys, as OpenSSH and paramiko read them."""
    lines = []
    for peer in sorted(peers.values(), key=lambda p: p.region):
        pattern = peer.host if peer.port == 22 else f"[{peer.host}]:{peer.port}"
        lines += [f"{pattern} {key}" for key in peer.host_keys]
    return "".join(f"{line}\n" for line in lines)


def write_known_hosts(work_dir: str, peers: Mapping[str, PeerSource]) -> str:
    """``<work_dir>/peer_known_hosts`` made from the configuration (atomically, only when it changed)."""
    path = os.path.join(work_dir, KNOWN_HOSTS)
    text = known_hosts_text(peers)
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return path
    except FileNotFoundError:
        pass
    os.makedirs(work_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def peer_store(peer: PeerSource, store: SshStore, known_hosts: str) -> SshStore:
    """The SFTP account of ``peer``'s cache, with our key and the pinned host keys."""
    return SshStore(host=peer.host, port=peer.port, user=peer.user, private_key_file=store.private_key_file,
                    known_hosts_file=known_hosts, store_dir=peer.path)


def resolve(task: Mapping[str, Any], store: SshStore, peers: Mapping[str, PeerSource], region: str,
            work_dir: str) -> list[Source]:
    """The sources of a copy task, in the coordinator's order, always with the cascading store.

    The store is ``task.source`` (checked as before: a path outside ``store_dir`` is
    refused), wherever ``sources`` puts it, and last when it is not there.  A peer
    this agent has no ``peer:`` entry for (or its own region) is skipped with one
    warning.
    """
    image_id = str(task["image_id"])
    found: list[Source] = []
    known_hosts = None
    store_source = Source(SOURCE_STORE, store, transfer.checked_source(image_id, task.get("source"), store))
    for item in task.get("sources") or ():
        if item.get("type") != "peer":
            if store_source not in found:
                found.append(store_source)  # the store, where the coordinator put it
            continue
        peer = peers.get(item.get("region"))
        if peer is None or peer.region == region:
            LOG.warning("image %s: source region %r has no peer entry here (or is our own); skipped",
                        image_id, item.get("region"))
            continue
        known_hosts = known_hosts or write_known_hosts(work_dir, peers)
        store_of_peer = peer_store(peer, store, known_hosts)
        path = transfer.checked_source(image_id, {"type": "sftp", "path": posixpath.join(peer.path, image_id)},
                                       store_of_peer)
        found.append(Source(peer.region, store_of_peer, path, growing=item.get("growing") is True))
    if store_source not in found:
        found.append(store_source)
    return found


def fetch_any(sources: list[Source], image: dict[str, Any], dest: str, progress: transfer.ProgressFn,
              timeout: float, options: transfer.FetchOptions,
              on_start: Callable[[], None]) -> tuple[transfer.Fetched, str]:
    """Fetch ``image`` into ``dest`` from the first source that works; (what arrived, verified; its source)."""
    image_id = str(image.get("id"))
    for index, source in enumerate(sources):
        last = index == len(sources) - 1
        fetch = growing.fetch if source.growing else transfer.fetch
        try:
            fetched = fetch(source.store, image, source.path, dest, progress, timeout=timeout,
                            options=options, on_start=on_start)
        except (stream.Aborted, VerificationError):
            raise  # the upload failed, or the upload read bytes that were wrong: no source helps now
        except (TransferError, SourceRefused) as exc:
            if last:
                raise
            kept = os.path.getsize(dest) if os.path.exists(dest) else 0
            LOG.warning("image %s: source %s failed (%s); falling back to %s, resuming after the %d bytes "
                        "already in %s", image_id, source.name, exc, sources[index + 1].name, kept, dest)
            continue
        if source.name != SOURCE_STORE:
            LOG.info("image %s fetched from peer region %s", image_id, source.name)
        return fetched, source.name
    raise TransferError(image_id=image_id, detail="no source to fetch from")
