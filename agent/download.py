"""Where a copy's bytes come from, and the download of a snapshot from the glance API of its region.

A task's ``source`` (chosen by the coordinator) is one of:

- ``{"type": "sftp", "path": P}``: the cascading glance's file store (agent/transfer.py);
- ``{"type": "sftp", "region": R, "path": P}``: the file store of region R, where a
  snapshot was made, through the SFTP account of ``regions.R.source.store`` in this
  agent's glance_store.yaml (doc/snapshots.md), checked the same way;
- ``{"type": "glance", "region": R}``: the image data of region R's glance API, read
  with the account of ``regions.R.source.glance``.

:func:`where_from` turns a source into a :class:`From` (or refuses it, not retryable:
an operator must map the region).  :func:`fetch` downloads into the ``.part`` from the
first byte (glance answers no range for us to resume from), hashing as the bytes
arrive, and verifies the result with glancesync.verify against the task's image
(the size and hashes the coordinator recorded from region R's glance), exactly as
an SFTP fetch is verified.  No new byte for ``transfer_idle_timeout`` ends the attempt,
retryable.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent import hashing, transfer
from glancesync import glance
from glancesync.exceptions import GlanceSyncError, SourceRefused, TransferError
from glancesync.storemap import GlanceEndpoint, SshStore, StoreMap


@dataclass(frozen=True)
class From:
    """A checked source: an SFTP ``path`` in ``store``, or a ``download`` endpoint; ``region`` for a snapshot."""

    store: SshStore | None
    path: str | None = None
    download: GlanceEndpoint | None = None
    region: str | None = None


def snapshot_region(source: Any) -> str | None:
    """The region a task's source names (a snapshot's), else None."""
    region = source.get("region") if isinstance(source, dict) else None
    return region if isinstance(region, str) else None


def where_from(image_id: str, source: Any, store_map: StoreMap) -> From:
    """The checked source of a copy task; SourceRefused when this agent cannot read it."""
    region = snapshot_region(source)
    if region is None:
        if store_map.store is None:
            raise SourceRefused(image_id=image_id, detail="glance_store.yaml has no cascading.store")
        return From(store_map.store, transfer.checked_source(image_id, source, store_map.store))
    mapped = store_map.sources.get(region)
    kind = source.get("type")
    if kind == "sftp":
        if mapped is None or mapped.store is None:
            raise SourceRefused(image_id=image_id, detail=f"snapshot in {region}: glance_store.yaml has no "
                                f"regions.{region}.source.store to read it over SFTP")
        return From(mapped.store, transfer.checked_source(image_id, source, mapped.store), region=region)
    if kind == "glance":
        if mapped is None or mapped.glance is None:
            raise SourceRefused(image_id=image_id, detail=f"snapshot in {region}: glance_store.yaml has no "
                                f"regions.{region}.source glance account to download it with")
        return From(None, download=mapped.glance, region=region)
    raise SourceRefused(image_id=image_id, detail=f"unsupported source type {kind!r}")


def fetch(endpoint: GlanceEndpoint, region: str, image: dict[str, Any], dest: str,
          progress: Callable[[int, int], None], options: transfer.FetchOptions,
          on_start: Callable[[], None]) -> transfer.Fetched:
    """Download ``image`` from ``region``'s glance into ``dest`` and verify it; a verified Fetched."""
    image_id = str(image.get("id"))
    algo = image.get("os_hash_algo") or transfer.DEFAULT_HASH_ALGO
    try:
        hashers = hashing.new_hashers(algo)
    except ValueError:
        raise SourceRefused(image_id=image_id, detail=f"unsupported os_hash_algo {algo!r}") from None
    where = f"glance of region {region}"
    # A read that hangs this long is the idle timeout of any other fetch.
    endpoint = dataclasses.replace(endpoint, timeout=min(endpoint.timeout, options.idle_timeout))
    started = time.monotonic()
    total = image.get("size") or 0
    try:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        data = glance.call(lambda: glance.make_client(endpoint).images.data(image_id, do_checksum=False),
                           where, missing=None)
        if data is None:
            raise TransferError(image_id=image_id, detail=f"{where} has no data for the image")
        with open(dest, "wb") as out, hashing.HashPipe(hashers) as sink:
            on_start()
            for chunk in data:
                out.write(chunk)
                sink.update(chunk)
                progress(sink.size, total)
            digests = sink.hexdigests()
    except GlanceSyncError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _discard(dest)
        raise TransferError(image_id=image_id, detail=f"downloading from {where}: {exc}") from None
    except Exception as exc:  # requests' and glanceclient's errors while the body streams
        raise TransferError(image_id=image_id, detail=f"downloading from {where}: {exc}") from None
    fetched = transfer.Fetched(dest, sink.size, digests[0], algo, digests[1], time.monotonic() - started)
    transfer.verify(image, fetched)
    return fetched


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
