"""The registrar's glance jobs themselves: plain functions of a set of clients and small picklable arguments.

Each job takes a :class:`Clients` (the glance clients of the thread or worker process
that runs it) and returns a result the loop applies (it writes the journal; a job never
touches it).  The same functions run in a thread of the registrar's pool or in one of its
worker processes (coordinator/glanceprocs.py); where they run is the registrar's choice.

- ``register_batch``: copies of one image came back ``done``.  The agent's word is not
  enough (any allow-listed key could claim to be an agent): read the cascading image and
  each regional image, with that region's credentials, and compare them with
  glancesync.verify (glance itself never checks the bytes behind a location, so a mismatch
  must never be registered); then one PATCH adds every ``cascaded://<region>/<id>`` (metadata
  ``{"region": region}``) the image does not list yet, and glance's answer to it (the image
  as the PATCH left it) is all that is believed.  A PATCH refused as a whole because one
  location appeared meanwhile is redone one location at a time; "already exists" from
  glance counts as done.  The agent's report only links two different hashing algorithms
  (doc/verification.md).
- ``list_regional``: the regional records of many images of one region, one listing.
- ``unregister``: a delete task came back ``done``: remove that region's location if the image
  still exists and keeps another one (glance refuses to remove the last).
- ``fetch_many``: the image records (with locations) events are planned from, one listing
  of the cascading glance for up to 80 of them, a GET for any it leaves out; ``fetch``: one
  event's, one GET.  For a snapshot (coordinator/snapshot.py) also the image of the region
  that made it.  A registration of a snapshot's copy verifies against those recorded values
  (the task's image), since the cascading image has no bytes of its own.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from coordinator import reconciler, snapshot
from coordinator.journal import EventRow, TaskRow
from glancesync import glance, protocol, verify
from glancesync.exceptions import GlanceError, GlanceSyncError, VerificationError

LOG = logging.getLogger(__name__)
JSON_PATCH = "application/openstack-images-v2.1-json-patch"


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


class Clients:
    """The glance clients of one thread or worker process, each built on first use and kept
    (a keystoneauth1 session is not shared across threads)."""

    def __init__(self, cascading: Callable[[], Any], regional: Callable[[str], Any], endpoint_name: str) -> None:
        self._make_cascading = cascading
        self._make_regional = regional
        self.endpoint_name = endpoint_name
        self._cascading: Any = None
        self._regional: dict[str, Any] = {}

    def cascading(self) -> Any:
        if self._cascading is None:
            self._cascading = self._make_cascading()
        return self._cascading

    def regional(self, region: str) -> Any:
        if region not in self._regional:
            self._regional[region] = self._make_regional(region)
        return self._regional[region]

    def get(self, image_id: str) -> dict[str, Any] | None:
        """The cascading image, None when glance answers 404."""
        return glance.call(lambda: image_json(self.cascading(), image_id), self.endpoint_name, None)


def image_json(client: Any, image_id: str) -> dict[str, Any]:
    """One GET of an image as glance's own JSON object, less its ``self`` link: what glanceclient's
    ``images.get`` gives (checked on glance-api: doc/control-plane.md), without the warlock model
    it builds and checks against the schema, a good part of a registration job's CPU."""
    _resp, body = client.http_client.get(f"/v2/images/{quote(image_id, safe='')}")
    if not isinstance(body, dict):
        raise ValueError("the image record is not a JSON object")
    body.pop("self", None)
    return body


