"""Targets that change, on the real topology (doc/reconciler.md, doc/runbook.md).

- A ``USER`` image whose ``glance_sync_regions`` drops a region loses that copy and its
  ``cascaded://`` location; the other region keeps its copy.  Adding the region back is
  a targeting problem with a clear reason (glance never re-creates a deleted id), never
  a silent success.
- The same removal when the ``updated`` event is lost (the change made without any event,
  while the coordinator is down): ``plan`` shows the copy ``unwanted`` and touches nothing,
  and the restarted coordinator's reconciler pass deletes it and its location.
- An update made while a region's agent is down reaches that region when it returns.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from glanceclient import exc as glance_exc

from glancesync.protocol import cascaded_url
from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.functional.test_operator_commands import coordinator_with, locations
from tests.functional.test_reconciler_drift import plan
from tests.harness.glance import ADMIN_PROJECT_ID, signed_client
from tests.harness.topology import Topology


def test_a_region_dropped_from_the_targets_loses_its_copy_and_cannot_come_back_silently(
        topology: Topology, sync: SyncServices, tmp_path: Path) -> None:
    a, b = "RegionA", "RegionB"
    with coordinator_with(topology, sync, tmp_path / "user.conf", DEFAULT={"sync_strategy": "USER"}):
        client = topology.cascading.client()
        image = helpers.upload_random(client, helpers.MIB, glance_sync_regions=f"{a},{b}")
        helpers.wait_states(topology, image.id, "synced", regions=[a, b])
        assert sorted(locations(topology, image.id)) == [cascaded_url(a, image.id), cascaded_url(b, image.id)]

        client.images.update(image.id, glance_sync_regions=a)
        helpers.wait_states(topology, image.id, {a: "synced", b: "deleted"}, timeout=120)
        helpers.wait_until(lambda: locations(topology, image.id) == [cascaded_url(a, image.id)], 60,
                           "RegionB's location removed")
        with pytest.raises(glance_exc.HTTPNotFound):
            topology.cascaded[b].client().images.get(image.id)
        kept = topology.cascaded[a].client().images.get(image.id)
        assert kept["status"] == "active" and kept["glance_sync_regions"] == a
        assert client.images.get(image.id)["status"] == "active"

        client.images.update(image.id, glance_sync_regions=f"{a},{b}")
        why = helpers.wait_until(lambda: helpers.status(topology, "image", image.id)["targeting_error"], 60,
                                 "a targeting reason for the region added back")
        assert f"region '{b}'" in why and "purges the id" in why
        assert helpers.image_regions(topology, image.id)[b]["state"] == "deleted"
        wait = helpers.run_status(topology, "--wait", image.id, "--timeout", "30")
        assert wait.returncode == 1 and "purges the id" in wait.stderr
        line = helpers.wait_until(lambda: next((ln for ln in sync.coordinator_log().splitlines()
                                                if image.id in ln and "purges the id" in ln), None), 30,
                                  "the log line")
        assert "WARNING" in line


def test_a_region_dropped_while_its_event_is_lost_is_removed_by_the_reconciler(
        topology: Topology, sync: SyncServices, tmp_path: Path) -> None:
    a, b = "RegionA", "RegionB"
    # The other tests' images (owned by the admin project) stay targeted everywhere; this one's
    # owner has no rule, so its glance_sync_regions alone names its targets. One removal out of
    # a few tracked images is within the count limit; the percentage is off for this test.
    sections = {"DEFAULT": {"sync_strategy": "USER", "sync_user_rules": f"{ADMIN_PROJECT_ID}:{a};{b}"},
                "coordinator": {"reconcile_max_delete_percent": 0}}
    with coordinator_with(topology, sync, tmp_path / "user-rules.conf", **sections) as conf:
        client = topology.cascading.client()
        image = helpers.upload_random(client, helpers.MIB, owner=uuid.uuid4().hex, glance_sync_regions=f"{a},{b}")
        helpers.wait_states(topology, image.id, "synced", regions=[a, b])
        assert sorted(locations(topology, image.id)) == [cascaded_url(a, image.id), cascaded_url(b, image.id)]

        sync.kill_coordinator()
        # Signed with the loop-guard secret: the filter makes no event of it, as if it were lost.
        signed_client(topology.cascading.url, topology.internal_secret_file).images.update(
            image.id, glance_sync_regions=a)
        rows = json.loads(plan(topology, image.id, "--json", conf=conf))
        assert rows == [{"image_id": image.id, "region": a, "action": "update",
                         "reason": "metadata differs: glance_sync_regions"},
                        {"image_id": image.id, "region": b, "action": "unwanted",
                         "reason": "strategy USER no longer targets this region"}]
        assert topology.cascaded[b].client().images.get(image.id)["status"] == "active"  # plan acts on nothing

        topology.services.remove(sync.coordinator)
        sync.coordinator = topology.start_coordinator(conf=conf)
        helpers.wait_states(topology, image.id, {a: "synced", b: "deleted"}, timeout=120)
        helpers.wait_until(lambda: locations(topology, image.id) == [cascaded_url(a, image.id)], 60,
                           "RegionB's location removed")
        with pytest.raises(glance_exc.HTTPNotFound):
            topology.cascaded[b].client().images.get(image.id)
        assert topology.cascaded[a].client().images.get(image.id)["status"] == "active"
        assert f"image {image.id} drifted; repairs {{'{a}': 'update', '{b}': 'delete'}}" in sync.coordinator_log()
        helpers.wait_until(lambda: topology.cascaded[a].client().images.get(image.id)["glance_sync_regions"] == a,
                           60, "RegionA's copy updated")
        assert plan(topology, image.id, conf=conf) == ""


def test_an_update_made_while_an_agent_is_down_converges_when_it_returns(topology: Topology,
                                                                         sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = helpers.upload_random(client, helpers.MIB, os_distro="debian")
    helpers.wait_states(topology, image.id, "synced")
    region = topology.region_names[-1]
    regional = topology.cascaded[region].client()
    sync.stop_agent(region)
    try:
        client.images.update(image.id, os_distro="ubuntu")
        helpers.wait_until(lambda: helpers.status(topology, "image", image.id)["planned"], 60, "the update planned")
        assert regional.images.get(image.id)["os_distro"] == "debian"  # nobody applied it there yet
    finally:
        sync.ensure()
    helpers.wait_until(lambda: regional.images.get(image.id).get("os_distro") == "ubuntu", 120,
                       "the update applied once the agent is back")
    helpers.wait_states(topology, image.id, "synced")
