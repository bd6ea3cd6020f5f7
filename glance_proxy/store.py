"""The read-only glance_store driver for ``cascaded://<region>/<image-id>`` locations.

A *cascaded location* says: the bytes of this cascading image are also held, as the
image with the same id, by the glance of region ``<region>``.  The coordinator adds
such a location to the cascading image once it has verified a regional copy; glance
then needs a driver for the scheme, or it refuses the location.  This driver:

- ``get_size()``: the ``size`` of the regional image record (glance answers HEAD on
  ``/file`` with 405, so a record is the only place the size can come from).  A
  size of 0 (no data yet) or an unknown region makes glance answer 400.
- ``get()``: streams the regional image data, honouring ``offset`` and
  ``chunk_size`` (the length of a ranged read), as ``(iterator, length)``.
- ``delete()``: returns at once.  Glance calls it inside the user's DELETE (once
  per cascaded location); regional copies are removed by the coordinator, later.
- ``add()``: refused.  ``WRITE_ACCESS`` is declared only because glance never calls
  ``delete()`` on a store without it.

Regions, endpoints and credentials come from ``glance_store.yaml``
(``[glance_store] cascaded_store_config``), loaded once; a glanceclient per region
is built once and reused (``DRIVER_REUSABLE``).  Enable the driver with
``[glance_store] stores = file,http,cascaded``.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import glance_store.driver
import glance_store.location
from glance_store import capabilities
from glance_store import exceptions as gs_exc
from oslo_config import cfg

from glancesync import glance, storemap
from glancesync.exceptions import GlanceSyncError
from glancesync.protocol import CASCADED_SCHEME, cascaded_url

LOG = logging.getLogger(__name__)

OPTIONS = [
    cfg.StrOpt(
        "cascaded_store_config",
        default="/etc/glance-sync/glance_store.yaml",
        help="Path of the Glance Sync Manager's glance_store.yaml: the regions whose glances "
        "serve cascaded://<region>/<image-id> locations, with their endpoints and credentials.\n\n"
        "Related options:\n    * stores (must include cascaded)",
    ),
]

_PREFIX = f"{CASCADED_SCHEME}://"
# Seconds a regional glance may take to connect or to answer one read, inside a
# user's request on the cascading glance (a location add's get_size, a download):
# a hung region makes that request fail fast with 503/400, never hang.
REGION_TIMEOUT = 30.0


class StoreLocation(glance_store.location.StoreLocation):
    """``cascaded://<region>/<image-id>``."""

    region: str
    image_id: str

    def process_specs(self) -> None:
        self.region = self.specs.get("region")
        self.image_id = self.specs.get("image_id")

    def get_uri(self) -> str:
        return cascaded_url(self.region, self.image_id)

    def parse_uri(self, uri: str) -> None:
        self.validate_schemas(uri, valid_schemas=(_PREFIX,))
        pieces = urllib.parse.urlsplit(uri)
        image_id = pieces.path.strip("/")
        if not pieces.netloc or not image_id or "/" in image_id or pieces.query or "@" in pieces.netloc:
            raise gs_exc.BadStoreUri(uri=uri, reason="expected cascaded://<region>/<image-id>")
        self.region = urllib.parse.unquote(pieces.netloc)
        self.image_id = urllib.parse.unquote(image_id)


def _slice(chunks: Iterable[bytes], offset: int, length: int | None) -> Iterator[bytes]:
    """The bytes [offset, offset + length) of a chunk stream."""
    skip, left = offset, length
    for chunk in chunks:
        if skip:
            if len(chunk) <= skip:
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
        if left is not None:
            if len(chunk) >= left:
                if left:
                    yield chunk[:left]
                return
            left -= len(chunk)
        if chunk:
            yield chunk


class _Indexable(glance_store.Indexable):
    """As http.py's: glance indexes into the data when copying it to another store."""

    def another(self) -> bytes:
        try:
            return next(self.wrapped)
        except StopIteration:
            return b""


