"""Snapshots: cascading images whose bytes live in a region, not in the cascading store.  Pure.

An instance snapshot is taken in the region where the instance runs: that region's
glance gets the image, and the cascading image points at it with a
``cascaded://<region>/<id>`` location and has no ``file://`` location of its own
(queued where the cascading glance keeps a location on a queued image, active where,
like glance 33, a location makes a queued image active at once; doc/snapshots.md).

- :func:`source_region`: the region such an image was made in (its first
  ``cascaded://`` location), None for any other image.
- :func:`waiting`: whether the regional image is still on its way to ``active``
  (the coordinator fetches it again every ``snapshot_sleep_interval`` up to
  ``snapshot_timeout``, coordinator/eventdesk.py).
- :func:`recorded`: the record copies are planned from: the cascading image's
  metadata with the size, ``checksum``, ``os_hash_algo`` and ``os_hash_value`` that
  the regional glance computed (glance is the truth; the agents verify against it).
- :func:`stays_queued`: why a queued cascading image stays queued when its
  snapshot's only target is its own region (no location will be added to it).
- :func:`source`: where the agents read the bytes: the region's file store over
  SFTP when glance_store.yaml maps it (``regions.<name>.source.store``) and the
  regional image shows a ``file://`` location in it, else the region's glance API.
  Never the cascading store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from glancesync import protocol
from glancesync.exceptions import SourceRefused
from glancesync.storemap import RegionSource, store_path

# The values a copy is verified against; taken from the regional image.
DIGEST_FIELDS = ("size", "checksum", "os_hash_algo", "os_hash_value")
# Regional statuses from which a snapshot still becomes active without anyone's help.
ON_THE_WAY = frozenset({"queued", "saving", "importing", "uploading"})


@dataclass(frozen=True)
class Snapshot:
    """A snapshot as the coordinator read it: its region and that region's image (None: 404)."""

    region: str
    regional: dict[str, Any] | None


def _urls(image: Mapping[str, Any]) -> list[str]:
    locations = image.get("locations")
    if not isinstance(locations, list):  # a record of another shape names no location
        return []
    urls = [loc.get("url") for loc in locations if isinstance(loc, Mapping)]
    return [url for url in urls if isinstance(url, str)]


def _cascaded(url: str) -> tuple[str, str] | None:
    """(region, image id) of a ``cascaded://<region>/<image-id>`` URL, else None."""
    prefix = f"{protocol.CASCADED_SCHEME}://"
    if not url.startswith(prefix):
        return None
    region, _, image_id = url[len(prefix):].partition("/")
    return (region, image_id) if region and image_id and "/" not in image_id else None


def source_region(image: Mapping[str, Any] | None, regions: Iterable[str] | None = None) -> str | None:
    """The region a snapshot was made in; None unless ``image`` has cascaded:// locations and no file://.

    ``regions``: when given, a region outside it is no source (None).
    """
    if not image:
        return None
    urls = _urls(image)
    direct = image.get("direct_url")
    if isinstance(direct, str) and direct.startswith("file://") or any(u.startswith("file://") for u in urls):
        return None
    image_id = str(image.get("id"))
    for url in urls:
        parsed = _cascaded(url)
        if parsed is not None and parsed[1] == image_id:
            known = regions is None or parsed[0] in set(regions)
            return parsed[0] if known else None
    return None


def waiting(snapshot: Snapshot) -> bool:
    """True while the regional image is missing or on its way to active."""
    return snapshot.regional is None or snapshot.regional.get("status") in ON_THE_WAY


def timeout_reason(snapshot: Snapshot, image_id: str, timeout: float) -> str:
    status = "missing" if snapshot.regional is None else snapshot.regional.get("status")
    return (f"snapshot {image_id} in {snapshot.region} is still {status} {timeout:g} s after its event "
            f"(snapshot_timeout); nothing copied")


def unusable(snapshot: Snapshot, image_id: str, owner: Any = None) -> str | None:
    """Why the regional image cannot be copied from (not active, another project's), or None.

    ``owner``: the cascading image's.  The copies take the cascading image's owner and
    visibility, so bytes of another project's image must never be spread under them
    (a location pointing at someone else's image: a confused deputy).
    """
    status = "missing" if snapshot.regional is None else snapshot.regional.get("status")
    if status != "active":
        return f"snapshot {image_id} in {snapshot.region} is {status}, not active; nothing to copy from"
    theirs = (snapshot.regional or {}).get("owner")
    if owner and theirs and theirs != owner:
        return (f"snapshot {image_id} in {snapshot.region} belongs to project {theirs}, the cascading image to "
                f"{owner}; not copied")
    return None


