"""Regional deletes happen only on glance's word, on real services.

- A forged ``deleted`` event, sent straight to the coordinator's event socket for a
  live, synced image, deletes nothing anywhere; the coordinator log names the refusal.
- A reconciler facing an emptied cascading listing (the coordinator pointed at a
  glance that has none of the images: a wrong endpoint, or a database restored from
  an old backup) deletes nothing and ``glance-sync-status`` reports the hold; once
  the endpoint is right again and the operator runs ``glance-sync-manage reconcile
  --confirm-deletes``, the image that was really deleted is removed from the regions.
- Cascading credentials glance does not treat as admin stop the coordinator at start
  with one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from glanceclient import exc as glance_exc

from glancesync import protocol
from glancesync.protocol import INTERNAL_REQUEST_HEADER
from tests.functional import helpers
from tests.functional.services import SyncServices, send_raw_to
from tests.harness.glance import IDENTITY_HEADERS, GlanceServer, admin_client, venv_bin
from tests.harness.procs import LOOPBACK, ServiceProcess, free_port, tcp_open
from tests.harness.topology import Topology


def test_a_forged_delete_event_deletes_nothing_in_any_region(topology: Topology, sync: SyncServices) -> None:
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    helpers.wait_states(topology, image.id, "synced")
    event_id = protocol.new_id()
    forged = {"event_id": event_id, "kind": "deleted", "image_id": image.id, "image": None,
              "context": {"user_id": "mallory", "project_id": "not-the-owner", "roles": ["admin"]}}
    (reply,) = send_raw_to(topology.client_port, [protocol.encode("event", forged)], timeout=10)
    assert reply is not None and reply.type == "event_ack", reply

    def refusal() -> str | None:
        return next((line for line in sync.coordinator_log().splitlines()
                     if event_id in line and "refused" in line), None)

    line = helpers.wait_until(refusal, 60, "the coordinator's refusal of the forged delete")
    assert "WARNING" in line and "glance still has the image" in line
    assert "mallory" in line and "not-the-owner" in line and "sender " in line
    view = helpers.image_regions(topology, image.id)
    assert {r: v["state"] for r, v in view.items()} == {r: "synced" for r in topology.region_names}
    for region, server in topology.cascaded.items():
        assert server.client().images.get(image.id)["status"] == "active", region


class OwnCoordinator:
    """A coordinator with its own journal, ports and agents, beside the shared one."""

    def __init__(self, topo: Topology, base: Path) -> None:
        self.topo, self.base = topo, base
        self.client_port, self.agent_port = free_port(), free_port()
        self.process: ServiceProcess | None = None
        self.agents: list[ServiceProcess] = []

    def conf(self, name: str, cascading_url: str) -> Path:
        return self.topo.write_service_conf(
            self.base / f"{name}.conf",
            DEFAULT={"sync_server_port": self.client_port, "cascading_endpoint_url": cascading_url},
            # Roomier liveness than the shared set's: this test runs six extra processes.
            # It also syncs the images earlier tests left in the cascading glance, so their
            # number varies: a limit of 0.1 % holds any delete of the reconciler here.
            coordinator={"agent_port": self.agent_port, "reconcile_interval": 2, "heartbeat_interval": 2,
                         "lease_timeout": 30, "reconcile_max_delete_percent": 0.1},
            agent={"coordinator_port": self.agent_port, "heartbeat_interval": 2},
            database={"connection": f"sqlite:///{self.base / 'journal.sqlite'}"},
        )

    def start(self, conf: Path) -> None:
        self.stop()
        self.topo.run_manage("db_sync", conf=conf)
        argv = [venv_bin("glance-sync-coordinator"), "--config-file", str(conf)]
        self.process = ServiceProcess("coordinator-own", argv, self.base / "coordinator.log")
        self.process.start()
        self.process.wait_ready(lambda: tcp_open(LOOPBACK, self.client_port), 60)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def status(self, *args: str) -> dict:
        return helpers.status(self.topo, *args, conf=self.base / "own.conf")

    def states(self, image_id: str) -> dict[str, str]:
        return {r: v.get("state") for r, v in self.status("image", image_id).get("regions", {}).items()}

    def held(self) -> int:
        return self.status()["deletions_held"]["images"]


def test_an_emptied_listing_holds_deletions_until_the_operator_confirms(
        topology: Topology, sync: SyncServices, tmp_path: Path) -> None:
    # The shared coordinator would sync and delete these images too: it waits for the next test.
    assert sync.coordinator is not None
    sync.coordinator.stop()
    own = OwnCoordinator(topology, tmp_path)
    empty = GlanceServer("empty", tmp_path / "empty-glance")
    conf = own.conf("own", topology.cascading.url)
    try:
        own.start(conf)
        for region in topology.region_names:
            own.agents.append(topology.start_agent(region, f"{region.lower()}-own", conf=conf))
        # Uploaded with the loop-guard header: no event, the own coordinator's reconciler finds them.
        silent = admin_client(topology.cascading.url, **{INTERNAL_REQUEST_HEADER: "1"})
        images = [helpers.upload_random(silent, 256 * 1024) for _ in range(3)]
        synced = {r: "synced" for r in topology.region_names}
        for image in images:
            helpers.wait_until(lambda i=image: own.states(i.id) == synced, 180, f"{image.id} synced")

        empty.start()
        own.start(own.conf("wrong-endpoint", empty.url))  # a glance without any of the images
        # Every image the own journal tracks looks deleted: ours and any earlier test left behind.
        helpers.wait_until(lambda: own.held() >= 3, 60, "deletions held")
        listing = topology.run_manage("reconcile", conf=conf)
        assert all(image.id in listing for image in images), listing
        text = helpers.run_status(topology, conf=tmp_path / "own.conf")
        assert f"deletions held: {own.held()} image(s)" in text.stdout, text.stdout
        for image in images:
            assert own.states(image.id) == synced
            for region, server in topology.cascaded.items():
                assert server.client().images.get(image.id)["status"] == "active", region

        gone, kept = images[0], images[1:]
        silent.images.delete(gone.id)  # really deleted, its event lost
        own.start(conf)  # the endpoint fixed
        helpers.wait_until(lambda: own.held() == 1, 60, "only the really deleted image held")
        listing = topology.run_manage("reconcile", conf=conf)
        assert gone.id in listing and "waiting for confirmation" in listing
        assert "confirmed 1 held deletion(s)" in topology.run_manage("reconcile", "--confirm-deletes", conf=conf)
        deleted = {r: "deleted" for r in topology.region_names}
        helpers.wait_until(lambda: own.states(gone.id) == deleted, 120, f"{gone.id} deleted in every region")
        for server in topology.cascaded.values():
            with pytest.raises(glance_exc.HTTPNotFound):
                server.client().images.get(gone.id)
            for image in kept:
                assert server.client().images.get(image.id)["status"] == "active"
        assert own.held() == 0
    finally:
        for agent in own.agents:
            agent.stop()
        own.stop()
        empty.stop()


def test_credentials_glance_does_not_treat_as_admin_stop_the_coordinator(topology: Topology,
                                                                         tmp_path: Path) -> None:
    member = {**IDENTITY_HEADERS, "X-Roles": "member"}
    conf = topology.write_service_conf(
        tmp_path / "member.conf",
        DEFAULT={"sync_server_port": free_port()},
        coordinator={"agent_port": free_port()},
        database={"connection": f"sqlite:///{tmp_path / 'journal.sqlite'}"},
        cascading_glance={"identity_headers": ",".join(f"{k}:{v}" for k, v in member.items())},
    )
    topology.run_manage("db_sync", conf=conf)
    log = tmp_path / "coordinator.log"
    process = ServiceProcess("coordinator-member", [venv_bin("glance-sync-coordinator"), "--config-file", str(conf)],
                             log)
    process.start()
    try:
        assert process.wait(60) == 1
    finally:
        process.stop()
    text = log.read_text()
    refusals = [line for line in text.splitlines() if "cannot start" in line]
    assert len(refusals) == 1, text
    assert "not treat them as admin" in refusals[0]
    assert "Traceback" not in text
