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
  again (the row is soft-deleted) until an operator purges that row, so that is a
  non-retryable failure (the reconciler tries again on its slow schedule);
- the id is ``active`` with other bytes: only an operator can sort that out.

Glance recomputes ``checksum`` and ``os_hash_value`` on upload; the record is read
back and compared with what the agent verified (glancesync.verify) before the copy
counts as done.  A region hashing with another algorithm than the cascading image
gets the uploaded file hashed once more in its algorithm.

The bytes uploaded are the bytes verified: the upload reads the local file (while
the fetch still writes it: ``Follow``, agent/pipeline.py) and hashes exactly the
pieces it hands to glance (md5 and the image's algorithm, one pass), and holds
the last piece back until the fetch verified the stream and glancesync.verify has
compared the size and both hashes of what was read with the cascading image
(agent/stream.py).  On a mismatch or a failed fetch the request is aborted before
its last byte: glance then puts the image back to ``queued``
(doc/glance-behaviour.md), so a corrupt copy never becomes active, and a later
attempt uploads into the same id.  Glance refusing an upload while the image stays
``queued`` (400, 409, 413) is likewise retried, never final.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from glanceclient import exc as glance_exc

from agent import stream
from glancesync import glance
from glancesync import verify as check
from glancesync.exceptions import GlanceError, GlanceSyncError, VerificationError

LOG = logging.getLogger(__name__)

# Statuses in which an image already holds its bytes.
HAS_DATA = ("active", "deactivated")
# Statuses in which another upload or import is running: try again later.
BUSY = ("saving", "uploading", "importing")
READ_BYTES = 1024 * 1024
# How long an aborted upload may take to leave ``saving``, and how often to look.
SETTLE_SECONDS = 30.0
SETTLE_POLL = 0.1


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
    if status == "saving":
        raise _fail(endpoint, stuck_saving(regional, str(image_id)), retryable=True)
    if status in BUSY:
        raise _fail(endpoint, f"image {image_id} is {status} in this region (another upload or import running)",
                    retryable=True)
    raise _fail(
        endpoint,
        f"image {image_id} is {status} in this region; glance never re-creates a deleted or "
        "killed id, so this region cannot get the copy without an operator",
        retryable=False,
    )


def stuck_saving(regional: dict[str, Any], image_id: str) -> str:
    """Why a ``saving`` image is not uploaded into, and what an operator does when no upload runs.

    Retryable, because another upload may really be running.  But glance never moves
    an image out of ``saving`` by itself when its glance-api died mid-upload, and
    refuses any upload into it (409); the partial data it wrote stays in its store.
    """
    return (f"image {image_id} is saving in this region since {regional.get('updated_at') or 'an unknown time'}: "
            "another upload is running, or the glance-api that ran it died; glance never leaves 'saving' by "
            "itself and refuses uploads into it. If no upload runs, an operator removes the partial data of "
            f"{image_id} from that glance's store (file store: <filesystem_store_datadir>/{image_id}) and sets "
            f"its status back to queued in glance's database (UPDATE images SET status='queued' WHERE "
            f"id='{image_id}' AND status='saving'); the next attempt (or glance-sync-manage resync "
            f"{image_id}) then completes the same image (doc/glance-behaviour.md)")


def refuse_empty(image: dict[str, Any]) -> None:
    """Raise for a 0-byte image, before anything is created in a region.

    Glance refuses every location whose store reports a size of 0 (``400 Invalid
    location``, "The Store URI was malformed"), so a regional copy of it could never
    be registered and would only be left behind unregistered.
    """
    if image.get("size") == 0:
        raise GlanceSyncError(
            f"image {image.get('id')} has 0 bytes: glance refuses a location of size 0, so no region can "
            "serve it through the cascading glance; it is not copied (nothing was created in this region)")


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
                f"image id {image_id} was deleted in this region; glance never re-creates a deleted id until "
                "an operator frees it there: that one id by hand, or every old deleted id with glance-manage "
                "db purge_images_table (doc/runbook.md, 'Purging a deleted id in a region')",
                retryable=False,
            ) from None
    except TypeError as exc:
        # warlock refused a property against glance's schema: the same record would
        # be refused again.
        raise _fail(endpoint, f"image {image_id} properties refused: {exc}", retryable=False) from None
    except Exception as exc:
        raise glance.translate(exc, endpoint) from None


@dataclass
class Follow:
    """How an upload follows the fetch of its file (agent/pipeline.py); ``Follow.of`` for a fetched file.

    ``body`` is the running upload's body while glance reads it (the pipeline
    watches its ``handed_at``); ``uploaded`` is called once glance has every byte.
    """

    arrival: stream.Arrival
    algos: list[str]
    idle_timeout: float = 300.0
    progress: Callable[[int], None] | None = None
    uploaded: Callable[[], None] | None = None
    body: stream.FollowingBody | None = None

    @classmethod
    def of(cls, verified: check.Digest) -> Follow:
        return cls(stream.Arrival.complete(verified), sorted(verified.hashes))