class Store(glance_store.driver.Store):
    """Reads images from the regional glances; writes nothing."""

    _CAPABILITIES = (
        capabilities.BitMasks.READ_ACCESS
        | capabilities.BitMasks.READ_OFFSET
        | capabilities.BitMasks.READ_CHUNK
        | capabilities.BitMasks.WRITE_ACCESS
        | capabilities.BitMasks.DRIVER_REUSABLE
    )
    OPTIONS = OPTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._map: storemap.StoreMap | None = None
        self._clients: dict[str, Any] = {}

    def get_schemes(self) -> tuple[str, ...]:
        return (CASCADED_SCHEME,)

    def _config_path(self) -> str:
        if self.backend_group:
            return getattr(self.conf, self.backend_group).cascaded_store_config
        return self.conf.glance_store.cascaded_store_config

    def _store_map(self) -> storemap.StoreMap:
        if self._map is None:
            path = self._config_path()
            try:
                self._map = storemap.load(path, storemap.Role.DRIVER)
            except GlanceSyncError as exc:
                raise gs_exc.BadStoreConfiguration(store_name=CASCADED_SCHEME, reason=str(exc)) from None
        return self._map

    def client(self, region: str) -> Any:
        """The glanceclient of ``region``, built once; BadStoreUri for an unknown region."""
        with self._lock:
            if region in self._clients:
                return self._clients[region]
            try:
                endpoint = self._store_map().region(region).glance
                sess = glance.make_session(endpoint)
                sess.timeout = min(sess.timeout or REGION_TIMEOUT, REGION_TIMEOUT)
                client = glance.make_client(endpoint, sess)
            except GlanceSyncError as exc:
                raise gs_exc.BadStoreUri(message=f"cascaded region {region!r}: {exc}") from None
            self._clients[region] = client
            return client

    def _regional_image(self, loc: StoreLocation) -> Any:
        try:
            return self.client(loc.region).images.get(loc.image_id)
        except gs_exc.GlanceStoreException:
            raise
        except Exception as exc:
            raise self._translate(exc, loc) from None

    @staticmethod
    def _translate(exc: BaseException, loc: StoreLocation) -> gs_exc.GlanceStoreException:
        where = cascaded_url(loc.region, loc.image_id)
        if glance.is_not_found(exc):
            return gs_exc.NotFound(message=f"{where}: no such image in region {loc.region}")
        return gs_exc.RemoteServiceUnavailable(message=f"{where}: {type(exc).__name__}: {str(exc)[:300]}")

    def get_size(self, location: Any, context: Any = None) -> int:
        """The size of the regional copy; glance answers 400 for a copy without data."""
        loc = location.store_location
        image = self._regional_image(loc)
        size = image.get("size") if hasattr(image, "get") else getattr(image, "size", None)
        if not size:
            raise gs_exc.BadStoreUri(
                message=f"{cascaded_url(loc.region, loc.image_id)}: regional image has no data "
                f"(status {image.get('status') if hasattr(image, 'get') else '?'})"
            )
        return int(size)

    @capabilities.check
    def get(self, location: Any, offset: int = 0, chunk_size: int | None = None, context: Any = None) -> tuple:
        """``(iterator, length)`` of the regional data from ``offset``, ``chunk_size`` bytes long."""
        loc = location.store_location
        size = self.get_size(location, context)
        length = min(chunk_size, max(0, size - offset)) if chunk_size else max(0, size - offset)
        try:
            # A whole read is checked against the regional image's hash by
            # glanceclient; a ranged read cannot be.
            whole = not offset and (chunk_size is None or chunk_size >= size)
            data = self.client(loc.region).images.data(loc.image_id, do_checksum=whole)
        except Exception as exc:
            raise self._translate(exc, loc) from None
        if data is None:
            raise gs_exc.NotFound(message=f"{cascaded_url(loc.region, loc.image_id)}: regional image has no data")
        chunks = _slice(data, offset, chunk_size)
        return _Indexable(chunks, length), length

    def add(self, *args: Any, **kwargs: Any) -> Any:
        raise gs_exc.StoreAddDisabled(reason="the cascaded store is read-only; regions receive copies via the agents")

    def delete(self, location: Any, context: Any = None) -> None:
        """Nothing to do here: the coordinator removes regional copies asynchronously."""
        loc = location.store_location
        LOG.debug("cascaded store: delete of %s left to the sync coordinator", loc.get_uri())
