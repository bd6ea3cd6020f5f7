"""The coordinator <-> agent control plane on real processes: routing, crashes, leases, bad frames.

Runs on the shared topology (real cascading and regional glance-apis, real sshd) with
the real coordinator and agents as processes, observed only through
``glance-sync-status --json`` and the services' logs.
"""

from __future__ import annotations

import socket
import threading

import msgpack
import pytest
import yaml

from glancesync import protocol
from tests.functional import helpers
from tests.functional.services import SyncServices, send_raw_to
from tests.harness.topology import Topology


def test_both_regions_agents_show_connected(topology: Topology, sync: SyncServices) -> None:
    online = helpers.online_agents(topology)
    assert online["RegionA"] == {"regiona-main"}
    assert online["RegionB"] == {"regionb-main"}
    summary = helpers.status(topology)
    agent = summary["regions"]["RegionA"]["agents"][0]
    assert agent["capacity"] == 2 and agent["last_heartbeat"] > 0


def test_each_regions_task_reaches_only_that_regions_agent(topology: Topology, sync: SyncServices) -> None:
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    view = helpers.wait_states(topology, image.id, "synced")
    assert view["RegionA"]["agent_id"] == "regiona-main"
    assert view["RegionB"]["agent_id"] == "regionb-main"
    assert view["RegionA"]["task_id"] != view["RegionB"]["task_id"]


def test_queued_tasks_survive_coordinator_sigkill(topology: Topology, sync: SyncServices) -> None:
    for region in topology.region_names:
        sync.stop_agent(region)
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    before = helpers.wait_states(topology, image.id, "pending")
    sync.kill_coordinator()
    sync.start_coordinator()
    after = helpers.image_regions(topology, image.id)
    for region in topology.region_names:
        assert after[region]["state"] == "pending", after
        assert after[region]["task_id"] == before[region]["task_id"]
    queued = helpers.status(topology)["regions"]
    assert all(queued[r]["queued"] >= 1 for r in topology.region_names), queued
    sync.ensure()
    helpers.wait_states(topology, image.id, "synced")


class Blackhole:
    """A TCP listener that accepts and never answers: an ssh server that hangs forever."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_task_of_killed_agent_goes_to_another_agent_after_lease(
    topology: Topology, sync: SyncServices, tmp_path
) -> None:
    region = "RegionB"
    sync.stop_agent(region)
    hole = Blackhole()
    try:
        # An agent whose cascading sshd hangs: it acks the task and then holds it.
        store = topology.store_map()
        store["cascading"]["store"]["port"] = hole.port
        stuck_yaml = tmp_path / "stuck_store.yaml"
        stuck_yaml.write_text(yaml.safe_dump(store))
        stuck_conf = topology.write_service_conf(
            tmp_path / "stuck.conf", DEFAULT={"glance_store_config": stuck_yaml}
        )
        stuck = topology.start_agent(region, "regionb-doomed", conf=stuck_conf)
        helpers.wait_until(lambda: "regionb-doomed" in helpers.online_agents(topology)[region], 30,
                           "the doomed agent online")
        image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
        held = helpers.wait_states(topology, image.id, {region: "transferring"}, [region], timeout=60)
        assert held[region]["agent_id"] == "regionb-doomed"
        first_task = held[region]["task_id"]
        stuck.kill()
        stuck.wait(10)
        rescuer = topology.start_agent(region, "regionb-rescuer")
        done = helpers.wait_states(topology, image.id, {region: "synced"}, [region], timeout=90)
        assert done[region]["agent_id"] == "regionb-rescuer"
        assert done[region]["task_id"] == first_task
        assert done[region]["attempts"] >= 2
        rescuer.stop()
    finally:
        hole.close()


def _frame(envelope: dict) -> bytes:
    return msgpack.packb(envelope, use_bin_type=True)


MALFORMED = {
    "garbage": b"\x00\xffnot msgpack at all",
    "truncated": protocol.encode("status_query", {"view": "summary"})[:-4],
    "not a map": _frame([1, 2, 3]),
    "wrong version": _frame({"v": 99, "type": "status_query", "id": "x", "ts": 1.0, "body": {"view": "summary"}}),
    "unknown type": _frame({"v": 1, "type": "launch_missiles", "id": "x", "ts": 1.0, "body": {}}),
    "missing field": _frame({"v": 1, "type": "event", "id": "x", "ts": 1.0, "body": {"kind": "uploaded"}}),
    "wrong type": _frame({"v": 1, "type": "hello", "id": "x", "ts": 1.0,
                          "body": {"region": "RegionA", "agent_id": 7, "capacity": "two", "version": "1"}}),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_frame_on_client_socket_is_answered_with_error(
    topology: Topology, sync: SyncServices, name: str
) -> None:
    (reply,) = send_raw_to(topology.client_port, [MALFORMED[name]])
    assert reply is not None and reply.type == "error", f"{name}: {reply}"
    assert reply.body["reason"]
    assert helpers.status(topology)["regions"], "the coordinator stopped serving status"


def test_malformed_frames_on_agent_socket_are_dropped_and_service_goes_on(
    topology: Topology, sync: SyncServices
) -> None:
    oversized = b"\x81" + b"\x00" * (protocol.MAX_MESSAGE_BYTES + 10)
    # Nothing is awaited: the agent socket may drop these silently.
    send_raw_to(topology.agent_port, [*MALFORMED.values(), oversized], timeout=0.05)
    send_raw_to(topology.client_port, [oversized], timeout=0.05)
    assert sync.coordinator is not None and sync.coordinator.running
    helpers.wait_until(lambda: "launch_missiles" in sync.coordinator_log(), 10, "a log line naming the bad type")
    assert sync.all_online(), "agents dropped after malformed frames"
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    helpers.wait_states(topology, image.id, "synced")
