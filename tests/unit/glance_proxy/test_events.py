"""The pure event mapper: every route, status codes, loop guard, PATCH changes."""

from __future__ import annotations

import pytest

from glance_proxy import events
from glancesync import protocol

IMG = "1b2c3d4e-0000-4000-8000-000000000001"
HEADERS = {"X-User-Id": "u1", "X-Project-Id": "p1", "X-Roles": "admin, member"}
IMAGE = {"id": IMG, "owner": "p1", "visibility": "shared", "status": "queued", "name": "cirros"}

ROUTES = [
    ("POST", "/v2/images", 201, "created"),
    ("PUT", f"/v2/images/{IMG}/file", 204, "uploaded"),
    ("POST", f"/v2/images/{IMG}/import", 202, "imported"),
    ("PATCH", f"/v2/images/{IMG}", 200, "updated"),
    ("PUT", f"/v2/images/{IMG}/tags/blue", 204, "tags_changed"),
    ("DELETE", f"/v2/images/{IMG}/tags/blue", 204, "tags_changed"),
    ("POST", f"/v2/images/{IMG}/actions/deactivate", 204, "deactivated"),
    ("POST", f"/v2/images/{IMG}/actions/reactivate", 204, "reactivated"),
    ("DELETE", f"/v2/images/{IMG}", 204, "deleted"),
    ("POST", f"/v2/images/{IMG}/locations", 202, "locations_changed"),
    ("DELETE", f"/v2/images/{IMG}/stores/fast", 204, "locations_changed"),
    ("POST", f"/v2/images/{IMG}/members", 200, "members_changed"),
    ("PUT", f"/v2/images/{IMG}/members/project-b", 200, "members_changed"),
    ("DELETE", f"/v2/images/{IMG}/members/project-b", 204, "members_changed"),
]


def _map(method, path, status, headers=HEADERS, body=None, patch=None, response_headers=None):
    if body is None and method in ("POST", "PATCH") and path.rstrip("/").endswith(("images", IMG)):
        body = IMAGE
    return events.map_request(method, path, headers, status, response_headers or {}, body, patch)


@pytest.mark.parametrize(("method", "path", "status", "kind"), ROUTES)
def test_each_route_makes_its_event_and_it_passes_the_protocol(method, path, status, kind):
    event = _map(method, path, status)
    assert event is not None
    assert event["kind"] == kind
    assert event["image_id"] == IMG
    assert len(event["event_id"]) == 32
    assert event["context"]["user_id"] == "u1"
    assert event["context"]["project_id"] == "p1"
    assert event["context"]["roles"] == ["admin", "member"]
    # The event is exactly what the wire accepts.
    decoded = protocol.decode(protocol.encode("event", event))
    assert decoded.body["kind"] == kind


@pytest.mark.parametrize(("method", "path", "status", "kind"), ROUTES)
@pytest.mark.parametrize("failed", [400, 403, 404, 409, 413, 500, 503, 301])
def test_non_2xx_makes_no_event(method, path, status, kind, failed):
    assert _map(method, path, failed) is None


@pytest.mark.parametrize(("method", "path", "status", "kind"), ROUTES)
def test_internal_header_makes_no_event(method, path, status, kind):
    headers = dict(HEADERS, **{protocol.INTERNAL_REQUEST_HEADER: "1"})
    assert _map(method, path, status, headers=headers) is None
    lower = dict(HEADERS, **{protocol.INTERNAL_REQUEST_HEADER.lower(): "coordinator"})
    assert _map(method, path, status, headers=lower) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/images"),
        ("GET", f"/v2/images/{IMG}"),
        ("GET", f"/v2/images/{IMG}/file"),
        ("HEAD", f"/v2/images/{IMG}"),
        ("PUT", f"/v2/images/{IMG}/stage"),
        ("POST", "/v2/tasks"),
        ("POST", "/v2/schemas/images"),
        ("GET", "/versions"),
        ("GET", f"/v2/images/{IMG}/members"),
        ("POST", f"/v2/images/{IMG}/members/{IMG}"),
        ("POST", f"/v2/images/{IMG}/actions/unknown"),
        ("PUT", "/v2/images"),
        ("DELETE", "/v2/images"),
        ("PATCH", f"/v2/images/{IMG}/file"),
        ("POST", "/v2/imagesX"),
        ("POST", "/v2/metadefs/namespaces/images"),
    ],
)
def test_routes_that_change_nothing_are_not_matched(method, path):
    assert events.match(method, path) is None
    assert _map(method, path, 204, body=IMAGE) is None


