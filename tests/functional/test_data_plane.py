"""Images really move: SFTP pull, verification, same-id copies, regional locations, update, delete.

Everything on real services: a user's python-glanceclient upload to the cascading
glance-api (with the glancesync filter) drives the coordinator and the agents, and
the results are read back from every glance.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml
from glanceclient import exc as glance_exc

from glancesync.protocol import cascaded_url
from tests.functional import helpers
from tests.functional.services import SyncServices, send_event
from tests.harness.topology import Topology


def _cascaded_locations(image: dict) -> dict[str, str]:
    return {
        loc["url"]: (loc.get("metadata") or {}).get("region")
        for loc in image.get("locations", [])
        if loc["url"].startswith("cascaded://")
    }


@pytest.fixture(scope="module")
def synced_50mib(topology: Topology, sync_services: SyncServices) -> helpers.Uploaded:
    sync_services.ensure()
    image = helpers.upload_random(topology.cascading.client(), 50 * helpers.MIB)
    helpers.wait_states(topology, image.id, "synced", timeout=300)
    return image


def test_every_region_holds_the_same_verified_image(topology: Topology, synced_50mib) -> None:
    for region, server in topology.cascaded.items():
        copy = server.client().images.get(synced_50mib.id)
        assert copy["status"] == "active", region
        assert copy["size"] == synced_50mib.size, region
        assert copy["checksum"] == synced_50mib.md5, region
        assert copy["os_hash_value"] == synced_50mib.sha512, region


def test_cascading_image_lists_one_location_per_region(topology: Topology, synced_50mib) -> None:
    image = topology.cascading.client().images.get(synced_50mib.id)
    assert _cascaded_locations(image) == {
        cascaded_url(region, synced_50mib.id): region for region in topology.region_names
    }
    assert any(loc["url"].startswith("file://") for loc in image["locations"])


def test_status_reports_full_progress_for_synced_image(topology: Topology, synced_50mib) -> None:
    view = helpers.image_regions(topology, synced_50mib.id)
    for region in topology.region_names:
        assert view[region]["bytes_total"] == synced_50mib.size
        assert view[region]["bytes_done"] == synced_50mib.size


def test_repeated_sync_changes_nothing(topology: Topology, sync: SyncServices, synced_50mib) -> None:
    """A second upload event for the same image makes no second location and no new copy."""
    send_event(topology.client_port, "uploaded", synced_50mib.id)
    helpers.wait_states(topology, synced_50mib.id, "synced")
    image = topology.cascading.client().images.get(synced_50mib.id)
    assert len(_cascaded_locations(image)) == len(topology.region_names)
    assert len([u for u in (loc["url"] for loc in image["locations"]) if u.startswith("cascaded://")]) == 2


def test_download_through_cascading_glance_from_a_regional_copy(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = helpers.upload_random(client, 4 * helpers.MIB)
    helpers.wait_states(topology, image.id, "synced")
    record = client.images.get(image.id)
    file_index = next(i for i, loc in enumerate(record["locations"]) if loc["url"].startswith("file://"))
    file_path = record["locations"][file_index]["url"][len("file://"):]
    client.images.delete_locations(image.id, {record["locations"][file_index]["url"]})
    assert not os.path.exists(file_path), "glance kept the file behind the removed location"
    md5 = hashlib.md5()
    for chunk in client.images.data(image.id):
        md5.update(chunk)
    assert md5.hexdigest() == image.md5


def _agent_with_store(topology: Topology, tmp_path, region: str, agent_id: str, **store_changes):
    store = topology.store_map()
    store["cascading"]["store"].update(store_changes)
    path = tmp_path / f"{agent_id}-store.yaml"
    path.write_text(yaml.safe_dump(store))
    conf = topology.write_service_conf(tmp_path / f"{agent_id}.conf", DEFAULT={"glance_store_config": path})
    agent = topology.start_agent(region, agent_id, conf=conf)
    helpers.wait_until(lambda: agent_id in helpers.online_agents(topology)[region], 30, f"{agent_id} online")
    return agent


def test_unknown_ssh_host_key_is_refused_until_an_operator_resyncs(topology: Topology, sync: SyncServices, tmp_path) -> None:
    region = "RegionB"
    sync.stop_agent(region)
    agent = _agent_with_store(topology, tmp_path, region, "regionb-wrongkey",
                              known_hosts_file=str(topology.sshd.wrong_known_hosts_file))
    try:
        image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
        view = helpers.wait_states(topology, image.id, {region: "failed"}, [region], timeout=60)
        assert "host key" in view[region]["last_error"].lower(), view[region]
        with pytest.raises(glance_exc.HTTPNotFound):
            topology.cascaded[region].client().images.get(image.id)
        record = topology.cascading.client().images.get(image.id)
        assert cascaded_url(region, image.id) not in _cascaded_locations(record)
    finally:
        agent.stop()
    # The operator fixes known_hosts (here: the region's main agent is back) and asks again.
    sync.ensure()
    output = topology.run_manage("resync", image.id)
    assert f"resync of image {image.id} journaled" in output
    helpers.wait_states(topology, image.id, {region: "synced"}, [region], timeout=60)


def test_bytes_changed_on_disk_are_detected_and_never_registered(
    topology: Topology, sync: SyncServices
) -> None:
    region = "RegionA"
    sync.stop_agent(region)
    client = topology.cascading.client()
    image = helpers.upload_random(client, 2 * helpers.MIB)
    helpers.wait_states(topology, image.id, {region: "pending"}, [region])
    path = topology.cascading.data_dir / image.id
    with open(path, "r+b") as handle:  # same size, one byte flipped
        handle.seek(12345)
        byte = handle.read(1)
        handle.seek(12345)
        handle.write(bytes([byte[0] ^ 0xFF]))
    sync.ensure()
    view = helpers.wait_states(topology, image.id, {region: "failed"}, [region], timeout=120)
    assert "checksum" in view[region]["last_error"] or "os_hash_value" in view[region]["last_error"]
    assert view[region]["attempts"] >= 2, "a mismatch is retryable"
    record = client.images.get(image.id)
    assert cascaded_url(region, image.id) not in _cascaded_locations(record)
    try:
        copy = topology.cascaded[region].client().images.get(image.id)
    except glance_exc.HTTPNotFound:
        copy = None
    assert copy is None or copy["status"] != "active", "a corrupt copy went active"


def test_update_reaches_every_region(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = helpers.upload_random(client, helpers.MIB)
    helpers.wait_states(topology, image.id, "synced")
    client.images.update(image.id, os_distro="debian", min_ram=256)

    def updated() -> bool:
        copies = [s.client().images.get(image.id) for s in topology.cascaded.values()]
        return all(c.get("os_distro") == "debian" and c["min_ram"] == 256 for c in copies)

    helpers.wait_until(updated, 60, "the update in every region")
    client.images.deactivate(image.id)
    helpers.wait_until(
        lambda: all(s.client().images.get(image.id)["status"] == "deactivated" for s in topology.cascaded.values()),
        60, "deactivation in every region",
    )
    client.images.reactivate(image.id)
    helpers.wait_until(
        lambda: all(s.client().images.get(image.id)["status"] == "active" for s in topology.cascaded.values()),
        60, "reactivation in every region",
    )


def test_delete_reaches_every_region(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = helpers.upload_random(client, helpers.MIB)
    helpers.wait_states(topology, image.id, "synced")
    client.images.delete(image.id)
    helpers.wait_states(topology, image.id, "deleted")
    for region, server in topology.cascaded.items():
        with pytest.raises(glance_exc.HTTPNotFound):
            server.client().images.get(image.id)
        assert not (topology.work_dir(region) / f"{image.id}.part").exists()


def test_source_outside_the_store_directory_is_refused(topology: Topology, sync: SyncServices, tmp_path) -> None:
    """A coordinator whose store_dir does not hold the image's file refuses to send it anywhere."""
    from tests.harness.glance import venv_bin
    from tests.harness.procs import LOOPBACK, ServiceProcess, free_port, tcp_open

    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    store = topology.store_map()
    store["cascading"]["store"]["store_dir"] = str(tmp_path / "elsewhere")
    store_yaml = tmp_path / "elsewhere.yaml"
    store_yaml.write_text(yaml.safe_dump(store))
    client_port, agent_port = free_port(), free_port()
    conf = topology.write_service_conf(
        tmp_path / "elsewhere.conf",
        DEFAULT={"glance_store_config": store_yaml, "sync_server_port": client_port},
        coordinator={"agent_port": agent_port},
        database={"connection": f"sqlite:///{tmp_path / 'journal.sqlite'}"},
    )
    topology.run_manage("db_sync", conf=conf)
    other = ServiceProcess("coordinator-elsewhere", [venv_bin("glance-sync-coordinator"), "--config-file", str(conf)],
                           tmp_path / "coordinator.log")
    other.start()
    try:
        other.wait_ready(lambda: tcp_open(LOOPBACK, client_port), 30)
        send_event(client_port, "uploaded", image.id)

        def refused() -> dict | None:
            result = helpers.run_status(topology, "--port", str(client_port), "image", image.id, "--json")
            view = json.loads(result.stdout).get("regions", {}) if result.returncode == 0 else {}
            states = {r: v.get("state") for r, v in view.items()}
            return view if states and all(s == "failed" for s in states.values()) else None

        view = helpers.wait_until(refused, 60, "the source refused in every region")
        for region in topology.region_names:
            assert "outside the store directory" in view[region]["last_error"], view[region]
    finally:
        other.stop()


def test_images_synced_together_keep_every_regional_location(topology: Topology, sync: SyncServices) -> None:
    """Regions finishing at the same moment must not overwrite each other's location."""
    client = topology.cascading.client()
    images = [helpers.upload_random(client, 256 * 1024) for _ in range(4)]
    for image in images:
        helpers.wait_states(topology, image.id, "synced")
    for image in images:
        record = client.images.get(image.id)
        assert _cascaded_locations(record) == {
            cascaded_url(region, image.id): region for region in topology.region_names
        }, image.id


def test_an_upload_whose_event_was_lost_is_synced_by_the_reconciler(topology: Topology, sync: SyncServices) -> None:
    from tests.harness.glance import signed_client

    # Signed with the coordinator's loop-guard secret, these calls make no event.
    silent = signed_client(topology.cascading.url, topology.internal_secret_file)
    image = helpers.upload_random(silent, helpers.MIB)
    helpers.wait_states(topology, image.id, "synced", timeout=90)
    for server in topology.cascaded.values():
        assert server.client().images.get(image.id)["checksum"] == image.md5