def list_regional(clients: Clients, region: str, image_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Id -> record of the images of ``image_ids`` one listing of ``region``'s glance shows."""
    return glance.images_by_id(clients.regional(region), image_ids, f"glance of region {region}")


def register_batch(clients: Clients, image_id: str, batch: list[TaskRow],
                   listed: dict[str, dict[str, Any] | None] | None = None) -> list[TaskResult]:
    """Verify and register the copies of ``batch`` (all of ``image_id``); ``listed``: task_id -> the
    regional record a listing showed after the agent's ``done`` (missing or None: read it now)."""
    def result(task: TaskRow, ok: bool, reason: str = "", retryable: bool = True, h: str | None = None,
               redo: bool = False) -> TaskResult:
        return TaskResult(task.task_id, task.attempt, ok, reason, retryable, h, redo)

    listed = listed or {}
    try:
        image = clients.get(image_id)
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
            verify_regional(clients, task, image, listed.get(task.task_id))
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
            add_locations(clients, image_id, [(url, task.region) for task, url in to_add], validation)
        except GlanceSyncError as exc:
            LOG.warning("image %s: %d location(s) not registered: %s", image_id, len(to_add), exc)
            return done + [result(task, False, str(exc), exc.retryable) for task, _url in to_add]
        done += [result(task, True, h=snapshot.recorded_hash(task.payload, image)) for task, _url in to_add]
    return done


def verify_regional(clients: Clients, task: TaskRow, image: dict[str, Any],
                    listed: dict[str, Any] | None = None) -> None:
    """Compare the regional image, read with the region's own credentials, with ``image``.

    ``listed``: the regional record a listing showed after the agent's ``done``; without
    it the image is read now.  A region holding other bytes under this id needs an
    operator (not retryable); a regional image missing or not active yet is retried.
    """
    where = f"glance of region {task.region}"
    regional = listed if listed is not None else glance.get_image(clients.regional(task.region), task.image_id, where)
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


def add_locations(clients: Clients, image_id: str, locations: list[tuple[str, str]],
                  validation: dict[str, Any] | None = None) -> None:
    """Add every (url, region) location in one PATCH, then believe only what the image says.

    ``validation``: the hashes a queued snapshot's cascading image takes with its first
    added location (glance then makes it active with them).
    """
    if len(locations) == 1:
        add_location(clients, image_id, *locations[0], validation=validation)
        return
    ops = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {"region": region}}}
           for url, region in locations]
    if validation:
        ops[0]["value"]["validation_data"] = validation
    try:
        _resp, updated = clients.cascading().http_client.patch(
            f"/v2/images/{image_id}", headers={"Content-Type": JSON_PATCH}, data=json.dumps(ops))
    except Exception as exc:
        code = getattr(exc, "code", None) or getattr(exc, "http_status", None)
        if isinstance(code, int) and 400 <= code < 500:
            # Refused as a whole (the PATCH is all or nothing), e.g. one location appeared
            # meanwhile ("already exists"): one location at a time, each judged on its own.
            LOG.info("image %s: adding %d locations at once refused (%s); one at a time", image_id,
                     len(locations), code)
            for url, region in locations:
                add_location(clients, image_id, url, region, validation=validation)
                validation = None  # the image is active after the first one
            return
        raise glance.translate(exc, clients.endpoint_name) from exc
    # glance answers the PATCH with the image as it left it (add_location believes the same answer);
    # only an answer without a location list is read again.
    if not isinstance(updated, dict) or not isinstance(updated.get("locations"), list):
        updated = clients.get(image_id) or {}
    after = {loc.get("url") for loc in updated.get("locations") or [] if isinstance(loc, dict)}
    missing = [url for url, _region in locations if url not in after]
    if missing:
        raise GlanceError(endpoint=clients.endpoint_name, retryable=True,
                          detail=f"location(s) {', '.join(missing)} missing after they were added "
                                 "(concurrent location change?)")
    LOG.info("image %s: registered locations %s", image_id, ", ".join(url for url, _region in locations))


