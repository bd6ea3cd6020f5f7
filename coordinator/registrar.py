"""Where and when the coordinator's glance jobs run, so the poll loop never waits on HTTP.

The jobs themselves (coordinator/glancejobs.py: verify and register copies, remove a
location, fetch an event's image) run in a thread pool; with ``[coordinator]
glance_worker_mode = processes`` each thread hands its job to a worker process of its own
(coordinator/glanceprocs.py), so their HTTP and JSON work does not take the loop's GIL.
Either way the results come back through ``results()`` and the loop writes the journal.

What stays here, in the coordinator's process: the scheduling.  Copies reported done are
first read one listing per region (coordinator/regionalreads.py); copies of one image that
finished while its registration job waited go together (one read of the cascading image,
one PATCH adding every location, believed from glance's answer to it); and the location
changes of one image run one at a time, since glance rewrites the whole location set on
each PATCH.  The reconciler's pass (which reads the journal) always runs in a thread of this
process.

Every request to the cascading glance carries ``INTERNAL_REQUEST_HEADER`` signed with the
shared secret (glancesync.marker, set up by ``cascading_endpoint``) so that the
glance_proxy filter makes no event of the coordinator's own changes.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import zlib
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from coordinator import glancejobs, reconciler
from coordinator.glancejobs import Clients, FetchResult, GlanceResult, ReconcileResult, TaskResult
from coordinator.glanceprocs import WorkerProcesses
from coordinator.journal import EventRow, TaskRow
from coordinator.regionalreads import RegionalReads
from glancesync import marker, protocol
from glancesync.exceptions import ConfigError, GlanceError, GlanceSyncError
from glancesync.opts import GLANCE_GROUP
from glancesync.storemap import DEFAULT_HTTP_TIMEOUT, GlanceEndpoint, StoreMap

LOG = logging.getLogger(__name__)


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



__all__ = ["FetchResult", "GlanceResult", "ReconcileResult", "Registrar", "TaskResult", "cascading_endpoint"]
LOCATION_LOCK_STRIPES = 64


class Registrar:
    """The thread pool, the scheduling of its jobs and their result queue.

    ``client_factory()`` gives a cascading glance client and ``regional_client_factory(region)``
    a client of that region's glance (its own credentials); each thread builds its own
    clients on first use, since a keystoneauth1 session is not shared across threads.
    ``processes``: run the glance jobs in these worker processes (they build their own
    clients); the threads then only carry each job there and its result back.
    """

    def __init__(self, client_factory: Callable[[], Any], workers: int, endpoint_name: str, *,
                 regional_client_factory: Callable[[str], Any], processes: WorkerProcesses | None = None) -> None:
        self.client_factory = client_factory
        self.regional_client_factory = regional_client_factory
        self.endpoint_name = endpoint_name
        self.processes = processes
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glance")
        self._results: queue.SimpleQueue[GlanceResult] = queue.SimpleQueue()
        # Called after each result is queued: the service's Doorbell wakes its poll (wakeups.py).
        self.on_result: Callable[[], None] = lambda: None
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
        self.reads = RegionalReads(self.pool.submit, self._list_regional, self._queue_image)
        self.gathering = self.reads.gathering

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.processes is not None:
            self.processes.shutdown()

    def results(self) -> list[GlanceResult]:
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def _clients(self) -> Clients:
        """This thread's glance clients (the reconciler's, and every job's without worker processes)."""
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = Clients(self.client_factory, self.regional_client_factory,
                                                    self.endpoint_name)
        return clients

    def _call(self, job: Callable[..., Any], *args: Any) -> Any:
        """``job(clients, *args)`` (a function of coordinator/glancejobs.py), in this thread or its worker."""
        if self.processes is not None:
            return self.processes.call(job, *args)
        return job(self._clients(), *args)

    def _run(self, job: Callable[[], GlanceResult], fallback: Callable[[Exception], Any]) -> None:
        try:
            result = job()
        except Exception as exc:  # a thread must always answer, whatever went wrong
            if isinstance(exc, GlanceSyncError):
                LOG.warning("glance job failed: %s", exc)
            else:
                LOG.exception("glance job failed unexpectedly")
            result = fallback(exc)
        self._results.put(result)
        self.on_result()

    def register(self, task: TaskRow) -> None:
        """Verify and register ``task``'s copy, together with the other regions of its image that
        finished meanwhile: one read of the cascading image and one PATCH for all of them,
        after one listing per region of the regional images (coordinator/regionalreads.py)."""
        self.reads.add(task)

    def _list_regional(self, region: str, image_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self._call(glancejobs.list_regional, region, image_ids)

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
                results = self._call(glancejobs.register_batch, image_id, batch, self.reads.take(batch))
            except Exception as exc:  # a thread must always answer, whatever went wrong
                if isinstance(exc, GlanceSyncError):  # a worker process lost: retried
                    LOG.warning("image %s: %d registration(s) not done: %s", image_id, len(batch), exc)
                else:
                    LOG.exception("glance job failed unexpectedly")
                results = [TaskResult(t.task_id, t.attempt, False, f"registration: {exc}") for t in batch]
        for result in results:
            self._results.put(result)
        self.on_result()

    def unregister(self, task: TaskRow) -> None:
        fail = lambda exc: TaskResult(task.task_id, task.attempt, False, f"unregistration: {exc}")  # noqa: E731
        self.pool.submit(self._run, lambda: self._unregister(task), fail)

    def _unregister(self, task: TaskRow) -> TaskResult:
        with self._location_lock(task.image_id):
            return self._call(glancejobs.unregister, task)

    def fetch_many(self, events: list[EventRow], regions: Collection[str] | None = None) -> None:
        """``fetch`` each of ``events``, their images read with one listing (glancejobs.fetch_many)."""
        self.pool.submit(self._fetch_many, list(events), regions)

    def _fetch_many(self, events: list[EventRow], regions: Collection[str] | None) -> None:
        try:
            results = self._call(glancejobs.fetch_many, events, regions)
        except Exception as exc:  # a thread must always answer, whatever went wrong
            if isinstance(exc, GlanceSyncError):
                LOG.warning("glance job failed: %s", exc)
            else:
                LOG.exception("glance job failed unexpectedly")
            error = GlanceError(endpoint=self.endpoint_name, retryable=True, detail=str(exc))
            results = [FetchResult(event.event_id, None, error) for event in events]
        for result in results:
            self._results.put(result)
        self.on_result()

    def reconcile(self, read: Callable[[], reconciler.Inputs]) -> None:
        """Compare the glances with what the journal knows (``read()``, in the pool; see reconciler.py)."""
        fail = lambda exc: ReconcileResult(None, GlanceError(endpoint=self.endpoint_name, detail=str(exc)))  # noqa: E731
        self.pool.submit(self._run, lambda: self._reconcile(read), fail)

    def _reconcile(self, read: Callable[[], reconciler.Inputs]) -> ReconcileResult:
        clients = self._clients()
        try:
            return ReconcileResult(reconciler.scan(clients.cascading(), clients.regional, read(), self.endpoint_name))
        except GlanceSyncError as exc:
            return ReconcileResult(None, exc)

    def _location_lock(self, image_id: str) -> threading.Lock:
        return self._location_locks[zlib.crc32(image_id.encode()) % LOCATION_LOCK_STRIPES]
