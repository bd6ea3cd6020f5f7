"""agent.apply and agent.upload decisions, with a small fake of glanceclient's images API."""

from __future__ import annotations

import pytest
from glanceclient import exc as glance_exc

from agent import apply
from glancesync import imagediff
from glancesync.exceptions import GlanceError

CASCADING = {
    "id": "img-1", "status": "active", "name": "cirros", "visibility": "public", "min_disk": 1, "min_ram": 0,
    "disk_format": "raw", "container_format": "bare", "tags": ["a", "b"], "hw_disk_bus": "virtio",
    "os_hash_value": "h1", "size": 10, "checksum": "c1", "os_glance_importing_to_stores": "",
}


def test_property_changes_patches_only_what_differs():
    regional = dict(CASCADING, name="old", tags=["b", "a"], extra="gone", os_hash_value="ignored")
    del regional["hw_disk_bus"]
    changes, removes = imagediff.property_changes(CASCADING, regional)
    assert changes == {"name": "cirros", "hw_disk_bus": "virtio"}
    assert removes == ["extra"]


def test_property_changes_never_removes_core_fields_or_touches_create_only():
    regional = dict(CASCADING, disk_format="qcow2", owner="p1")
    changes, removes = imagediff.property_changes(CASCADING, regional)
    assert changes == {} and removes == []


class FakeImages:
    def __init__(self, images: dict) -> None:
        self.images = images
        self.calls: list[tuple] = []

    def get(self, image_id):
        if image_id not in self.images:
            raise glance_exc.HTTPNotFound("no image")
        return self.images[image_id]

    def update(self, image_id, remove_props=None, **kwargs):
        self.calls.append(("update", remove_props, kwargs))

    def deactivate(self, image_id):
        self.calls.append(("deactivate",))

    def reactivate(self, image_id):
        self.calls.append(("reactivate",))

    def delete(self, image_id):
        self.calls.append(("delete",))
        self.get(image_id)
        del self.images[image_id]


class FakeClient:
    def __init__(self, images: dict) -> None:
        self.images = FakeImages(images)


def test_update_deactivates_after_patching():
    client = FakeClient({"img-1": dict(CASCADING, name="old")})
    apply.apply_update(client, dict(CASCADING, status="deactivated"), "ep")
    assert client.images.calls == [("update", None, {"name": "cirros"}), ("deactivate",)]


def test_update_reactivates_a_deactivated_copy():
    client = FakeClient({"img-1": dict(CASCADING, status="deactivated")})
    apply.apply_update(client, CASCADING, "ep")
    assert client.images.calls == [("reactivate",)]


def test_update_of_missing_image_fails_not_retryable():
    with pytest.raises(GlanceError) as info:
        apply.apply_update(FakeClient({}), CASCADING, "ep")
    assert info.value.retryable is False and "not in region" in str(info.value)


def test_delete_tolerates_404_and_removes_part_file(tmp_path):
    part = tmp_path / "img-1.part"
    part.write_bytes(b"x")
    assert apply.apply_delete(FakeClient({}), "img-1", str(part), "ep") is False
    assert not part.exists()
    assert apply.apply_delete(FakeClient({"img-1": dict(CASCADING)}), "img-1", None, "ep") is True


class FakeMembers:
    def __init__(self, members: dict[str, str]) -> None:
        self.members = dict(members)
        self.calls: list[tuple] = []

    def list(self, image_id):
        return [{"member_id": m, "status": s} for m, s in self.members.items()]

    def create(self, image_id, member_id):
        self.calls.append(("create", member_id))
        self.members[member_id] = "pending"

    def update(self, image_id, member_id, status):
        self.calls.append(("update", member_id, status))
        self.members[member_id] = status

    def delete(self, image_id, member_id):
        self.calls.append(("delete", member_id))
        del self.members[member_id]


def test_members_are_added_restated_and_removed_to_match():
    client = FakeClient({})
    client.image_members = FakeMembers({"p-keep": "accepted", "p-gone": "pending", "p-flip": "pending"})
    want = [{"member_id": "p-keep", "status": "accepted"}, {"member_id": "p-flip", "status": "rejected"},
            {"member_id": "p-new", "status": "accepted"}]
    done = apply.apply_members(client, "img-1", want, "ep")
    assert client.image_members.members == {"p-keep": "accepted", "p-flip": "rejected", "p-new": "accepted"}
    assert done == {"members_added": ["p-new"], "members_restated": ["p-flip", "p-new"],
                    "members_removed": ["p-gone"]}
    client.image_members.calls.clear()
    assert apply.apply_members(client, "img-1", want, "ep") == {}
    assert client.image_members.calls == []


def test_members_refused_by_glance_fail_the_task():
    class Refusing(FakeMembers):
        def create(self, image_id, member_id):
            raise glance_exc.HTTPForbidden("Only shared images have members.")

    client = FakeClient({})
    client.image_members = Refusing({})
    with pytest.raises(GlanceError) as info:
        apply.apply_members(client, "img-1", [{"member_id": "p", "status": "pending"}], "ep")
    assert "shared" in str(info.value)