def upload_file(client: Any, image: dict[str, Any], path: str, follow: Follow, endpoint: str) -> check.Digest:
    """Upload ``path`` into the queued regional image as it arrives; returns the digest of what was sent.

    A mismatch aborts the upload before its last byte, removes ``path`` and raises
    VerificationError (retryable): glance keeps the image ``queued``.  So does a
    fetch that fails, or a stall, with their own errors (agent/stream.py).
    """
    image_id = str(image["id"])
    expected = check.Digest.of_record(image, "cascading image")
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise _fail(endpoint, f"cannot read {path}: {exc.strerror}", retryable=True) from None
    with handle:
        body = stream.FollowingBody(handle, expected, follow.algos, image_id, follow.arrival, follow.idle_timeout,
                                    follow.progress)
        follow.body = body
        try:
            client.images.upload(image_id, body, image_size=expected.size)
        except VerificationError:
            LOG.warning("upload of %s to %s aborted before its last byte: %s file differs from the "
                        "cascading image; removed", image_id, endpoint, path)
            remove_file(path)
            settle(client, image_id, endpoint)
            raise
        except GlanceSyncError as exc:
            LOG.warning("upload of %s to %s aborted before its last byte: %s", image_id, endpoint, exc)
            settle(client, image_id, endpoint)
            raise
        except Exception as exc:
            raise _refused(client, image_id, exc, endpoint) from None
        finally:
            follow.body = None
    if body.digest is None:
        raise _fail(endpoint, f"glance answered the upload of {image_id} before its last byte", retryable=True)
    return body.digest


def settle(client: Any, image_id: str, endpoint: str, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait (a little) until glance has put an aborted upload's image back from ``saving``.

    glance does so as soon as it notices the closed connection; a retry in the same
    attempt would otherwise find it ``saving`` and refuse it.
    """
    deadline = clock() + SETTLE_SECONDS
    while clock() < deadline:
        try:
            record = glance.get_image(client, image_id, endpoint)
        except GlanceSyncError:
            return
        if record is None or record.get("status") != "saving":
            return
        sleep(SETTLE_POLL)


def _refused(client: Any, image_id: str, exc: Exception, endpoint: str) -> GlanceError:
    """A failed upload; retryable whatever glance answered while the image is still ``queued``."""
    error = glance.translate(exc, endpoint)
    try:
        regional = glance.get_image(client, image_id, endpoint)
    except GlanceSyncError:
        return error
    if regional is not None and regional.get("status") == "queued":
        return _fail(endpoint, f"upload of {image_id} refused ({error.kwargs.get('detail')}); the image is "
                     "still queued in this region, so a later attempt uploads again", retryable=True)
    return error


def _hash(chunks: Iterable[bytes], algos: Iterable[str], image_id: str) -> tuple[int, str, dict[str, str]]:
    """Size, md5 and one hash per algorithm of ``chunks``, in one pass."""
    hashers = stream.hashers(algos, image_id)
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


def register(client: Any, image: dict[str, Any], path: str, verified: check.Digest | Follow,
             endpoint: str, retire: Callable[[str], None] | None = None) -> check.Digest:
    """Make the regional copy of ``image`` from the file ``path``; returns what was verified.

    ``verified`` is the digest of the file as it arrived, checked against the
    cascading image, or (``Follow``) the fetch still writing it, which the upload
    follows.  The upload checks the file again as it sends it (its hashes in the
    algorithms of the fetch), and the result is what was sent, plus the region's
    own hash when it uses another algorithm.  The local file is removed on success
    (``retire(path)`` first, which may keep it: agent/cache.py);
    on a failure it is kept only when the failure is retryable and the file was not
    found to differ, so a retry need not fetch the bytes again.
    """
    follow = verified if isinstance(verified, Follow) else Follow.of(verified)
    image_id = image["id"]
    try:
        action = existing_copy(glance.get_image(client, image_id, endpoint), image, endpoint)
        if action == "create":
            create(client, image, endpoint)
            action = existing_copy(glance.get_image(client, image_id, endpoint), image, endpoint)
        if action == "upload":
            sent = upload_file(client, image, path, follow, endpoint)
        else:  # made meanwhile by another attempt: compared with what our fetch verified
            sent = follow.arrival.result(None)
            if sent is None:
                raise stream.Aborted(str(image_id), f"the fetch failed ({follow.arrival.error})")
        if follow.uploaded is not None:
            follow.uploaded()
        regional = glance.get_image(client, image_id, endpoint)
        sent = check_uploaded(regional, sent, path, image_id, endpoint)
    except GlanceSyncError as exc:
        if not exc.retryable:
            remove_file(path)
        raise
    if retire is not None:
        try:
            retire(path)
        except OSError as exc:  # the region has its copy: keeping the file is only a bonus
            LOG.warning("verified file %s not kept for other regions: %s", path, exc)
    remove_file(path)
    return sent


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning("cannot remove %s: %s", path, exc.strerror)
