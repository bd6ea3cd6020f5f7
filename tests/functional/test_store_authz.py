"""The cascaded:// driver is no confused deputy: it reads a regional image only for a caller who may.

On the session topology (cascading glance with our store driver and our policy file
etc/glance-policy.yaml, regional glances), callers are told apart by the identity
headers glance trusts in the harness (X-User-Id, X-Project-Id, X-Roles).  Project A
owns a private image in RegionA; project B's member tries to read it through an image
of B's on the cascading glance:

- the policy file refuses B's location write (403);
- where a location was put there anyway (an admin here, standing in for a deployment
  without the policy), B's download is refused: glance answers 204 with no data when
  a store says NotFound, exactly as for a location whose image is gone;
- the owner A and an admin still read the right bytes through the same driver.

No coordinator is needed: the images are made directly where they would be.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from glanceclient import exc as glance_exc

from glancesync.protocol import cascaded_url
from tests.harness.glance import admin_client, admin_session
from tests.harness.topology import Topology

PROJECT_A = "a0a0a0a0a0a04a0a8a0a0a0a0a0a0a0a"
PROJECT_B = "b0b0b0b0b0b04b0b8b0b0b0b0b0b0b0b"
PROJECT_C = "c0c0c0c0c0c04c0c8c0c0c0c0c0c0c0c"
SIZE = 256 * 1024


def as_project(project: str, roles: str = "member,reader") -> dict[str, str]:
    """The identity headers of a user of ``project`` (keystone gives member users reader too)."""
    return {"X-User-Id": f"user-of-{project[:8]}", "X-Project-Id": project, "X-Roles": roles}


def client(url: str, project: str | None = None) -> Any:
    """A glanceclient as a member of ``project``, or as the harness admin."""
    return admin_client(url, **as_project(project)) if project else admin_client(url)


def download(url: str, image_id: str, project: str | None = None) -> tuple[int, bytes]:
    """GET /v2/images/{id}/file as a member of ``project`` (or admin): status and body."""
    headers = as_project(project) if project else {}
    resp = admin_session(url, **headers).get(f"{url}/v2/images/{image_id}/file", raise_exc=False)
    return resp.status_code, resp.content


@dataclass
class Regional:
    id: str
    data: bytes


def regional_image(topology: Topology, owner: str, **props: Any) -> Regional:
    """An active image of ``owner`` in RegionA, created by a member of that project."""
    glance = client(topology.cascaded["RegionA"].url, owner)
    data = os.urandom(SIZE)
    image = glance.images.create(name=f"authz-{uuid.uuid4().hex[:8]}", disk_format="raw",
                                 container_format="bare", **props)
    glance.images.upload(image["id"], io.BytesIO(data), image_size=len(data))
    assert glance.images.get(image["id"])["status"] == "active"
    return Regional(image["id"], data)


def cascading_image(topology: Topology, owner: str, location: str) -> str:
    """A cascading image of ``owner`` whose only data is ``location``, put there by an admin."""
    admin = client(topology.cascading.url)
    image = admin.images.create(name=f"authz-{uuid.uuid4().hex[:8]}", disk_format="raw",
                                container_format="bare", owner=owner)
    admin.images.add_location(image["id"], location, {})
    assert admin.images.get(image["id"])["status"] == "active"
    return image["id"]


@pytest.fixture(scope="module")
def a_private(topology: Topology) -> Regional:
    if not topology.cascading.cascaded_store:
        pytest.fail("the session topology runs without the cascaded:// driver (GLANCESYNC_TEST_CASCADED_STORE=0)")
    return regional_image(topology, PROJECT_A)


def test_a_member_cannot_add_a_location_to_their_own_queued_image(topology: Topology, a_private: Regional) -> None:
    b = client(topology.cascading.url, PROJECT_B)
    image = b.images.create(name="b-queued", disk_format="raw", container_format="bare")
    with pytest.raises(glance_exc.HTTPForbidden):
        b.images.add_location(image["id"], cascaded_url("RegionA", a_private.id), {})
    after = b.images.get(image["id"])
    assert after["status"] == "queued"
    assert after.get("locations") == []


def test_a_crafted_location_does_not_let_another_project_read(topology: Topology, a_private: Regional) -> None:
    crafted = cascading_image(topology, PROJECT_B, cascaded_url("RegionA", a_private.id))
    status, body = download(topology.cascading.url, crafted, PROJECT_B)
    assert (status, body) == (204, b""), f"B read {len(body)} bytes of A's private image (status {status})"
    # An admin may read through the same location: the refusal is the caller's, not the location's.
    status, body = download(topology.cascading.url, crafted)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(a_private.data).digest()


def test_the_owner_and_an_admin_read_the_regional_copy(topology: Topology, a_private: Regional) -> None:
    mine = cascading_image(topology, PROJECT_A, cascaded_url("RegionA", a_private.id))
    for project in (PROJECT_A, None):
        status, body = download(topology.cascading.url, mine, project)
        assert status == 200, project
        assert hashlib.sha256(body).digest() == hashlib.sha256(a_private.data).digest(), project
    # A ranged read goes through the same check.
    resp = admin_session(topology.cascading.url, **as_project(PROJECT_A)).get(
        f"{topology.cascading.url}/v2/images/{mine}/file", headers={"Range": "bytes=100-199"}, raise_exc=False
    )
    assert (resp.status_code, resp.content) == (206, a_private.data[100:200])


def test_a_shared_image_is_read_only_once_the_member_accepted(topology: Topology) -> None:
    """The driver asks the regional glance for the caller's membership, on every read."""
    shared = regional_image(topology, PROJECT_A, visibility="shared")
    region_a = client(topology.cascaded["RegionA"].url, PROJECT_A)
    region_a.image_members.create(shared.id, PROJECT_C)
    theirs = cascading_image(topology, PROJECT_C, cascaded_url("RegionA", shared.id))
    assert download(topology.cascading.url, theirs, PROJECT_C) == (204, b"")  # pending
    region_c = client(topology.cascaded["RegionA"].url, PROJECT_C)
    region_c.image_members.update(shared.id, PROJECT_C, "accepted")
    assert download(topology.cascading.url, theirs, PROJECT_C) == (200, shared.data)
    region_c.image_members.update(shared.id, PROJECT_C, "rejected")
    assert download(topology.cascading.url, theirs, PROJECT_C) == (204, b"")
