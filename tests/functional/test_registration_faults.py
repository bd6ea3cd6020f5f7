"""Registration outages and images not settled yet, end to end (doc/states.md).

- The cascading glance-api stops while a region's copy is being registered (a
  rolling restart that lasts): the coordinator keeps the regional copy and retries
  the registration on its own backoff, well past the task's old retry horizon; once
  glance-api is back the copy ends ``synced`` with no new transfer.
- ``glance-sync-status --wait`` on an image created but not uploaded does not report
  success; after the upload it does.
"""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.harness.topology import Topology

REGION = "RegionA"


def _use_coordinator(sync: SyncServices, topology: Topology, conf: Path | None) -> None:
    """Restart the shared coordinator with ``conf`` (None: the standard one)."""
    if sync.coordinator is not None:
        sync.coordinator.stop()
        if sync.coordinator in topology.services:
            topology.services.remove(sync.coordinator)
    sync.coordinator = topology.start_coordinator(conf) if conf else topology.start_coordinator()


def test_a_copy_survives_a_cascading_outage_longer_than_the_task_retries(
        topology: Topology, sync: SyncServices, tmp_path: Path) -> None:
    # One retry 0.5 s after the first failure: the old code failed the copy within a second.
    conf = topology.write_service_conf(
        tmp_path / "short-backoff.conf", DEFAULT={"task_retry_times": 1},
        coordinator={"retry_backoff": 0.5, "max_retry_backoff": 0.5, "registration_retry_backoff": 0.2,
                     "max_registration_retry_backoff": 0.5})
    _use_coordinator(sync, topology, conf)
    try:
        sync.stop_agent(REGION)
        image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
        others = {r: "synced" for r in topology.region_names if r != REGION}
        helpers.wait_states(topology, image.id, {REGION: "pending", **others}, timeout=90)
        topology.cascading.stop()
        try:
            sync.ensure()  # RegionA's agent copies; its registration meets a stopped glance-api
            task_id = helpers.image_regions(topology, image.id)[REGION]["task_id"]
            helpers.wait_until(lambda: sync.coordinator_log().count(f"{task_id}: registration failed, copy kept")
                               >= 6, 90, "six failed registration tries")
            view = helpers.image_regions(topology, image.id)[REGION]
            assert view["state"] == "registering" and view["attempts"] == 1, view
            assert view["copy_registered"] is False
        finally:
            topology.cascading.start()
        done = helpers.wait_states(topology, image.id, {REGION: "synced"}, [REGION], timeout=90)
        assert done[REGION]["attempts"] == 1, "the copy was transferred again"
        assert done[REGION]["copy_registered"] and done[REGION]["metadata_applied"]
    finally:
        _use_coordinator(sync, topology, None)


def test_wait_does_not_report_success_for_an_image_created_but_not_uploaded(
        topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = client.images.create(name="not-uploaded-yet", disk_format="raw", container_format="bare")
    helpers.wait_until(lambda: helpers.status(topology, "image", image["id"]).get("planned"), 60,
                       "the created event planned")
    early = helpers.run_status(topology, "--timeout", "3", "--wait", image["id"])
    assert early.returncode != 0, early.stdout + early.stderr
    view = helpers.status(topology, "image", image["id"])
    assert view["settled"] is False, json.dumps(view)
    client.images.upload(image["id"], io.BytesIO(os.urandom(helpers.MIB)), image_size=helpers.MIB)
    done = helpers.run_status(topology, "--timeout", "120", "--wait", image["id"], timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_real_glance_takes_several_locations_in_one_patch(topology: Topology, sync: SyncServices,
                                                            caplog) -> None:
    """The coordinator adds the locations of regions that finished together in one PATCH."""
    import logging

    from coordinator import glancejobs
    from coordinator.registrar import Registrar, cascading_endpoint
    from glancesync import config, glance, protocol, storemap

    client = topology.cascading.client()
    image = helpers.upload_random(client, 64 * 1024)
    helpers.wait_states(topology, image.id, "synced")
    urls = {protocol.cascaded_url(region, image.id): region for region in topology.region_names}
    glance.call(lambda: client.images.delete_locations(image.id, set(urls)), "cascading", None)
    assert not set(urls) & {loc["url"] for loc in client.images.get(image.id)["locations"]}
    conf = config.load(["--config-file", str(topology.service_conf)], "test-registrar", setup_logging=False)
    stores = storemap.load(conf.glance_store_config, storemap.Role.COORDINATOR)
    endpoint = cascading_endpoint(conf, stores)
    registrar = Registrar(lambda: glance.make_client(endpoint), 1, "cascading",
                          regional_client_factory=lambda region: glance.make_client(stores.region(region).glance))
    try:
        with caplog.at_level(logging.INFO, logger="coordinator.glancejobs"):
            glancejobs.add_locations(registrar._clients(), image.id, list(urls.items()))
    finally:
        registrar.shutdown()
    assert "registered locations" in caplog.text and "one at a time" not in caplog.text
    after = {loc["url"]: (loc.get("metadata") or {}).get("region") for loc in client.images.get(image.id)["locations"]}
    assert {url: after.get(url) for url in urls} == urls


def _glance_workers(coordinator_pid: int) -> set[int]:
    """The coordinator's live glance worker processes (spawned children; not the resource tracker)."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat, cmdline = (proc / "stat").read_text(), (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == coordinator_pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.add(int(proc.name))
    return found


def test_killed_glance_workers_are_replaced_and_copies_still_register(topology: Topology,
                                                                       sync: SyncServices) -> None:
    sync.ensure()
    coordinator = sync.coordinator.proc.pid
    killed = _glance_workers(coordinator)
    assert killed, "the coordinator's glance calls run in no worker process"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    image = helpers.upload_random(topology.cascading.client(), 64 * 1024)
    done = helpers.wait_states(topology, image.id, "synced")
    assert all(view["copy_registered"] for view in done.values()), done
    assert sync.coordinator.proc.poll() is None, "the coordinator died with its workers"
    now = _glance_workers(coordinator)
    assert now and not now & killed
    assert any(f"glance worker process {pid} ended (exit code -9)" in sync.coordinator_log() for pid in killed)