@pytest.mark.parametrize(
    "path",
    [f"/v2/images/{IMG}/file", f"/v2.1/images/{IMG}/file", f"/image/v2/images/{IMG}/file", f"/v2/images/{IMG}/file/"],
)
def test_paths_with_prefix_or_minor_version_match(path):
    route = events.match("PUT", path)
    assert route is not None
    assert (route.kind, route.image_id) == ("uploaded", IMG)


def test_only_create_and_patch_want_bodies():
    assert events.match("POST", "/v2/images").wants_response_body
    patch = events.match("PATCH", f"/v2/images/{IMG}")
    assert patch.wants_response_body and patch.wants_request_body
    upload = events.match("PUT", f"/v2/images/{IMG}/file")
    assert not upload.wants_response_body and not upload.wants_request_body


def test_created_carries_image_owner_and_visibility():
    event = _map("POST", "/v2/images", 201)
    assert event["image"] == IMAGE
    assert event["context"]["owner"] == "p1"
    assert event["context"]["visibility"] == "shared"


def test_created_without_body_takes_id_from_location_header():
    event = _map(
        "POST", "/v2/images", 201, body={}, response_headers={"location": f"http://h:9292/v2/images/{IMG}"}
    )
    assert event["image_id"] == IMG
    assert event["image"] is None


def test_created_without_any_id_makes_no_event():
    assert _map("POST", "/v2/images", 201, body={}) is None


def test_patch_changes_list_property_names_in_order():
    patch = [
        {"op": "replace", "path": "/name", "value": "x"},
        {"op": "add", "path": "/hw_disk_bus", "value": "scsi"},
        {"op": "replace", "path": "/name", "value": "y"},
        {"op": "replace", "path": "/tags", "value": ["a"]},
        {"op": "remove", "path": "/a~1b"},
    ]
    event = _map("PATCH", f"/v2/images/{IMG}", 200, patch=patch)
    assert event["kind"] == "updated"
    assert event["changes"] == ["name", "hw_disk_bus", "tags", "a/b"]
    assert event["image"] == IMAGE


def test_patch_old_draft_media_type():
    event = _map("PATCH", f"/v2/images/{IMG}", 200, patch=[{"replace": "/min_ram", "value": 5}])
    assert event["changes"] == ["min_ram"]


def test_patch_of_locations_only_is_locations_changed():
    patch = [{"op": "add", "path": "/locations/-", "value": {"url": "cascaded://A/x", "metadata": {}}}]
    assert _map("PATCH", f"/v2/images/{IMG}", 200, patch=patch)["kind"] == "locations_changed"
    mixed = patch + [{"op": "replace", "path": "/name", "value": "n"}]
    event = _map("PATCH", f"/v2/images/{IMG}", 200, patch=mixed)
    assert event["kind"] == "updated"
    assert event["changes"] == ["locations", "name"]


def test_patch_without_readable_body_is_updated_with_no_changes():
    event = _map("PATCH", f"/v2/images/{IMG}", 200, patch=None)
    assert (event["kind"], event["changes"]) == ("updated", [])
    assert events.patch_changes({"not": "a list"}) == []
    assert events.patch_changes([1, {"op": "x"}, {"path": 3}]) == []


def test_context_without_identity_headers_is_empty_not_missing():
    event = _map("DELETE", f"/v2/images/{IMG}", 204, headers={})
    assert event["context"] == {
        "user_id": None, "project_id": None, "roles": [], "owner": None, "visibility": None,
    }  # fmt: skip


def test_legacy_tenant_header():
    event = _map("DELETE", f"/v2/images/{IMG}", 204, headers={"X-Tenant-Id": "t9"})
    assert event["context"]["project_id"] == "t9"


def test_parse_json():
    assert events.parse_json(b'{"a": 1}') == {"a": 1}
    assert events.parse_json(b"") is None
    assert events.parse_json(None) is None
    assert events.parse_json(b"\xff<html>") is None


def test_event_ids_are_unique():
    first = _map("DELETE", f"/v2/images/{IMG}", 204)
    second = _map("DELETE", f"/v2/images/{IMG}", 204)
    assert first["event_id"] != second["event_id"]