def recorded(image: Mapping[str, Any], regional: Mapping[str, Any]) -> dict[str, Any]:
    """``image`` with the regional glance's size and hashes; ``active`` while the cascading one is on its way.

    A queued cascading image has no bytes of its own, but the region's image does: the
    copies are of an active image.  A deactivated one stays deactivated (its copies too).
    """
    record = dict(image)
    for key in DIGEST_FIELDS:
        record[key] = regional.get(key)
    if record.get("status") in ON_THE_WAY:
        record["status"] = "active"
    return record


def stays_queued(image: Mapping[str, Any] | None, made: Snapshot | None, regions: Iterable[str]) -> str | None:
    """Why the queued cascading image of a snapshot stays queued, or None.

    ``regions``: every region the image has work or a record in.  Glance activates a
    queued image only when a location is added; the snapshot's own region already has
    its location, so with no other target nothing ever adds one.  Rewriting the
    location list would activate it without a size (glance takes the size only from a
    new location), which breaks its downloads: it is left queued, and said why.
    """
    if made is None or image is None or image.get("status") != "queued" or unusable(made, str(image.get("id"))):
        return None
    if set(regions) - {made.region}:
        return None
    image_id = image.get("id")
    return (f"the cascading image stays queued: snapshot {image_id} has no target but {made.region}, where it was "
            f"made, and glance activates a queued image only when a location is added (doc/snapshots.md); "
            f"copy it to another region to activate it (glance-sync-manage sync {image_id} --regions REGION)")


def _file_url(regional: Mapping[str, Any]) -> str | None:
    for url in _urls(regional):
        if url.startswith("file://"):
            return url
    direct = regional.get("direct_url")
    return direct if isinstance(direct, str) and direct.startswith("file://") else None


def source(snapshot: Snapshot, sources: Mapping[str, RegionSource], image_id: str) -> dict[str, Any]:
    """The copy tasks' source: ``sftp`` in the region's store when mapped, else ``glance`` of the region.

    A ``file://`` location outside the mapped ``store_dir`` is refused (SourceRefused),
    as for the cascading store: a location is data from glance, not a trusted path.
    """
    mapped = sources.get(snapshot.region)
    url = _file_url(snapshot.regional or {})
    if mapped is not None and mapped.store is not None and url is not None:
        return {"type": "sftp", "region": snapshot.region, "path": store_path(mapped.store, image_id, url)}
    return {"type": "glance", "region": snapshot.region}


def plan_source(snapshot: Snapshot, sources: Mapping[str, RegionSource], image_id: str,
                owner: Any = None) -> tuple[dict[str, Any] | None, str | None]:
    """(source, None), or (None, why no copy can be made from this snapshot); ``owner``: the cascading image's."""
    why = unusable(snapshot, image_id, owner)
    if why is not None:
        return None, why
    try:
        return source(snapshot, sources, image_id), None
    except SourceRefused as exc:
        return None, str(exc)


def task_region(payload: Mapping[str, Any] | None) -> str | None:
    """The region a snapshot copy task's bytes come from (its source names one), else None."""
    source = (payload or {}).get("source")
    region = source.get("region") if isinstance(source, Mapping) else None
    return region if isinstance(region, str) else None


def validation_data(image: Mapping[str, Any], payloads: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A queued snapshot's recorded checksum and multihash, given with its first location; else None.

    Glance makes a queued image active when a location is added, and takes these
    values with it (only then), so the cascading image gets the snapshot's hashes.
    """
    if image.get("status") != "queued":
        return None
    for payload in payloads:
        if task_region(payload) is None:
            continue
        record = payload.get("image") or {}
        data = {key: record.get(key) for key in ("checksum", "os_hash_algo", "os_hash_value")}
        if all(data.values()):
            return data
    return None


def recorded_hash(payload: Mapping[str, Any] | None, image: Mapping[str, Any]) -> str | None:
    """The os_hash_value a registered copy is journaled with: the recorded one for a snapshot."""
    if task_region(payload) is not None:
        return (payload or {}).get("image", {}).get("os_hash_value")
    return image.get("os_hash_value")
