"""Registration on glance's word, not the agent's: a forged ``done`` registers nothing.

Real topology and coordinator; RegionA's agent is replaced by a raw zmq DEALER that
speaks the real protocol, takes RegionA's task and reports ``done`` with the cascading
image's own (correct-looking) size and hashes, while RegionA's glance actually holds
other bytes under that image id.  The coordinator must read RegionA's image itself,
refuse the location and say why in the status.

And a region whose glance hashes with sha256 (the cascading one with sha512) still
gets its copy verified and registered: md5 and size from glance, the multihashes
linked by the agent's ``region_hash_value`` (doc/verification.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import time

import zmq

from glancesync import protocol
from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.harness.topology import Topology

REGION = "RegionA"


class ForgingAgent:
    """An allow-listed peer that claims to be an agent of ``region`` and lies about its work."""

    def __init__(self, port: int, region: str, agent_id: str) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.send("hello", {"region": region, "agent_id": agent_id, "capacity": 1, "version": "forged"})
        self.until("welcome")

    def send(self, msg_type: str, body: dict) -> None:
        self.sock.send(protocol.encode(msg_type, body))

    def until(self, msg_type: str, timeout: float = 60.0, image_id: str | None = None) -> protocol.Message:
        """The next ``msg_type`` (for ``image_id``); heartbeats keep the session alive meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(300):
                msg = protocol.decode(self.sock.recv())
                if msg.type == msg_type and (image_id is None or msg.body.get("image_id") == image_id):
                    return msg
            self.send("heartbeat", {})
        raise AssertionError(f"no {msg_type} from the coordinator within {timeout:.0f}s")

    def close(self) -> None:
        try:
            self.send("bye", {"reason": "test over"})
        finally:
            self.sock.close()
            self.context.term()


def plant_other_bytes(topology: Topology, image_id: str, size: int) -> dict:
    """Create ``image_id`` directly in RegionA's glance, holding other bytes of the same size."""
    client = topology.cascaded[REGION].client()
    client.images.create(id=image_id, name="not-the-image", disk_format="raw", container_format="bare")
    client.images.upload(image_id, io.BytesIO(os.urandom(size)), image_size=size)
    return dict(client.images.get(image_id))


def settled(topology: Topology, image_id: str, region: str = REGION) -> dict | None:
    """The region's view once its task is synced or failed (either way the coordinator decided)."""
    view = helpers.image_regions(topology, image_id).get(region, {})
    return view if view.get("state") in ("synced", "failed") else None


def test_a_forged_done_for_a_region_holding_other_bytes_registers_nothing(
        topology: Topology, sync: SyncServices) -> None:
    sync.stop_agent(REGION)
    image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
    helpers.wait_states(topology, image.id, {REGION: "pending", "RegionB": "synced"})
    planted = plant_other_bytes(topology, image.id, image.size)
    assert planted["status"] == "active" and planted["size"] == image.size and planted["checksum"] != image.md5

    forger = ForgingAgent(topology.agent_port, REGION, "regiona-forger")
    try:
        forger.send("ready", {"credits": 1})
        task = forger.until("task", image_id=image.id).body
        ref = {"task_id": task["task_id"], "attempt": task["attempt"]}
        forger.send("ack", ref)
        cascading = topology.cascading.client().images.get(image.id)
        forger.send("done", {**ref, "size": cascading["size"], "checksum": cascading["checksum"],
                             "os_hash_algo": cascading["os_hash_algo"],
                             "os_hash_value": cascading["os_hash_value"]})
        view = helpers.wait_until(lambda: settled(topology, image.id), 60, "RegionA's task to settle")
    finally:
        forger.close()

    assert view["state"] == "failed", view
    reason = view["last_error"]
    assert "checksum mismatch" in reason and f"{REGION} image" in reason, reason
    urls = [loc["url"] for loc in topology.cascading.client().images.get(image.id)["locations"]]
    assert protocol.cascaded_url(REGION, image.id) not in urls, urls
    assert protocol.cascaded_url("RegionB", image.id) in urls, urls


@contextlib.contextmanager
def hashing_with(server, algo: str):
    """Run ``server`` (a regional glance of the session) with ``hashing_algorithm = algo`` for a while."""
    plain = server.conf_sections

    def sections() -> dict:
        conf = plain()
        conf["DEFAULT"]["hashing_algorithm"] = algo
        return conf

    server.conf_sections = sections
    try:
        server.restart()
        yield server
    finally:
        server.conf_sections = plain
        server.restart()


def test_a_region_hashing_with_another_algorithm_is_verified_and_registered(
        topology: Topology, sync: SyncServices) -> None:
    region = "RegionB"
    with hashing_with(topology.cascaded[region], "sha256"):
        image = helpers.upload_random(topology.cascading.client(), helpers.MIB)
        view = helpers.wait_until(lambda: settled(topology, image.id, region), 120, f"{region}'s task to settle")
        assert view["state"] == "synced", view
        regional = topology.cascaded[region].client().images.get(image.id)
    assert regional["os_hash_algo"] == "sha256" and regional["checksum"] == image.md5
    urls = [loc["url"] for loc in topology.cascading.client().images.get(image.id)["locations"]]
    assert protocol.cascaded_url(region, image.id) in urls, urls
    # The real glance-api answered the listing by id (``id=in:``): the copy was read that way.
    assert f"region {region}: 1 of 1 regional image(s) read with one listing" in sync.coordinator_log()
