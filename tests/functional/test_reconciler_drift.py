"""The reconciler repairs drift per (image, region) on real glance-apis (coordinator/regiondrift.py).

Each test makes one kind of drift without any event: through a client signed with the
loop-guard secret (the filter makes no event of its calls) or directly in a region's
glance. The shared topology's coordinator reconciles every 3 s.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

from glanceclient import exc as glance_exc

from glancesync.protocol import cascaded_url
from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.harness.glance import signed_client, venv_bin
from tests.harness.topology import Topology


def _silent(topology: Topology):
    return signed_client(topology.cascading.url, topology.internal_secret_file)


def test_a_lost_upload_after_a_seen_create_is_synced(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = client.images.create(name="drift-create-seen", disk_format="raw", container_format="bare")
    # The created event reaches the journal; the upload's event is lost (no event is made).
    helpers.wait_until(lambda: helpers.status(topology, "image", image["id"]).get("known"), 60,
                       "the created event in the journal")
    data = b"drift" * 100_000
    _silent(topology).images.upload(image["id"], io.BytesIO(data), image_size=len(data))
    helpers.wait_states(topology, image["id"], "synced", timeout=120)
    for server in topology.cascaded.values():
        assert server.client().images.get(image["id"])["size"] == len(data)


def test_metadata_changed_in_a_region_is_put_back(topology: Topology, sync: SyncServices) -> None:
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB, os_distro="debian")
    helpers.wait_states(topology, image.id, "synced")
    region = topology.region_names[0]
    regional = topology.cascaded[region].client()
    regional.images.update(image.id, os_distro="tampered", remove_props=None)
    helpers.wait_until(lambda: regional.images.get(image.id).get("os_distro") == "debian", 90,
                       "the reconciler to put the metadata back")


def test_a_lost_location_is_registered_again(topology: Topology, sync: SyncServices) -> None:
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    helpers.wait_states(topology, image.id, "synced")
    region = topology.region_names[-1]
    url = cascaded_url(region, image.id)
    _silent(topology).images.delete_locations(image.id, {url})
    client = topology.cascading.client()
    assert url not in [loc["url"] for loc in client.images.get(image.id)["locations"]]
    helpers.wait_until(lambda: url in [loc["url"] for loc in client.images.get(image.id)["locations"]], 90,
                       "the location to be registered again")
    helpers.wait_states(topology, image.id, "synced")


def test_a_copy_deleted_by_hand_is_reported_as_needing_an_operator(topology: Topology, sync: SyncServices) -> None:
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    helpers.wait_states(topology, image.id, "synced")
    region = topology.region_names[0]
    topology.cascaded[region].client().images.delete(image.id)
    view = helpers.wait_states(topology, image.id, {region: "failed"}, regions=[region], timeout=120)
    # Glance never lets a deleted id be created again: the region says so instead of looping.
    assert "deleted in this region" in view[region]["last_error"]
    other = topology.region_names[-1]
    assert helpers.image_regions(topology, image.id)[other]["state"] == "synced"
    try:
        copy = topology.cascaded[region].client().images.get(image.id)
    except glance_exc.HTTPNotFound:
        copy = None
    assert copy is None


def plan(topology: Topology, *args: str, conf: Path | None = None) -> str:
    """glance-sync-manage plan's stdout (its stderr may carry the pass's warning lines)."""
    result = subprocess.run([venv_bin("glance-sync-manage"), "--config-file", str(conf or topology.service_conf),
                             "plan", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_plan_shows_drift_without_repairing_it(topology: Topology, sync: SyncServices) -> None:
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB, os_distro="debian")
    helpers.wait_states(topology, image.id, "synced")
    assert json.loads(plan(topology, image.id, "--json")) == []
    assert plan(topology, image.id) == ""  # converged: nothing at all
    region = topology.region_names[0]
    regional = topology.cascaded[region].client()
    sync.kill_coordinator()  # no pass repairs it while plan looks
    try:
        regional.images.update(image.id, os_distro="tampered")
        rows = json.loads(plan(topology, image.id, "--json"))
        assert rows == [{"image_id": image.id, "region": region, "action": "update",
                         "reason": "metadata differs: os_distro"}]
        assert regional.images.get(image.id)["os_distro"] == "tampered"  # plan changed nothing
        assert f"{image.id}  {region}  update" in plan(topology, image.id)
    finally:
        sync.ensure()
    helpers.wait_until(lambda: regional.images.get(image.id).get("os_distro") == "debian", 90,
                       "the restarted coordinator's pass to repair it")
