"""Registering a verified copy in the region's glance, with the same id as the cascading image.

Every step is idempotent, because a retry may find any state an earlier attempt
left behind:

- the id is ``active`` (or ``deactivated``) with the same ``os_hash_value``: done,
  nothing to upload;
- the id is ``queued`` (a half-made image from a failed upload): upload into it;
- the id does not exist: create it with the cascading image's properties, upload;
- the id was deleted in this region: glance never lets a deleted id be created
  again (the row is soft-deleted), so that is a final, non-retryable failure.

Glance recomputes ``checksum`` and ``os_hash_value`` on upload; they are read back
and compared with the expected values before the copy counts as done.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from glanceclient import exc as glance_exc

from glancesync import glance
from glancesync.exceptions import GlanceError

LOG = logging.getLogger(__name__)

# Statuses in which an image already holds its bytes.
HAS_DATA = ("active", "deactivated")
# Statuses in which another upload or import is running: try again later.
BUSY = ("saving", "uploading", "importing")


def _fail(endpoint: str, detail: str, retryable: bool) -> GlanceError:
    return GlanceError(endpoint=endpoint, detail=detail, retryable=retryable)




def existing_copy(regional: dict[str, Any] | None, image: dict[str, Any], endpoint: str) -> str:
    """What to do with the regional image: ``"done"``, ``"upload"`` (queued) or ``"create"``.

    Raises GlanceError for a regional image that can never become the copy.
    """
    if regional is None:
        return "create"
    status = regional.get("status")
    image_id = image.get("id")
    if status in HAS_DATA:
        if regional.get("os_hash_value") == image.get("os_hash_value"):
            return "done"
        raise _fail(
            endpoint,
            f"image {image_id} is {status} in this region with other bytes "
            f"(os_hash_value {regional.get('os_hash_value')!r}, expected {image.get('os_hash_value')!r})",
            retryable=False,
        )
    if status == "queued":
        return "upload"
    if status in BUSY:
        # Usually another upload still running; but glance never moves an image out of
        # 'saving' by itself after a failed upload, so say so for when retries run out.
        raise _fail(endpoint, f"image {image_id} is {status} in this region (another upload running, "
                    "or one that glance failed to finish: such an image needs an operator)", retryable=True)
    raise _fail(
        endpoint,
        f"image {image_id} is {status} in this region; glance never re-creates a deleted or "
        "killed id, so this region cannot get the copy without an operator",
        retryable=False,
    )


def create(client: Any, image: dict[str, Any], endpoint: str) -> None:
    """Create the regional image with the cascading image's id and copied properties."""
    image_id = image["id"]
    try:
        client.images.create(id=image_id, **glance.copied_properties(image))
    except glance_exc.HTTPConflict:
        # Either a concurrent attempt created it (fine, the caller re-reads it) or the
        # id was deleted here before: a soft-deleted row also answers 409.
        if glance.get_image(client, image_id, endpoint) is None:
            raise _fail(
                endpoint,
                f"image id {image_id} was deleted in this region; glance never re-creates a deleted id",
                retryable=False,
            ) from None
    except TypeError as exc:
        # warlock refused a property against glance's schema: the same record would
        # be refused again.
        raise _fail(endpoint, f"image {image_id} properties refused: {exc}", retryable=False) from None
    except Exception as exc:
        raise glance.translate(exc, endpoint) from None


def upload_file(client: Any, image_id: str, path: str, size: int, endpoint: str) -> None:
    """Upload the verified local file into the (queued) regional image."""
    try:
        with open(path, "rb") as handle:
            client.images.upload(image_id, handle, image_size=size)
    except OSError as exc:
        raise _fail(endpoint, f"cannot read {path}: {exc.strerror}", retryable=True) from None
    except Exception as exc:
        raise glance.translate(exc, endpoint) from None


def check_uploaded(regional: dict[str, Any] | None, expected: dict[str, Any], endpoint: str) -> None:
    """Compare what glance computed with what we verified; GlanceError (retryable) on a mismatch."""
    if regional is None:
        raise _fail(endpoint, f"image {expected.get('id')} vanished after upload", retryable=True)
    for name in ("size", "checksum", "os_hash_value"):
        want = expected.get(name)
        if want is not None and regional.get(name) != want:
            raise _fail(
                endpoint,
                f"image {expected.get('id')}: glance computed {name} {regional.get(name)!r}, expected {want!r}",
                retryable=True,
            )


def register(client: Any, image: dict[str, Any], path: str, expected: dict[str, Any], endpoint: str) -> dict:
    """Make the regional copy of ``image`` from the verified file ``path``; returns the regional image.

    ``expected`` holds the verified size, checksum and os_hash_value.  The local file
    is removed on success; on a failure it is kept only when the failure is
    retryable, so a retry need not fetch the bytes again.
    """
    image_id = image["id"]
    try:
        action = existing_copy(glance.get_image(client, image_id, endpoint), image, endpoint)
        if action == "create":
            create(client, image, endpoint)
            action = existing_copy(glance.get_image(client, image_id, endpoint), image, endpoint)
        if action == "upload":
            upload_file(client, image_id, path, expected["size"], endpoint)
        regional = glance.get_image(client, image_id, endpoint)
        check_uploaded(regional, {"id": image_id, **expected}, endpoint)
    except GlanceError as exc:
        if not exc.retryable:
            remove_file(path)
        raise
    remove_file(path)
    return regional or {}


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning("cannot remove %s: %s", path, exc.strerror)
