"""Image sharing follows the cascading image into every region, on real glance-apis.

Members added before the upload arrive with the copy; members added, accepted
and removed later arrive as ``members_changed`` events from the glancesync filter.
Members changed by hand in a region (no event at all) are shown by ``plan`` and put
back by the reconciler (coordinator/memberscan.py).
"""

from __future__ import annotations

import json
import uuid

from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.functional.test_reconciler_drift import plan
from tests.harness.topology import Topology


def _regional_members(topology: Topology, image_id: str) -> dict[str, dict[str, str]]:
    return {
        region: {m["member_id"]: m["status"] for m in server.client().image_members.list(image_id)}
        for region, server in topology.cascaded.items()
    }


def _wait_members(topology: Topology, image_id: str, want: dict[str, str], what: str) -> None:
    helpers.wait_until(
        lambda: all(have == want for have in _regional_members(topology, image_id).values()), 90, what)


def test_members_follow_the_cascading_image(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    image = helpers.upload_random(client, helpers.MIB, visibility="shared")
    client.image_members.create(image.id, first)
    helpers.wait_states(topology, image.id, "synced")
    _wait_members(topology, image.id, {first: "pending"}, "the first member in every region")

    client.image_members.update(image.id, first, "accepted")
    client.image_members.create(image.id, second)
    _wait_members(topology, image.id, {first: "accepted", second: "pending"},
                  "the acceptance and the second member in every region")

    client.image_members.delete(image.id, first)
    _wait_members(topology, image.id, {second: "pending"}, "the removal in every region")
    copy = next(iter(topology.cascaded.values())).client().images.get(image.id)
    assert copy["visibility"] == "shared"


def test_an_image_made_shared_later_shares_in_every_region(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    member = uuid.uuid4().hex
    image = helpers.upload_random(client, helpers.MIB, visibility="private")
    helpers.wait_states(topology, image.id, "synced")
    client.images.update(image.id, visibility="shared")
    helpers.wait_until(
        lambda: all(s.client().images.get(image.id)["visibility"] == "shared" for s in topology.cascaded.values()),
        90, "the visibility change in every region")
    client.image_members.create(image.id, member)
    _wait_members(topology, image.id, {member: "pending"}, "the member in every region")


def test_members_changed_by_hand_in_a_region_are_shown_by_plan_and_put_back(topology: Topology,
                                                                             sync: SyncServices) -> None:
    client = topology.cascading.client()
    kept, dropped, stranger = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    image = helpers.upload_random(client, helpers.MIB, visibility="shared")
    client.image_members.create(image.id, kept)
    client.image_members.create(image.id, dropped)
    client.image_members.update(image.id, kept, "accepted")
    helpers.wait_states(topology, image.id, "synced")
    want = {kept: "accepted", dropped: "pending"}
    _wait_members(topology, image.id, want, "the members in every region")
    assert plan(topology, image.id) == ""

    region = topology.region_names[0]
    regional = topology.cascaded[region].client()
    sync.kill_coordinator()  # no pass repairs it while plan looks
    try:
        # By hand in the region, no event: a status changed, a member removed, a stranger added.
        regional.image_members.update(image.id, kept, "rejected")
        regional.image_members.delete(image.id, dropped)
        regional.image_members.create(image.id, stranger)
        rows = json.loads(plan(topology, image.id, "--json"))
        assert rows == [{"image_id": image.id, "region": region, "action": "update",
                         "reason": f"members differ: missing {dropped}; extra {stranger}; "
                                   f"status of {kept} rejected, not accepted"}]
        assert _regional_members(topology, image.id)[region] == {kept: "rejected", stranger: "pending"}
    finally:
        sync.ensure()
    _wait_members(topology, image.id, want, "the reconciler to put the members back")
    helpers.wait_states(topology, image.id, "synced")
    helpers.wait_until(lambda: plan(topology, image.id) == "", 60, "plan to print nothing once converged")
