"""The pure mapper from one image API call to one image event (protocol ``event`` body).

Both the paste filter (inside glance-api) and the standalone reverse proxy see the
same HTTP exchanges; this module decides, without any I/O, which of them change an
image the regions must follow and what the event says.  It works in two steps so
that a request that changes nothing costs a regex match and nothing more:

1. ``match(method, path)`` looks only at the method and the path and returns a
   ``Route`` (or None): which kind of event it may make and whether the caller
   must keep the response JSON (create, PATCH) or the PATCH request body.
2. ``build_event(route, ...)`` runs after the response, with the status, headers
   and the small JSON bodies, and returns the event dict or None.

``map_request`` does both at once for callers that already hold everything.

The routes (glance API v2; ``{id}`` is the image id)::

    POST   /v2/images                          201 created
    PUT    /v2/images/{id}/file                204 uploaded
    POST   /v2/images/{id}/import              202 imported (glance finishes it later)
    PATCH  /v2/images/{id}                     200 updated | locations_changed
    POST   /v2/images/{id}/locations           202 locations_changed
    DELETE /v2/images/{id}/stores/{store}      204 locations_changed
    PUT    /v2/images/{id}/tags/{tag}          204 tags_changed
    DELETE /v2/images/{id}/tags/{tag}          204 tags_changed
    POST   /v2/images/{id}/actions/deactivate  204 deactivated
    POST   /v2/images/{id}/actions/reactivate  204 reactivated
    DELETE /v2/images/{id}                     204 deleted
    POST   /v2/images/{id}/members             200 members_changed
    PUT    /v2/images/{id}/members/{member}    200 members_changed (a member's status)
    DELETE /v2/images/{id}/members/{member}    204 members_changed

``PUT .../stage`` is not an event: a staged image changes nothing the regions hold.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glancesync.protocol import INTERNAL_REQUEST_HEADER

# The path may carry a prefix (``/image`` behind a devstack-style frontend) and a
# minor version (``/v2.1``) when the standalone proxy sees it before glance's
# version negotiation rewrites it; the filter inside glance sees ``/v2/...``.
_IMAGES_PATH = re.compile(r"/v2(?:\.\d+)*/images(?:/(?P<rest>[^?#]*))?/?$")

# (method, shape of the path after /images/<id>) -> event kind; "" is the image itself.
_ROUTES: dict[tuple[str, str], str] = {
    ("PUT", "file"): "uploaded",
    ("POST", "import"): "imported",
    ("PATCH", ""): "updated",
    ("POST", "locations"): "locations_changed",
    ("DELETE", "stores/*"): "locations_changed",
    ("PUT", "tags/*"): "tags_changed",
    ("DELETE", "tags/*"): "tags_changed",
    ("POST", "actions/deactivate"): "deactivated",
    ("POST", "actions/reactivate"): "reactivated",
    ("DELETE", ""): "deleted",
    ("POST", "members"): "members_changed",
    ("PUT", "members/*"): "members_changed",
    ("DELETE", "members/*"): "members_changed",
}

# Identity headers keystonemiddleware sets (older names second).
_USER_HEADERS = ("X-User-Id", "X-User")
_PROJECT_HEADERS = ("X-Project-Id", "X-Tenant-Id", "X-Tenant")
_ROLES_HEADER = "X-Roles"

_PATCH_OPS = ("add", "remove", "replace")


@dataclass(frozen=True)
class Route:
    """What method + path alone say about a request that may change an image."""

    kind: str
    image_id: str | None
    wants_response_body: bool = False
    wants_request_body: bool = False


def _shape(rest: str) -> str:
    """``tags/foo`` -> ``tags/*``; ``actions/deactivate`` stays as it is."""
    head, _, tail = rest.partition("/")
    if head in ("tags", "stores", "members") and tail and "/" not in tail:
        return f"{head}/*"
    return rest


def match(method: str, path: str) -> Route | None:
    """The route of a request that may change an image, from method and path only."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    found = _IMAGES_PATH.search(path)
    if found is None:
        return None
    rest = (found.group("rest") or "").strip("/")
    if not rest:
        if method == "POST":
            return Route("created", None, wants_response_body=True)
        return None
    image_id, _, sub = rest.partition("/")
    kind = _ROUTES.get((method, _shape(sub)))
    if kind is None or not image_id:
        return None
    if kind == "updated":
        return Route(kind, image_id, wants_response_body=True, wants_request_body=True)
    return Route(kind, image_id)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup in a plain mapping."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def is_internal(headers: Mapping[str, str]) -> bool:
    """True for the coordinator's own calls (loop guard)."""
    return header(headers, INTERNAL_REQUEST_HEADER) is not None


def parse_json(data: bytes | None) -> Any:
    """The JSON value of a small body, or None when it is empty or not JSON."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _unescape(segment: str) -> str:
    # JSON pointer escapes (RFC 6901): ~1 is '/', ~0 is '~'.
    return segment.replace("~1", "/").replace("~0", "~")


def patch_changes(patch: Any) -> list[str]:
    """Names of the top-level properties a JSON patch touches, in first-seen order.

    Accepts glance's current media type (``{"op": "replace", "path": "/name"}``) and
    the older draft (``{"replace": "/name"}``).
    """
    if not isinstance(patch, list):
        return []
    names: list[str] = []
    for op in patch:
        if not isinstance(op, dict):
            continue
        path = op.get("path")
        if path is None:
            path = next((op[k] for k in _PATCH_OPS if isinstance(op.get(k), str)), None)
        if not isinstance(path, str):
            continue
        name = _unescape(path.lstrip("/").split("/", 1)[0])
        if name and name not in names:
            names.append(name)
    return names


def _context(headers: Mapping[str, str], image: Mapping[str, Any] | None) -> dict[str, Any]:
    roles = header(headers, _ROLES_HEADER) or ""
    return {
        "user_id": next((v for h in _USER_HEADERS if (v := header(headers, h))), None),
        "project_id": next((v for h in _PROJECT_HEADERS if (v := header(headers, h))), None),
        "roles": [r.strip() for r in roles.split(",") if r.strip()],
        "owner": image.get("owner") if image else None,
        "visibility": image.get("visibility") if image else None,
    }


def _created_id(image: Mapping[str, Any] | None, response_headers: Mapping[str, str]) -> str | None:
    if image and isinstance(image.get("id"), str):
        return image["id"]
    # Glance also names the new image in Location: .../v2/images/<id>
    location = urllib.parse.urlsplit(header(response_headers, "Location") or "").path
    found = _IMAGES_PATH.search(location)
    if found and found.group("rest"):
        return found.group("rest").strip("/").split("/")[0] or None
    return None


def build_event(
    route: Route,
    status: int,
    request_headers: Mapping[str, str],
    response_headers: Mapping[str, str] | None = None,
    response_body: Any = None,
    patch_body: Any = None,
    now: float | None = None,
) -> dict[str, Any] | None:
    """The event body for a finished request on ``route``, or None if it made no change."""
    if not 200 <= status < 300 or is_internal(request_headers):
        return None
    image = response_body if isinstance(response_body, dict) and response_body.get("id") else None
    image_id = route.image_id
    if route.kind == "created":
        image_id = _created_id(image, response_headers or {})
    if not image_id:
        return None
    kind = route.kind
    changes: list[str] = []
    if kind == "updated":
        changes = patch_changes(patch_body)
        if changes and all(name == "locations" for name in changes):
            kind = "locations_changed"
    return {
        "event_id": uuid.uuid4().hex,
        "kind": kind,
        "image_id": image_id,
        "image": image,
        "changes": changes,
        "context": _context(request_headers, image),
        "occurred_at": time.time() if now is None else now,
    }


def map_request(
    method: str,
    path: str,
    request_headers: Mapping[str, str],
    status: int,
    response_headers: Mapping[str, str] | None = None,
    response_body: Any = None,
    patch_body: Any = None,
) -> dict[str, Any] | None:
    """One call, all at once: the event it makes, or None."""
    route = match(method, path)
    if route is None:
        return None
    return build_event(route, status, request_headers, response_headers, response_body, patch_body)
