"""Glance calls of the coordinator, run in a thread pool so the poll loop never waits on HTTP.

Three jobs, each answered through ``results()`` (the loop writes the journal; these
threads never touch it):

- ``register``: a copy task came back ``done``.  The agent's word is not enough (any
  allow-listed key could claim to be an agent): read the cascading image and the
  regional image itself, with that region's credentials, and compare them with
  glancesync.verify (glance itself never checks the bytes behind a location, so a
  mismatch must never be registered); only then add ``cascaded://<region>/<id>``
  with metadata ``{"region": region}`` unless the image already lists it.  "already
  exists" from glance counts as done.  The agent's report serves only to link two
  different hashing algorithms (doc/verification.md).  Copies that finished while a
  job waited go together: one listing per region of their regional images (``id=in:``;
  what it leaves out is read alone), then per image one read of the cascading image,
  one PATCH adding every location and one read after (a PATCH refused as a whole
  because one location appeared meanwhile is redone one location at a time).
- ``unregister``: a delete task came back ``done``.  Remove that region's location if
  the image still exists and keeps another one (glance refuses to remove the last).
- ``fetch``: the image record (with locations) an event is planned from: one GET (an
  import still on its way is fetched again later by the loop).  For a snapshot
  (coordinator/snapshot.py) also the image of the region that made it, read with that
  region's credentials; a registration of a snapshot's copy verifies against those
  recorded values (the task's image), since the cascading image has no bytes of its own.

Every request carries ``INTERNAL_REQUEST_HEADER`` signed with the shared secret
(glancesync.marker, set up by ``cascading_endpoint``) so that the glance_proxy
filter makes no event of the coordinator's own changes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import zlib
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from coordinator import reconciler, snapshot
from coordinator.journal import EventRow, TaskRow
from coordinator.regionalreads import RegionalReads
from glancesync import glance, marker, protocol, verify
from glancesync.exceptions import ConfigError, GlanceError, GlanceSyncError, VerificationError
from glancesync.opts import GLANCE_GROUP
from glancesync.storemap import DEFAULT_HTTP_TIMEOUT, GlanceEndpoint, StoreMap

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    attempt: int
    ok: bool
    reason: str = ""
    retryable: bool = True
    os_hash_value: str | None = None
    # The regional copy is missing or not usable yet: the transfer must be done again
    # (any other retryable failure retries the registration only, keeping the copy).
    redo_transfer: bool = False


@dataclass(frozen=True)
class FetchResult:
    event_id: str
    image: dict[str, Any] | None
    error: GlanceSyncError | None = None
    # The members of a shared image ({"member_id", "status"}); None for any other image.
    members: list[dict[str, str]] | None = None
    # A snapshot's region and its image there; None for any other image.
    snapshot: snapshot.Snapshot | None = None


@dataclass
class ReconcileResult:
    drift: reconciler.Drift | None
    error: GlanceSyncError | None = None


GlanceResult = TaskResult | FetchResult | ReconcileResult


def cascading_endpoint(conf: cfg.ConfigOpts, storemap: StoreMap | None) -> GlanceEndpoint:
    """The cascading glance: ``cascading_endpoint_url`` + ``[cascading_glance]``, else glance_store.yaml."""
    group = conf.cascading_glance
    url = conf.cascading_endpoint_url
    if url is None and group.auth_type is None and storemap and storemap.cascading_glance:
        base = storemap.cascading_glance
    else:
        auth: dict[str, Any] = {"auth_type": group.auth_type or "none"}
        if auth["auth_type"] not in ("none", "noauth"):
            plugin = ks_loading.get_plugin_loader(auth["auth_type"])
            # Only auth_type is registered up front: the plugin's own options (auth_url,
            # username, ...) must be registered before they can be read.
            conf.register_opts(ks_loading.get_auth_plugin_conf_options(plugin), group=GLANCE_GROUP)
            for opt in plugin.get_options():
                value = getattr(group, opt.dest, None)
                if value is not None:
                    auth[opt.dest] = value
        if url is None and auth["auth_type"] in ("none", "noauth"):
            raise ConfigError(source="[DEFAULT] cascading_endpoint_url",
                              detail="required when [cascading_glance] auth_type is none")
        base = GlanceEndpoint(url=url, auth=auth, headers=dict(group.identity_headers or {}),
                              verify=(group.cafile or not group.insecure), region_name=group.region_name,
                              interface=group.interface, timeout=group.timeout or DEFAULT_HTTP_TIMEOUT)
    # A loop-guard header from any other source must never reach glance as ours.
    headers = {k: v for k, v in base.headers.items() if k.lower() != protocol.INTERNAL_REQUEST_HEADER.lower()}
    secret = None
    if conf.sync_internal_secret_file:
        secret = marker.load_secret(conf.sync_internal_secret_file)  # KeyLoadError: refuse to start
    else:
        LOG.warning("[DEFAULT] sync_internal_secret_file is not set: the coordinator's own location "
                    "changes come back as locations_changed events (planned as nothing)")
    return dataclasses.replace(base, headers=headers, internal_secret=secret)


LOCATION_LOCK_STRIPES = 64
JSON_PATCH = "application/openstack-images-v2.1-json-patch"


class Registrar:
    """The thread pool and its result queue.

    ``client_factory()`` gives a cascading glance client and ``regional_client_factory(region)``
    a client of that region's glance (its own credentials); each thread builds its
    own clients on first use, since a keystoneauth1 session is not shared across threads.
    """

    def __init__(self, client_factory: Callable[[], Any], workers: int, endpoint_name: str, *,
                 regional_client_factory: Callable[[str], Any]) -> None:
        self.client_factory = client_factory
        self.regional_client_factory = regional_client_factory
        self.endpoint_name = endpoint_name
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glance")
        self._results: queue.SimpleQueue[GlanceResult] = queue.SimpleQueue()
        self._local = threading.local()
        # Glance rewrites an image's whole location set on every location PATCH, so two
        # concurrent adds to one image lose one of them (seen with two regions finishing
        # together). Location changes of one image therefore run one at a time; striped
        # locks keep that without a lock per image id ever seen.
        self._location_locks = [threading.Lock() for _ in range(LOCATION_LOCK_STRIPES)]
        # Copy tasks waiting for their image's registration job, per image id.
        self._waiting: dict[str, list[TaskRow]] = {}
        self._waiting_lock = threading.Lock()
        # The first stage of ``register``: regional images read one listing per region.
        self.reads = RegionalReads(self.pool.submit, self._regional_client, self._queue_image)
        self.gathering = self.reads.gathering

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def results(self) -> list[GlanceResult]:
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.client_factory()
        return client

    def _regional_client(self, region: str) -> Any:
        clients = getattr(self._local, "regional", None)
        if clients is None:
            clients = self._local.regional = {}
        if region not in clients:
            clients[region] = self.regional_client_factory(region)
        return clients[region]

    def _run(self, job: Callable[[], GlanceResult], fallback: Callable[[Exception], Any]) -> None:
        try:
            result = job()
        except Exception as exc:  # a thread must always answer, whatever went wrong
            LOG.exception("glance job failed unexpectedly")
            result = fallback(exc)
        self._results.put(result)

    def register(self, task: TaskRow) -> None:
        """Verify and register ``task``'s copy, together with the other regions of its image that
        finished meanwhile: one read of the cascading image and one PATCH for all of them,
        after one listing per region of the regional images (coordinator/regionalreads.py)."""
        self.reads.add(task)

    def _queue_image(self, task: TaskRow) -> None:
        with self._waiting_lock:
            waiting = self._waiting.setdefault(task.image_id, [])
            waiting.append(task)
            if len(waiting) > 1:
                return  # a job of this image is queued and takes it along
        self.pool.submit(self._register_image, task.image_id)

    def _register_image(self, image_id: str) -> None:
        with self._location_lock(image_id):
            with self._waiting_lock:
                batch = self._waiting.pop(image_id, [])
            if not batch:
                return
            try:
                results = self._register_batch(image_id, batch)
            except Exception as exc:  # a thread must always answer, whatever went wrong
                LOG.exception("glance job failed unexpectedly")
                results = [TaskResult(t.task_id, t.attempt, False, f"registration: {exc}") for t in batch]
        for result in results:
            self._results.put(result)

    def unregister(self, task: TaskRow) -> None:
        fail = lambda exc: TaskResult(task.task_id, task.attempt, False, f"unregistration: {exc}")  # noqa: E731
        self.pool.submit(self._run, lambda: self._unregister(task), fail)

    def fetch(self, event: EventRow, regions: Collection[str] | None = None) -> None:
        """Fetch ``event``'s image; a snapshot of one of ``regions`` (all: None) with its regional image."""
        fail = lambda exc: FetchResult(event.event_id, None, GlanceError(  # noqa: E731
            endpoint=self.endpoint_name, detail=str(exc)))
        self.pool.submit(self._run, lambda: self._fetch(event, regions), fail)

    def reconcile(self, read: Callable[[], reconciler.Inputs]) -> None:
        """Compare the glances with what the journal knows (``read()``, in the pool; see reconciler.py)."""
        fail = lambda exc: ReconcileResult(None, GlanceError(endpoint=self.endpoint_name, detail=str(exc)))  # noqa: E731
        self.pool.submit(self._run, lambda: self._reconcile(read), fail)

    def _reconcile(self, read: Callable[[], reconciler.Inputs]) -> ReconcileResult:
        try:
            return ReconcileResult(reconciler.scan(self._client(), self._regional_client, read(),
                                                   self.endpoint_name))
        except GlanceSyncError as exc:
            return ReconcileResult(None, exc)

    def _get(self, image_id: str) -> dict[str, Any] | None:
        return glance.get_image(self._client(), image_id, self.endpoint_name)

    def _location_lock(self, image_id: str) -> threading.Lock:
        return self._location_locks[zlib.crc32(image_id.encode()) % LOCATION_LOCK_STRIPES]

    def _register_batch(self, image_id: str, batch: list[TaskRow]) -> list[TaskResult]:
        def result(task: TaskRow, ok: bool, reason: str = "", retryable: bool = True, h: str | None = None,
                   redo: bool = False) -> TaskResult:
            return TaskResult(task.task_id, task.attempt, ok, reason, retryable, h, redo)

        listed = self.reads.take(batch)
        try:
            image = self._get(image_id)
        except GlanceSyncError as exc:
            LOG.warning("image %s: not registered: %s", image_id, exc)
            return [result(t, False, str(exc), exc.retryable) for t in batch]
        if image is None:
            return [result(t, False, "the cascading image no longer exists", False) for t in batch]
        present = {loc.get("url") for loc in image.get("locations") or []}
        validation = snapshot.validation_data(image, [task.payload for task in batch])
        done: list[TaskResult] = []
        to_add: list[tuple[TaskRow, str]] = []
        for task in batch:
            try:
                self._verify_regional(task, image, listed.get(task.task_id))
            except GlanceSyncError as exc:
                LOG.warning("image %s region %s: not registered: %s", image_id, task.region, exc)
                redo = isinstance(exc, VerificationError) and exc.retryable
                done.append(result(task, False, str(exc), exc.retryable, redo=redo))
                continue
            url = protocol.cascaded_url(task.region, image_id)
            if url in present:
                LOG.info("image %s: location %s already registered", image_id, url)
                done.append(result(task, True, h=snapshot.recorded_hash(task.payload, image)))
            else:
                to_add.append((task, url))
        if to_add:
            try:
                self._add_locations(image_id, [(url, task.region) for task, url in to_add], validation)
            except GlanceSyncError as exc:
                LOG.warning("image %s: %d location(s) not registered: %s", image_id, len(to_add), exc)
                return done + [result(task, False, str(exc), exc.retryable) for task, _url in to_add]
            done += [result(task, True, h=snapshot.recorded_hash(task.payload, image)) for task, _url in to_add]
        return done

    def _verify_regional(self, task: TaskRow, image: dict[str, Any], listed: dict[str, Any] | None = None) -> None:
        """Compare the regional image, read with the region's own credentials, with ``image``.

        ``listed``: the regional record a listing showed after the agent's ``done``; without
        it the image is read now.  A region holding other bytes under this id needs an
        operator (not retryable); a regional image missing or not active yet is retried.
        """
        where = f"glance of region {task.region}"
        regional = listed if listed is not None else glance.get_image(
            self._regional_client(task.region), task.image_id, where)
        if regional is None:
            raise VerificationError(image_id=task.image_id, retryable=True,
                                    detail=f"the agent reported done, but {where} has no such image")
        expected = verify.Digest.of_record(image, "cascading image")
        if snapshot.task_region(task.payload) is not None:
            # The cascading image of a snapshot holds no bytes: the values recorded from
            # the region that made it (the task's image) are what every copy must have.
            expected = verify.Digest.of_record(task.payload.get("image") or {},
                                               f"snapshot recorded in {snapshot.task_region(task.payload)}")
        verify.verify(expected,
                      verify.Digest.of_record(regional, f"{task.region} image"),
                      image_id=task.image_id,
                      via=verify.Digest.of_report(task.report or {}, f"the {task.region} agent's report"))

    def _add_locations(self, image_id: str, locations: list[tuple[str, str]],
                       validation: dict[str, Any] | None = None) -> None:
        """Add every (url, region) location in one PATCH, then believe only what the image says.

        ``validation``: the hashes a queued snapshot's cascading image takes with its first
        added location (glance then makes it active with them).
        """
        if len(locations) == 1:
            self._add_location(image_id, *locations[0], validation=validation)
            return
        ops = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {"region": region}}}
               for url, region in locations]
        if validation:
            ops[0]["value"]["validation_data"] = validation
        client = self._client()
        try:
            client.http_client.patch(f"/v2/images/{image_id}", headers={"Content-Type": JSON_PATCH},
                                     data=json.dumps(ops))
        except Exception as exc:
            code = getattr(exc, "code", None) or getattr(exc, "http_status", None)
            if isinstance(code, int) and 400 <= code < 500:
                # Refused as a whole (the PATCH is all or nothing), e.g. one location appeared
                # meanwhile ("already exists"): one location at a time, each judged on its own.
                LOG.info("image %s: adding %d locations at once refused (%s); one at a time", image_id,
                         len(locations), code)
                for url, region in locations:
                    self._add_location(image_id, url, region, validation=validation)
                    validation = None  # the image is active after the first one
                return
            raise glance.translate(exc, self.endpoint_name) from exc
        after = {loc.get("url") for loc in (self._get(image_id) or {}).get("locations") or []}
        missing = [url for url, _region in locations if url not in after]
        if missing:
            raise GlanceError(endpoint=self.endpoint_name, retryable=True,
                              detail=f"location(s) {', '.join(missing)} missing after they were added "
                                     "(concurrent location change?)")
        LOG.info("image %s: registered locations %s", image_id, ", ".join(url for url, _region in locations))

    def _add_location(self, image_id: str, url: str, region: str, validation: dict[str, Any] | None = None) -> None:
        try:
            extra = {"validation_data": validation} if validation else {}
            updated = self._client().images.add_location(image_id, url, {"region": region}, **extra)
        except Exception as exc:
            if getattr(exc, "code", None) == 400 and "already exists" in str(exc):
                LOG.info("image %s: location %s already registered", image_id, url)
                return
            if validation and getattr(exc, "code", None) == 409:
                # Glance takes only its own hashing_algorithm: the image is made active
                # with the size alone; the copies were verified against the recorded hashes.
                LOG.warning("image %s: glance refused the snapshot's hashes (%s); location added without them",
                            image_id, exc)
                self._add_location(image_id, url, region)
                return
            raise glance.translate(exc, self.endpoint_name) from exc
        # A concurrent location change by someone else can still drop ours inside
        # glance: believe only what the image says afterwards.
        if url not in [loc.get("url") for loc in (updated or {}).get("locations") or []]:
            raise GlanceError(endpoint=self.endpoint_name, retryable=True,
                              detail=f"location {url} missing after it was added (concurrent location change?)")
        LOG.info("image %s: registered location %s", image_id, url)

    def _unregister(self, task: TaskRow) -> TaskResult:
        with self._location_lock(task.image_id):
            return self._unregister_locked(task)

    def _unregister_locked(self, task: TaskRow) -> TaskResult:
        try:
            image = self._get(task.image_id)
            url = protocol.cascaded_url(task.region, task.image_id)
            urls = [loc.get("url") for loc in (image or {}).get("locations") or []]
            if image is None or url not in urls:
                return TaskResult(task.task_id, task.attempt, True)
            if len(urls) <= 1:
                LOG.warning("image %s: %s is its last location; glance refuses to remove it, left in place",
                            task.image_id, url)
                return TaskResult(task.task_id, task.attempt, True)
            glance.call(lambda: self._client().images.delete_locations(task.image_id, {url}),
                        self.endpoint_name, missing=None)
            LOG.info("image %s: removed location %s", task.image_id, url)
        except GlanceSyncError as exc:
            return TaskResult(task.task_id, task.attempt, False, str(exc), exc.retryable)
        return TaskResult(task.task_id, task.attempt, True)

    def _fetch(self, event: EventRow, regions: Collection[str] | None = None) -> FetchResult:
        # One GET and back: an import still on its way is fetched again later by the
        # loop, so no thread of this small pool ever sleeps waiting for it.
        try:
            image = self._get(event.image_id)
            members = glance.shared_members(self._client(), image, self.endpoint_name)
            made = None
            region = snapshot.source_region(image, regions) if event.kind != "deleted" else None
            if region is not None:
                regional = glance.get_image(self._regional_client(region), event.image_id,
                                            f"glance of region {region}")
                made = snapshot.Snapshot(region, regional)
        except GlanceSyncError as exc:
            return FetchResult(event.event_id, None, exc)
        return FetchResult(event.event_id, image, members=members, snapshot=made)
