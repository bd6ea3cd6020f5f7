"""Operator commands and targeting on the real topology (doc/operator-commands.md).

- ``glance-sync-manage cancel`` stops a copy mid-fetch: the agent's worker is killed,
  its ``.part`` removed, no location registered, and the region stays ``cancelled``
  through later events; a delete of the cascading image does the same to a running copy.
- ``glance-sync-manage resync --failed --region R`` brings every failed copy of R back.
- ``sync_strategy = nova`` (ON_DEMAND) moves nothing until ``glance-sync-manage sync``.
- a ``sync_user_rules`` rule sends a project's images to its regions only.
- a mis-cased region in ``glance_sync_regions`` is a reason in status and in the
  coordinator's log, and ``glance-sync-status --wait`` does not exit 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from glanceclient import exc as glance_exc

from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.harness.glance import admin_client, venv_bin
from tests.harness.procs import child_pids, cmdline
from tests.harness.topology import Topology

OTHER_PROJECT = "7c0ffee0d15e4c3aa0c0ffee0d15e4c3"


def manage(topo: Topology, *args: str, conf: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("glance-sync-manage"), "--config-file", str(conf or topo.service_conf), *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


@contextlib.contextmanager
def coordinator_with(topo: Topology, sync: SyncServices, path: Path, **sections: dict) -> Iterator[Path]:
    """The shared coordinator (same journal and ports) restarted with other options, restored after."""
    conf = topo.write_service_conf(path, **sections)
    assert sync.coordinator is not None
    sync.coordinator.stop()
    topo.services.remove(sync.coordinator)
    sync.coordinator = topo.start_coordinator(conf=conf)
    try:
        helpers.wait_until(sync.all_online, 60, "every agent back with the reconfigured coordinator")
        yield conf
    finally:
        sync.start_coordinator()
        sync.ensure()


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in child_pids(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


# The region whose copy gets frozen fetches at this cap, so the 192 MiB copy lasts several
# seconds: unpaced on loopback it can end between seeing its first bytes and the SIGSTOP
# when the machine is busy (the cap is one budget for the agent, doc/performance.md).
SLOW_FETCH_MBIT = 200


@contextlib.contextmanager
def slow_agent(topo: Topology, sync: SyncServices, region: str, path: Path) -> Iterator[None]:
    """The region's main agent restarted with its fetches capped; the standard one is back after."""
    conf = topo.write_service_conf(path, agent={"max_bandwidth": SLOW_FETCH_MBIT})
    sync.stop_agent(region)
    sync.agents[region] = topo.start_agent(region, sync.agent_id(region), conf=conf)
    try:
        helpers.wait_until(lambda: sync.agent_id(region) in helpers.online_agents(topo).get(region, set()), 60,
                           f"the capped agent of {region} online")
        yield
    finally:
        sync.stop_agent(region)  # the next test's ensure() starts the standard agent


def freeze_fetch(topo: Topology, sync: SyncServices, region: str, image_id: str) -> list[int]:
    """SIGSTOP the region's worker (and its sftp/ssh) as soon as its ``.part`` has bytes; the pids."""
    part = topo.work_dir(region) / f"{image_id}.part"
    agent = sync.agents[region]
    assert agent.pid is not None
    helpers.wait_until(lambda: part.exists() and part.stat().st_size > 0, 120, f"{part} to grow", interval=0.01)
    workers = [p for p in child_pids(agent.pid) if "spawn_main" in cmdline(p)]
    stopped = [p for w in workers for p in [w, *descendants(w)]]
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    return stopped


def thaw(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def locations(topo: Topology, image_id: str) -> list[str]:
    """The image's regional (cascaded://) locations."""
    urls = [loc["url"] for loc in topo.cascading.client().images.get(image_id).get("locations", [])]
    return [url for url in urls if url.startswith("cascaded://")]


def test_cancel_stops_the_copy_removes_its_part_and_stays_cancelled(topology: Topology, sync: SyncServices,
                                                                      tmp_path: Path) -> None:
    sync.stop_agent("RegionA")  # only RegionB copies: the one to cancel
    with slow_agent(topology, sync, "RegionB", tmp_path / "slow.conf"):
        cancel_a_running_copy(topology, sync)


def cancel_a_running_copy(topology: Topology, sync: SyncServices) -> None:
    image = helpers.upload_random(topology.cascading.client(), 192 * helpers.MIB)
    stopped = freeze_fetch(topology, sync, "RegionB", image.id)
    try:
        assert helpers.image_regions(topology, image.id)["RegionB"]["state"] in ("assigned", "transferring")
        result = manage(topology, "cancel", image.id, "--region", "RegionB", "--json")
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)
        assert [(c["region"], c["agent_told"]) for c in reply["cancelled"]] == [("RegionB", True)]
        part = topology.work_dir("RegionB") / f"{image.id}.part"
        helpers.wait_until(lambda: not part.exists(), 60, f"{part} removed")
    finally:
        thaw(stopped)
    view = helpers.wait_states(topology, image.id, "cancelled", regions=["RegionB"])
    assert "cancelled by an operator" in view["RegionB"]["last_error"]
    # An update of the image is planned, and still does not bring the copy back.
    topology.cascading.client().images.update(image.id, note="changed")
    helpers.wait_until(lambda: helpers.status(topology, "image", image.id)["planned"], 60, "the update planned")
    sync.ensure()  # RegionA's agent back: it copies, RegionB stays cancelled
    helpers.wait_states(topology, image.id, {"RegionA": "synced", "RegionB": "cancelled"})
    assert not (topology.work_dir("RegionB") / f"{image.id}.part").exists()
    assert locations(topology, image.id) == [f"cascaded://RegionA/{image.id}"]
    wait = helpers.run_status(topology, "--wait", image.id, "--timeout", "30")
    assert wait.returncode == 1 and "RegionB: cancelled" in wait.stderr
    # An operator's sync starts it again.
    assert manage(topology, "sync", image.id, "--regions", "RegionB").returncode == 0
    helpers.wait_states(topology, image.id, "synced", timeout=180)


