"""Our own services on the shared topology: one coordinator and one agent per region.

Tests that kill or stop a service leave it to ``ensure()`` (run before every test by
the ``sync`` fixture) to bring the standard set back, so tests stay independent
while sharing one topology and one journal.
"""

from __future__ import annotations

import signal
from pathlib import Path

import zmq

from glancesync import protocol
from tests.functional import helpers
from tests.harness.procs import ServiceProcess
from tests.harness.topology import Topology


class SyncServices:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.coordinator: ServiceProcess | None = None
        self.agents: dict[str, ServiceProcess] = {}

    def agent_id(self, region: str) -> str:
        return f"{region.lower()}-main"

    def ensure(self) -> None:
        """Coordinator running and every region's main agent online."""
        if self.coordinator is None or not self.coordinator.running:
            self.start_coordinator()
        for region in self.topo.region_names:
            agent = self.agents.get(region)
            if agent is None or not agent.running:
                self.agents[region] = self.topo.start_agent(region, self.agent_id(region))
        helpers.wait_until(self.all_online, 60, "every region's main agent online")

    def all_online(self) -> bool:
        online = helpers.online_agents(self.topo)
        return all(self.agent_id(r) in online.get(r, set()) for r in self.topo.region_names)

    def start_coordinator(self) -> ServiceProcess:
        if self.coordinator is not None:
            self.coordinator.stop()
            if self.coordinator in self.topo.services:
                self.topo.services.remove(self.coordinator)
        self.coordinator = self.topo.start_coordinator()
        return self.coordinator

    def kill_coordinator(self) -> None:
        assert self.coordinator is not None
        self.coordinator.kill(signal.SIGKILL)
        self.coordinator.wait(10)

    def stop_agent(self, region: str) -> None:
        agent = self.agents.pop(region, None)
        if agent is not None:
            agent.stop()

    def coordinator_log(self) -> str:
        assert self.coordinator is not None
        return Path(self.coordinator.log_path).read_text(errors="replace")


def send_event(port: int, kind: str, image_id: str, image: dict | None = None, timeout: float = 5.0) -> str:
    """Emit one event as glance_proxy would; the event id once the coordinator acked it."""
    event_id = protocol.new_id()
    body = {"event_id": event_id, "kind": kind, "image_id": image_id, "image": image}
    (reply,) = send_raw_to(port, [protocol.encode("event", body)], timeout)
    assert reply is not None, f"no answer from the coordinator on port {port}"
    assert reply.type == "event_ack" and reply.body["event_id"] == event_id, reply
    return event_id


def send_raw_to(port: int, frames: list[bytes], timeout: float = 3.0) -> list:
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    replies = []
    try:
        for frame in frames:
            sock.send(frame)
            replies.append(protocol.decode(sock.recv()) if sock.poll(int(timeout * 1000)) else None)
    finally:
        sock.close()
    return replies
