"""Applying update and delete tasks to the regional copy of an image.

An update makes the regional image's copied properties equal to the cascading
image's (one PATCH with only what differs) and follows its status: a deactivated
cascading image deactivates the copy, an active one reactivates it.  A delete
removes the regional image; an image that is already gone counts as deleted, so
a repeated delete is harmless.  The members of a shared image follow the
cascading image's list, statuses included (setting another project's member
status takes an admin, which the agent's credentials are in any case).
"""

from __future__ import annotations

from typing import Any

from agent import upload
from glancesync import glance
from glancesync.exceptions import GlanceError
from glancesync.imagediff import property_changes


def _call(endpoint: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TypeError as exc:
        raise GlanceError(endpoint=endpoint, detail=f"refused by the image schema: {exc}", retryable=False) from None
    except Exception as exc:
        raise glance.translate(exc, endpoint) from None


def apply_update(client: Any, cascading: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """Make the regional image follow ``cascading``; returns what was changed (for the log)."""
    image_id = cascading["id"]
    regional = glance.get_image(client, image_id, endpoint)
    if regional is None:
        raise GlanceError(
            endpoint=endpoint, detail=f"image {image_id} not in region (a copy task must come first)", retryable=False
        )
    want_status, have_status = cascading.get("status"), regional.get("status")
    done: dict[str, Any] = {}
    if want_status == "active" and have_status == "deactivated":
        _call(endpoint, client.images.reactivate, image_id)
        done["status"] = "reactivated"
    changes, removes = property_changes(cascading, regional)
    if changes or removes:
        _call(endpoint, client.images.update, image_id, remove_props=removes or None, **changes)
        done.update(set=sorted(changes), removed=removes)
    if want_status == "deactivated" and have_status == "active":
        _call(endpoint, client.images.deactivate, image_id)
        done["status"] = "deactivated"
    return done


def apply_members(client: Any, image_id: str, members: list[dict[str, str]], endpoint: str) -> dict[str, Any]:
    """Make the regional image's members and their statuses those of ``members``; returns what changed."""
    listed = _call(endpoint, lambda: list(client.image_members.list(image_id)))
    have = {str(m["member_id"]): str(m["status"]) for m in listed}
    want = {m["member_id"]: m["status"] for m in members}
    done: dict[str, Any] = {}
    added = sorted(want.keys() - have.keys())
    for member_id in added:
        _call(endpoint, client.image_members.create, image_id, member_id)
        have[member_id] = "pending"
    restated = sorted(m for m in want if have[m] != want[m])
    for member_id in restated:
        _call(endpoint, client.image_members.update, image_id, member_id, want[member_id])
    removed = sorted(have.keys() - want.keys())
    for member_id in removed:
        _call(endpoint, client.image_members.delete, image_id, member_id)
    for name, ids in (("members_added", added), ("members_restated", restated), ("members_removed", removed)):
        if ids:
            done[name] = ids
    return done


def apply_delete(client: Any, image_id: str, part_file: str | None, endpoint: str) -> bool:
    """Delete the regional image and any partial local file; True if glance deleted something."""
    if part_file:
        upload.remove_file(part_file)
    return glance.call(lambda: client.images.delete(image_id) or True, endpoint, missing=False)
