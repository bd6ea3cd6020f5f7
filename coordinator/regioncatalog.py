"""Which regions the coordinator syncs: those of glance_store.yaml, or those of the keystone catalog.

:class:`LiveRegions` is the one answer to "which regions are live": a mapping of region
name to its glance_store.yaml entry that the planner, the reconciler, operators' requests,
status and metrics all read.  With ``[coordinator] region_source = config`` it is
glance_store.yaml's regions, fixed.  With ``catalog`` it is re-read every
``catalog_refresh_interval`` seconds from the image-service endpoints of the keystone
catalog (:class:`CatalogReader`, in a thread of its own so a slow keystone never holds the
loop); a region is live only when it is in the catalog *and* glance_store.yaml names it,
since its credentials and work directory still come from there.  The cascading glance's
own endpoint, compared by :func:`normalise_url`, is never taken for a region.  A read
that fails keeps the last good answer: a keystone outage must not stop every region.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from glancesync import glance
from glancesync.exceptions import ConfigError, GlanceError
from glancesync.storemap import GlanceEndpoint, Region, StoreMap

LOG = logging.getLogger(__name__)
IMAGE_SERVICE = "image"
DEFAULT_PORTS = {"http": 80, "https": 443}
# "/v2", "/v2.0", "/v1.1" at the end of an endpoint's path: glance endpoints are
# registered with and without one, and name the same API either way.
_VERSION_SUFFIX = re.compile(r"/v\d+(\.\d+)*$", re.IGNORECASE)


def normalise_url(url: str) -> str:
    """``url`` reduced to what names an endpoint: scheme, host, port, path without trailing slash
    and version suffix (``HTTP://Glance:80/image/v2/`` and ``http://glance/image`` are one)."""
    parsed = urllib.parse.urlsplit(url.strip())
    scheme = parsed.scheme.lower()
    host = (parsed.hostname or "").lower()
    try:
        port = parsed.port
    except ValueError:  # "http://host:99999": not an endpoint anything can reach; kept apart
        port = None
    port = port or DEFAULT_PORTS.get(scheme)
    if ":" in host:
        host = f"[{host}]"
    path = _VERSION_SUFFIX.sub("", parsed.path.rstrip("/")).rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


@dataclass(frozen=True)
class Discovery:
    """One read of the catalog: each region's image endpoint, and regions whose only one is the cascading glance."""

    regions: Mapping[str, str]
    cascading: tuple[str, ...] = ()
    cascading_url: str | None = None


def image_endpoints(catalog: Any, interface: str) -> dict[str, list[str]]:
    """Region -> URLs of its image endpoints of ``interface`` in a keystoneauth1 ServiceCatalog."""
    found: dict[str, list[str]] = {}
    for data in catalog.get_endpoints_data(service_type=IMAGE_SERVICE, interface=interface).get(IMAGE_SERVICE, []):
        if data.region_name and data.url:
            found.setdefault(data.region_name, []).append(data.url)
    return found


def discover(endpoints: Mapping[str, list[str]], cascading_url: str | None) -> Discovery:
    """The regions of ``endpoints`` whose image endpoint is not the cascading glance's."""
    cascading = normalise_url(cascading_url) if cascading_url else None
    regions: dict[str, str] = {}
    only_cascading = []
    for region, urls in endpoints.items():
        own = [url for url in urls if normalise_url(url) != cascading]
        if own:
            regions[region] = own[0]
        else:
            only_cascading.append(region)
    return Discovery(regions, tuple(sorted(only_cascading)), cascading_url)


class CatalogReader:
    """Reads the catalog with the cascading glance's credentials; called from one thread only
    (a keystoneauth1 session is not shared across threads)."""

    def __init__(self, endpoint: GlanceEndpoint, interface: str) -> None:
        # Without the loop-guard secret: with no URL its signing adapter would take every
        # request of the session, keystone's included, and keystone has no use for our marker.
        self.endpoint = dataclasses.replace(endpoint, internal_secret=None)
        self.interface = interface
        self._session: Any = None

    def __call__(self) -> Discovery:
        if self._session is None:
            self._session = glance.make_session(self.endpoint)
        sess = self._session
        # A new token brings the catalog as it is now, not as it was at the last login.
        sess.auth.invalidate()
        access = sess.auth.get_access(sess)
        cascading = self.endpoint.url or sess.get_endpoint(
            service_type=IMAGE_SERVICE, interface=self.endpoint.interface, region_name=self.endpoint.region_name)
        return discover(image_endpoints(access.service_catalog, self.interface), cascading)


@dataclass
class _Reported:
    """Problems already logged, so each is logged once while it lasts (again if it comes back)."""

    seen: set[tuple[str, str]] = field(default_factory=set)

    def new(self, current: set[tuple[str, str]]) -> list[tuple[str, str]]:
        fresh = sorted(current - self.seen)
        self.seen = current
        return fresh


class LiveRegions(Mapping[str, Region]):
    """The regions synced now: glance_store.yaml's, or (with a reader) those also in the catalog."""

    def __init__(self, configured: Mapping[str, Region], reader: Callable[[], Discovery] | None = None,
                 interval: float = 300.0) -> None:
        self.configured = dict(configured)
        self.reader = reader
        self.interval = interval
        self.source = "config" if reader is None else "catalog"
        self._live: dict[str, Region] = dict(configured) if reader is None else {}
        # Until the first read, nothing is planned: an event planned for no region would never
        # get its copies from the event itself.
        self.ready = reader is None
        self.catalog_urls: dict[str, str] = {}
        self._next_read = 0.0
        self._future: Future[Discovery] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="catalog") if reader is not None else None
        self._reported = _Reported()

    def __getitem__(self, name: str) -> Region:
        return self._live[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def refresh(self, now: float) -> None:
        """Loop step: start a catalog read when one is due, apply it once it finished."""
        if self._pool is None or self.reader is None:
            return
        if self._future is not None:
            if not self._future.done():
                return
            future, self._future = self._future, None
            self._next_read = now + self.interval
            try:
                self.apply(future.result())
            except Exception as exc:  # keystone down, a bad answer: keep the last good regions
                LOG.error("keystone catalog not read (%s: %s); regions stay %s, next read in %.0f s",
                          type(exc).__name__, exc, ", ".join(self._live) or "none", self.interval)
            return
        if now >= self._next_read:
            self._future = self._pool.submit(self.reader)

    def read_now(self) -> None:
        """Read the catalog in this thread (``glance-sync-manage plan``); GlanceError when it cannot."""
        if self.reader is None:
            return
        try:
            found = self.reader()
        except Exception as exc:  # keystoneauth1's errors, a bad catalog
            raise GlanceError(endpoint="keystone catalog", detail=f"{type(exc).__name__}: {exc}") from None
        self.apply(found)

    def apply(self, found: Discovery) -> None:
        """Make the regions of ``found`` that glance_store.yaml names the live ones; log the others once."""
        problems = {("cascading", r) for r in found.cascading}
        problems |= {("no_entry", r) for r in found.regions if r not in self.configured}
        problems |= {("not_in_catalog", r) for r in self.configured if r not in found.regions}
        for kind, region in self._reported.new(problems):
            if kind == "cascading":
                LOG.info("region %s: its image endpoint in the catalog is the cascading glance (%s); "
                         "not a sync target", region, found.cascading_url)
            elif kind == "no_entry":
                LOG.warning("region %s is in the keystone catalog (%s) but not in glance_store.yaml: no "
                            "credentials or work dir for it; not synced", region, found.regions[region])
            else:
                LOG.warning("region %s is in glance_store.yaml but has no image endpoint of this interface "
                            "in the keystone catalog; not synced", region)
        live = {name: region for name, region in self.configured.items() if name in found.regions}
        if not self.ready or set(live) != set(self._live):
            LOG.info("regions synced (keystone catalog): %s", ", ".join(live) or "none")
        self.catalog_urls = {name: found.regions[name] for name in live}
        self._live = live
        self.ready = True

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def live_regions(group: Any, stores: StoreMap, cascading: GlanceEndpoint) -> LiveRegions:
    """The LiveRegions ``[coordinator] region_source`` asks for; ConfigError when the catalog cannot be read."""
    if group.region_source != "catalog":
        return LiveRegions(stores.regions)
    if cascading.auth.get("auth_type", "none") in ("none", "noauth"):
        raise ConfigError(source="[coordinator] region_source",
                          detail="catalog needs keystone credentials in [cascading_glance] (auth_type is none)")
    LOG.info("regions come from the keystone catalog (%s image endpoints), read every %.0f s",
             group.catalog_interface, group.catalog_refresh_interval)
    return LiveRegions(stores.regions, CatalogReader(cascading, group.catalog_interface),
                       group.catalog_refresh_interval)
