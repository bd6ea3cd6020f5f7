"""Registering a verified copy in the region's glance, with the same id as the cascading image.

Every step is idempotent, because a retry may find any state an earlier attempt
left behind:

- the id is ``active`` and holds the cascading image's bytes (glancesync.verify):
  done, nothing to upload.  When the region's glance hashes with another algorithm,
  the regional bytes are read back once and hashed in both algorithms, so the
  agent can vouch for the link between the two hashes (``"rehash"``);
- the id is ``queued`` (a half-made image from a failed upload): upload into it;
- the id does not exist: create it with the cascading image's properties, upload;
- the id was deleted in this region: glance never lets a deleted id be created
  again (the row is soft-deleted), so that is a final, non-retryable failure;
- the id is ``active`` with other bytes: only an operator can sort that out.

Glance recomputes ``checksum`` and ``os_hash_value`` on upload; the record is read
back and compared with what the agent verified (glancesync.verify) before the copy
counts as done.  A region hashing with another algorithm than the cascading image
gets the uploaded file hashed once more in its algorithm.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from typing import Any

from glanceclient import exc as glance_exc

from glancesync import glance
from glancesync import verify as check
from glancesync.exceptions import GlanceError, GlanceSyncError, VerificationError

LOG = logging.getLogger(__name__)

# Statuses in which an image already holds its bytes.
HAS_DATA = ("active", "deactivated")
# Statuses in which another upload or import is running: try again later.
BUSY = ("saving", "uploading", "importing")
READ_BYTES = 1024 * 1024


def _fail(endpoint: str, detail: str, retryable: bool) -> GlanceError:
    return GlanceError(endpoint=endpoint, detail=detail, retryable=retryable)


def other_algorithm(regional: dict[str, Any], image: dict[str, Any]) -> bool:
    """Both records carry a multihash, in different algorithms."""
    theirs = check.Digest.of_record(regional, "regional image").hashes
    ours = check.Digest.of_record(image, "cascading image").hashes
    return bool(theirs and ours and not theirs.keys() & ours.keys())


def existing_copy(regional: dict[str, Any] | None, image: dict[str, Any], endpoint: str) -> str:
    """What to do with the regional image: ``"done"``, ``"rehash"``, ``"upload"`` (queued) or ``"create"``.

    Raises GlanceError or VerificationError for a regional image that is not (yet) the copy.
    """
    if regional is None:
        return "create"
    status = regional.get("status")
    image_id = image.get("id")
    if status in HAS_DATA:
        if status == "active" and other_algorithm(regional, image):
            return "rehash"
        # Not active (deactivated), other bytes, a value missing: verify says which.
        check.verify(check.Digest.of_record(image, "cascading image"),
                     check.Digest.of_record(regional, "regional image"), image_id=str(image_id))
        return "done"
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


def _hash(chunks: Iterable[bytes], algos: Iterable[str], image_id: str) -> tuple[int, str, dict[str, str]]:
    """Size, md5 and one hash per algorithm of ``chunks``, in one pass."""
    try:
        hashers = {algo: hashlib.new(algo) for algo in algos}
    except ValueError as exc:
        raise VerificationError(image_id=image_id, detail=f"unsupported hashing algorithm: {exc}",
                                retryable=False) from None
    md5, size = hashlib.md5(usedforsecurity=False), 0
    for chunk in chunks:
        size += len(chunk)
        md5.update(chunk)
        for hasher in hashers.values():
            hasher.update(chunk)
    return size, md5.hexdigest(), {algo: h.hexdigest() for algo, h in hashers.items()}


def _file_chunks(path: str) -> Iterable[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(READ_BYTES):
            yield block


def check_uploaded(regional: dict[str, Any] | None, verified: check.Digest, path: str, image_id: str,
                   endpoint: str) -> check.Digest:
    """Compare what glance computed with what we verified; returns ``verified``, with the region's hash.

    Glance holding other bytes than the verified file after our upload is not
    retryable: the id is now active with those bytes in this region.
    """
    if regional is None:
        raise _fail(endpoint, f"image {image_id} vanished after upload", retryable=True)
    algo = regional.get("os_hash_algo")
    if algo and regional.get("os_hash_value") and algo not in verified.hashes:
        try:
            _, _, extra = _hash(_file_chunks(path), [algo], image_id)
        except OSError as exc:
            raise _fail(endpoint, f"cannot read {path}: {exc.strerror}", retryable=True) from None
        verified = verified.with_hash(algo, extra[algo])
    check.verify(verified, check.Digest.of_record(regional, "regional image"), image_id=image_id)
    return verified


def rehash_regional(client: Any, image: dict[str, Any], regional: dict[str, Any], endpoint: str) -> check.Digest:
    """Read the regional copy back and hash it in both algorithms; verified against both records.

    Used when an earlier attempt made the copy in a region hashing with another
    algorithm: the agent vouches for the link between the two hashes only over bytes
    it has hashed itself.
    """
    image_id = str(image["id"])
    algos = [image["os_hash_algo"], regional["os_hash_algo"]]
    try:
        size, md5, hashes = _hash(client.images.data(image_id), algos, image_id)
    except GlanceSyncError:
        raise
    except Exception as exc:
        raise glance.translate(exc, endpoint) from None
    digest = check.Digest("regional bytes read back", size, md5, hashes)
    check.verify(check.Digest.of_record(image, "cascading image"), digest, image_id=image_id)
    check.verify(digest, check.Digest.of_record(regional, "regional image"), image_id=image_id)
    return digest


def register(client: Any, image: dict[str, Any], path: str, verified: check.Digest, endpoint: str) -> check.Digest:
    """Make the regional copy of ``image`` from the verified file ``path``; returns what was verified.

    ``verified`` is the digest of the file, checked against the cascading image; the
    result adds the region's own hash when it uses another algorithm.  The local
    file is removed on success; on a failure it is kept only when the failure is
    retryable, so a retry need not fetch the bytes again.
    """
    image_id = image["id"]
    try:
        action = existing_copy(glance.get_image(client, image_id, endpoint), image, endpoint)
        if action == "create":
            create(client, image, endpoint)
            action = existing_copy(glance.get_image(client, image_id, endpoint), image, endpoint)
        if action == "upload":
            upload_file(client, image_id, path, verified.size or 0, endpoint)
        regional = glance.get_image(client, image_id, endpoint)
        verified = check_uploaded(regional, verified, path, image_id, endpoint)
    except GlanceSyncError as exc:
        if not exc.retryable:
            remove_file(path)
        raise
    remove_file(path)
    return verified


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning("cannot remove %s: %s", path, exc.strerror)
