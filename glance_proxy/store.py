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
- Both read with the driver's own (admin) credentials, so both first authorize the
  caller of the cascading glance (``context``) against the regional image record,
  as glance would (:func:`may_read`): admin, the owning project, a public or
  community image, or an *accepted* member of a shared one.  Anyone else, and a
  call without a context, gets ``NotFound``, exactly what a missing image gives, so
  a refusal says nothing about whether the image exists.  Without this a project
  member could point an image of theirs at ``cascaded://<region>/<someone else's
  private image>`` and read it (a confused deputy); doc/store-driver.md.
- ``delete()``: returns at once.  Glance calls it inside the user's DELETE (once
  per cascaded location); regional copies are removed by the coordinator, later.
- ``add()``: refused.  ``WRITE_ACCESS`` is declared only because glance never calls
  ``delete()`` on a store without it.

Regions, endpoints and credentials come from ``glance_store.yaml``
(``[glance_store] cascaded_store_config``), loaded once; a glanceclient per region
is built once and reused (``DRIVER_REUSABLE``).  Image records, memberships and
decisions are never cached: each read asks the regional glance again, so one
caller's authorization can never serve another.  Enable the driver with
``[glance_store] stores = file,http,cascaded``.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
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


# Visibilities that let every project read an image (glance's is_image_visible).
OPEN_VISIBILITIES = frozenset({"public", "community"})


def _field(record: Any, name: str) -> Any:
    """A field of a glanceclient model, a plain dict or an object."""
    return record.get(name) if hasattr(record, "get") else getattr(record, name, None)


def may_read(context: Any, image: Any, member_status: Callable[[str], str | None]) -> bool:
    """Whether the caller of ``context`` may read the regional ``image`` through us.

    Glance's own rule for a download, on the regional record: admin; or the
    caller's project owns it; or it is public or community; or it is shared and the
    caller's project is a member whose status (``member_status(project_id)``, asked
    of the regional glance) is ``accepted``.  Stricter than glance in one place:
    glance lets a pending or rejected member read a shared image it can name, we
    do not.  Like glance, a deactivated image is readable by admins only.
    """
    if context is None:
        return False
    if getattr(context, "is_admin", False) is True:
        return True
    if _field(image, "status") == "deactivated":
        return False
    if _field(image, "visibility") in OPEN_VISIBILITIES:
        return True
    project = getattr(context, "project_id", None)
    if not project:
        # No project: nothing below can match (an ownerless private image must not
        # match a projectless caller).
        return False
    if _field(image, "owner") == project:
        return True
    return _field(image, "visibility") == "shared" and member_status(project) == "accepted"


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

    def _member_status(self, loc: StoreLocation, project: str) -> str | None:
        """The status of ``project``'s membership of the regional image, None if not a member."""
        try:
            member = self.client(loc.region).image_members.get(loc.image_id, project)
        except Exception as exc:
            if not glance.is_not_found(exc):
                # Refuse rather than answer with another error: which error a
                # caller gets must not tell it that the image exists and is shared.
                LOG.warning("cascaded store: membership of %s in %s unknown, read refused: %s",
                            project, loc.get_uri(), type(exc).__name__)
            return None
        return _field(member, "status")

    def _authorized_image(self, loc: StoreLocation, context: Any) -> Any:
        """The regional image record, once the caller of ``context`` may read it; NotFound otherwise."""
        if context is None:
            # glance passes the request context on every read we serve (a download,
            # a location add, a location import's hash, the cache prefetcher's admin
            # context); a read without one has no caller to authorize.
            LOG.warning("cascaded store: read of %s without a request context refused", loc.get_uri())
            raise self._not_found(loc)
        image = self._regional_image(loc)
        if not may_read(context, image, lambda project: self._member_status(loc, project)):
            LOG.info("cascaded store: project %s may not read %s; answered as missing",
                     getattr(context, "project_id", None), loc.get_uri())
            raise self._not_found(loc)
        return image

    @staticmethod
    def _not_found(loc: StoreLocation) -> gs_exc.NotFound:
        return gs_exc.NotFound(
            message=f"{cascaded_url(loc.region, loc.image_id)}: no such image in region {loc.region}"
        )

    @staticmethod
    def _translate(exc: BaseException, loc: StoreLocation) -> gs_exc.GlanceStoreException:
        where = cascaded_url(loc.region, loc.image_id)
        if glance.is_not_found(exc):
            return Store._not_found(loc)
        return gs_exc.RemoteServiceUnavailable(message=f"{where}: {type(exc).__name__}: {str(exc)[:300]}")

    def get_size(self, location: Any, context: Any = None) -> int:
        """The size of the regional copy, for a caller who may read it; 400 for a copy without data."""
        loc = location.store_location
        image = self._authorized_image(loc, context)
        size = _field(image, "size")
        if not size:
            raise gs_exc.BadStoreUri(
                message=f"{cascaded_url(loc.region, loc.image_id)}: regional image has no data "
                f"(status {_field(image, 'status')})"
            )
        return int(size)

    @capabilities.check
    def get(self, location: Any, offset: int = 0, chunk_size: int | None = None, context: Any = None) -> tuple:
        """``(iterator, length)`` of the regional data from ``offset``, ``chunk_size`` bytes long.

        Authorized by get_size(), on the same call: nothing is remembered between calls.
        """
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