def add_location(clients: Clients, image_id: str, url: str, region: str,
                 validation: dict[str, Any] | None = None) -> None:
    try:
        extra = {"validation_data": validation} if validation else {}
        updated = clients.cascading().images.add_location(image_id, url, {"region": region}, **extra)
    except Exception as exc:
        if getattr(exc, "code", None) == 400 and "already exists" in str(exc):
            LOG.info("image %s: location %s already registered", image_id, url)
            return
        if validation and getattr(exc, "code", None) == 409:
            # Glance takes only its own hashing_algorithm: the image is made active
            # with the size alone; the copies were verified against the recorded hashes.
            LOG.warning("image %s: glance refused the snapshot's hashes (%s); location added without them",
                        image_id, exc)
            add_location(clients, image_id, url, region)
            return
        raise glance.translate(exc, clients.endpoint_name) from exc
    # A concurrent location change by someone else can still drop ours inside
    # glance: believe only what the image says afterwards.
    if url not in [loc.get("url") for loc in (updated or {}).get("locations") or []]:
        raise GlanceError(endpoint=clients.endpoint_name, retryable=True,
                          detail=f"location {url} missing after it was added (concurrent location change?)")
    LOG.info("image %s: registered location %s", image_id, url)


def unregister(clients: Clients, task: TaskRow) -> TaskResult:
    """Remove ``task.region``'s location of ``task.image_id`` unless it is the image's last."""
    try:
        image = clients.get(task.image_id)
        url = protocol.cascaded_url(task.region, task.image_id)
        urls = [loc.get("url") for loc in (image or {}).get("locations") or []]
        if image is None or url not in urls:
            return TaskResult(task.task_id, task.attempt, True)
        if len(urls) <= 1:
            LOG.warning("image %s: %s is its last location; glance refuses to remove it, left in place",
                        task.image_id, url)
            return TaskResult(task.task_id, task.attempt, True)
        glance.call(lambda: clients.cascading().images.delete_locations(task.image_id, {url}),
                    clients.endpoint_name, missing=None)
        LOG.info("image %s: removed location %s", task.image_id, url)
    except GlanceSyncError as exc:
        return TaskResult(task.task_id, task.attempt, False, str(exc), exc.retryable)
    return TaskResult(task.task_id, task.attempt, True)


def fetch_many(clients: Clients, events: list[EventRow], regions: Collection[str] | None = None) -> list[FetchResult]:
    """``fetch`` for each of ``events``, their images read with one listing filtered by id.

    glance's listing shows an image with the same fields as its GET (checked on glance-api:
    doc/control-plane.md); an image it leaves out (gone, ``os_hidden``, shared and not
    accepted...) is read on its own, so a 404 is judged as ever.  A listing that fails
    fails every event of it as its GET would have: retried with backoff.
    """
    wanted = [e.image_id for e in events if e.kind != "deleted"]  # a deleted image is rarely still listed
    try:
        listed = glance.images_by_id(clients.cascading(), wanted, clients.endpoint_name) if wanted else {}
    except GlanceSyncError as exc:
        LOG.warning("%d event(s): the cascading images could not be listed: %s", len(events), exc)
        return [FetchResult(event.event_id, None, exc) for event in events]
    # Each event its own record: the planner's reads and the task payloads never share one dict.
    return [fetch(clients, event, regions, copy.deepcopy(listed[event.image_id]) if event.image_id in listed
                  else _UNREAD) for event in events]


_UNREAD: Any = object()


def fetch(clients: Clients, event: EventRow, regions: Collection[str] | None = None,
          image: dict[str, Any] | None = _UNREAD) -> FetchResult:
    """``event``'s image (``image``: already read by a listing); a snapshot of one of ``regions``
    (all: None) with its regional image."""
    # One GET and back: an import still on its way is fetched again later by the
    # loop, so no worker of this small pool ever sleeps waiting for it.
    try:
        if image is _UNREAD:
            image = clients.get(event.image_id)
        members = glance.shared_members(clients.cascading(), image, clients.endpoint_name)
        made = None
        region = snapshot.source_region(image, regions) if event.kind != "deleted" else None
        if region is not None:
            regional = glance.get_image(clients.regional(region), event.image_id, f"glance of region {region}")
            made = snapshot.Snapshot(region, regional)
    except GlanceSyncError as exc:
        return FetchResult(event.event_id, None, exc)
    return FetchResult(event.event_id, image, members=members, snapshot=made)
