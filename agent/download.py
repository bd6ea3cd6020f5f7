"""Where a copy's bytes come from, and the download of a snapshot from the glance API of its region.

A task's ``source`` (chosen by the coordinator) is one of:

- ``{"type": "sftp", "path": P}``: the cascading glance's file store (agent/transfer.py);
- ``{"type": "sftp", "region": R, "path": P}``: the file store of region R, where a
  snapshot was made, through the SFTP account of ``regions.R.source.store`` in this
  agent's glance_store.yaml (doc/snapshots.md), checked the same way;
- ``{"type": "glance", "region": R}``: the image data of region R's glance API, read
  with the account of ``regions.R.source.glance``.

:func:`where_from` turns a source into a :class:`From` (or refuses it, not retryable:
an operator must map the region).  :func:`fetch` downloads into the ``.part``,
hashing as the bytes arrive, and verifies the result with glancesync.verify against
the task's image (the size and hashes the coordinator recorded from region R's
glance), exactly as an SFTP fetch is verified.  A ``.part`` an earlier attempt left
is resumed: its bytes are hashed first, then the rest is asked for with a ``Range``
(glance answers 206 from that byte); a 200 answer is the whole image, written and
hashed from byte 0.  No new byte for ``transfer_idle_timeout`` ends the attempt,
retryable.  ``[agent] max_bandwidth`` holds the download as it holds an SFTP fetch:
it draws from the region's budget (agent/budget.py).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from keystoneauth1 import adapter
from keystoneauth1 import exceptions as ks_exc

from agent import budget, hashing, transfer
from glancesync import glance
from glancesync.exceptions import GlanceSyncError, SourceRefused, TransferError
from glancesync.storemap import GlanceEndpoint, SshStore, StoreMap

LOG = logging.getLogger(__name__)

# Bytes per read of a download (glanceclient's own download size).
CHUNK_BYTES = 64 * 1024


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
    """Download ``image`` from ``region``'s glance into ``dest`` (resuming its ``.part``) and verify it."""
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
    sink = hashing.HashPipe(hashers)
    try:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        kept = _kept(dest, total, sink)
        if kept and kept == total:  # an earlier attempt got every byte: only verified
            offset, data = kept, iter(())
        else:
            offset, data = _open(endpoint, image_id, kept, where)
        if offset != kept:  # glance sent the whole image: the kept bytes are not hashed twice
            sink.close()
            sink = hashing.HashPipe(hashing.new_hashers(algo))
        # The region's bandwidth budget holds the download too: the reader waits, TCP stops glance.
        pace = budget.pacer(options, progress, offset)
        with open(dest, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            on_start()
            for chunk in data:
                out.write(chunk)
                sink.update(chunk)
                pace.report(sink.size, total)
        digests = sink.hexdigests()
    except GlanceSyncError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _discard(dest)
        raise TransferError(image_id=image_id, detail=f"downloading from {where}: {exc}") from None
    except Exception as exc:  # requests' and glanceclient's errors while the body streams
        raise TransferError(image_id=image_id, detail=f"downloading from {where}: {exc}") from None
    finally:
        sink.close()
    fetched = transfer.Fetched(dest, sink.size, digests[0], algo, digests[1], time.monotonic() - started, offset)
    transfer.verify(image, fetched)
    return fetched


def _kept(dest: str, total: int, sink: hashing.HashPipe) -> int:
    """The bytes of ``dest`` an earlier attempt left, hashed into ``sink``; 0 (file removed) past ``total``."""
    try:
        size = os.path.getsize(dest)
    except FileNotFoundError:
        return 0
    if size > total:  # not a prefix of this image: start again
        os.unlink(dest)
        return 0
    return hashing.rehash(dest, sink)


def _open(endpoint: GlanceEndpoint, image_id: str, offset: int, where: str) -> tuple[int, Iterator[bytes]]:
    """(where the body starts, the body) of the image data, asked from byte ``offset``.

    Glance answers a ``Range`` with 206 and a ``Content-Range`` from that byte when its
    store reads at an offset (the file store does), and 400 when it cannot
    (doc/glance-behaviour.md); a 200 is the whole image (a proxy that ignores ranges).
    Both of these give the whole image, taken from byte 0.  The request goes through
    keystoneauth itself: glanceclient would %-encode the ``Range`` value.
    """
    api = _adapter(endpoint)
    url = f"/v2/images/{image_id}/file"
    response = None
    if offset:
        try:
            response = api.get(url, headers={"Range": f"bytes={offset}-"}, stream=True)
        except (ks_exc.BadRequest, ks_exc.RequestedRangeNotSatisfiable):
            response = None  # asked again for the whole image below
        except Exception as exc:
            if not glance.is_not_found(exc):
                raise glance.translate(exc, where) from None
            raise TransferError(image_id=image_id, detail=f"{where} has no data for the image") from None
    if response is not None and response.status_code == 206:
        answered = response.headers.get("Content-Range")
        if _range_start(answered) == offset:
            return offset, _body(response)
        # Another range than asked (a proxy in between): every retry would get the same,
        # so this attempt takes the whole image instead.
        LOG.warning("image %s: %s answered the range from byte %d with Content-Range %r; downloading it whole",
                    image_id, where, offset, answered)
        response.close()
        response = None
    if response is None:
        response = glance.call(lambda: api.get(url, stream=True), where, missing=None)
    if response is None or response.status_code == 204:
        raise TransferError(image_id=image_id, detail=f"{where} has no data for the image")
    if response.status_code == 206:  # a range nobody asked for
        response.close()
        raise TransferError(image_id=image_id, detail=f"{where} answered a whole-image request with a range")
    return 0, _body(response)


def _adapter(endpoint: GlanceEndpoint) -> adapter.Adapter:
    """The image service of ``endpoint``, as glance.make_client finds it."""
    kwargs: dict[str, Any] = {"session": glance.make_session(endpoint), "service_type": "image"}
    if endpoint.url:
        kwargs["endpoint_override"] = endpoint.url
    else:
        kwargs.update(interface=endpoint.interface, region_name=endpoint.region_name)
    return adapter.Adapter(**kwargs)


def _body(response: Any) -> Iterator[bytes]:
    try:
        yield from response.iter_content(chunk_size=CHUNK_BYTES)
    finally:
        response.close()


def _range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes A-B/T`` answer, else None."""
    unit, _, rest = (value or "").partition(" ")
    first = rest.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