def test_a_delete_cancels_the_running_copy(topology: Topology, sync: SyncServices, tmp_path: Path) -> None:
    sync.stop_agent("RegionA")
    with slow_agent(topology, sync, "RegionB", tmp_path / "slow.conf"):
        delete_a_running_copy(topology, sync)


def delete_a_running_copy(topology: Topology, sync: SyncServices) -> None:
    client = topology.cascading.client()
    image = helpers.upload_random(client, 192 * helpers.MIB)
    stopped = freeze_fetch(topology, sync, "RegionB", image.id)
    try:
        client.images.delete(image.id)
        part = topology.work_dir("RegionB") / f"{image.id}.part"
        helpers.wait_until(lambda: not part.exists(), 60, f"{part} removed after the delete")
    finally:
        thaw(stopped)
    log = helpers.wait_until(lambda: image.id in sync.coordinator_log() and "was deleted in the cascading glance"
                             in sync.coordinator_log(), 60, "the cancel in the coordinator's log")
    assert log
    helpers.wait_states(topology, image.id, "deleted", regions=["RegionB"])


def test_resync_failed_brings_a_regions_failed_copies_back(topology: Topology, sync: SyncServices,
                                                           tmp_path: Path) -> None:
    region_a = topology.cascaded["RegionA"]
    with coordinator_with(topology, sync, tmp_path / "no-retry.conf", DEFAULT={"task_retry_times": 0}):
        region_a.stop()
        try:
            images = [helpers.upload_random(topology.cascading.client(), helpers.MIB) for _ in range(2)]
            for image in images:
                helpers.wait_states(topology, image.id, {"RegionA": "failed", "RegionB": "synced"})
        finally:
            region_a.start()
        result = manage(topology, "resync", "--failed", "--region", "RegionA", "--json")
        assert result.returncode == 0, result.stderr
        asked = {item["image_id"]: item["regions"] for item in json.loads(result.stdout)["images"]}
        assert all(asked.get(image.id) == ["RegionA"] for image in images), asked
        for image in images:
            helpers.wait_states(topology, image.id, "synced")
            assert region_a.client().images.get(image.id)["checksum"] == image.md5


def test_on_demand_moves_nothing_until_sync(topology: Topology, sync: SyncServices, tmp_path: Path) -> None:
    with coordinator_with(topology, sync, tmp_path / "nova.conf", DEFAULT={"sync_strategy": "nova"}):
        summary = helpers.status(topology)
        assert summary["coordinator"]["sync_strategy"].startswith("ON_DEMAND")
        image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
        helpers.wait_until(lambda: helpers.status(topology, "image", image.id)["settled"], 60, "the upload planned")
        assert helpers.image_regions(topology, image.id) == {}
        for server in topology.cascaded.values():
            try:
                server.client().images.get(image.id)
                raise AssertionError(f"{image.id} reached {server.name} before anyone asked")
            except glance_exc.HTTPNotFound:
                pass
        result = manage(topology, "sync", image.id, "--regions", "RegionB")
        assert result.returncode == 0, result.stderr
        view = helpers.wait_states(topology, image.id, "synced", regions=["RegionB"])
        assert list(view) == ["RegionB"]
        assert locations(topology, image.id) == [f"cascaded://RegionB/{image.id}"]


def test_a_user_rule_sends_a_projects_images_to_its_regions_only(topology: Topology, sync: SyncServices,
                                                                 tmp_path: Path) -> None:
    with coordinator_with(topology, sync, tmp_path / "rules.conf",
                          DEFAULT={"sync_strategy": "User", "sync_user_rules": f"{OTHER_PROJECT}:RegionB"}):
        theirs = helpers.upload_random(admin_client(topology.cascading.url, **{"X-Project-Id": OTHER_PROJECT}),
                                       helpers.MIB)
        mine = helpers.upload_random(topology.cascading.client(), helpers.MIB)
        view = helpers.wait_states(topology, theirs.id, "synced", regions=["RegionB"])
        assert list(view) == ["RegionB"]
        helpers.wait_until(lambda: helpers.status(topology, "image", mine.id)["settled"], 60, "the other image")
        assert helpers.image_regions(topology, mine.id) == {}
        assert "1 project rule(s)" in helpers.status(topology)["coordinator"]["sync_strategy"]


def test_a_mis_cased_region_is_a_reason_never_a_success(topology: Topology, sync: SyncServices,
                                                        tmp_path: Path) -> None:
    with coordinator_with(topology, sync, tmp_path / "user.conf", DEFAULT={"sync_strategy": "USER"}):
        image = helpers.upload_random(topology.cascading.client(), helpers.MIB,
                                      glance_sync_regions="RegionA, regionb")
        helpers.wait_states(topology, image.id, "synced", regions=["RegionA"])
        data = helpers.status(topology, "image", image.id)
        assert list(data["regions"]) == ["RegionA"]
        assert "'regionb' is not known; did you mean 'RegionB'?" in data["targeting_error"]
        wait = helpers.run_status(topology, "--wait", image.id, "--timeout", "30")
        assert wait.returncode == 1 and "did you mean 'RegionB'" in wait.stderr
        line = helpers.wait_until(lambda: next((ln for ln in sync.coordinator_log().splitlines()
                                                if image.id in ln and "did you mean" in ln), None), 30, "the log line")
        assert "WARNING" in line
