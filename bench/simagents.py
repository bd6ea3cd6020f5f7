"""Simulated agents for the control-plane bench: the real session protocol, no bytes moved.

One process runs every agent on one zmq poller.  Each agent says ``hello``, gives
its whole capacity as credits after ``welcome`` (when ``work`` is set; idle agents
give none), answers each ``task`` with ``ack`` and at once ``done`` carrying the
size and hashes of the task's image record (what a real worker would have
verified), and gives the slot back with ``ready``.  Every agent sends a heartbeat
each interval, as glance-sync-agent does.  ``run`` serves until the pipe says
``stop`` and answers with its counters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from glancesync import protocol

DONE_FIELDS = ("size", "checksum", "os_hash_algo", "os_hash_value")


@dataclass
class SimAgent:
    region: str
    sock: zmq.Socket
    welcomed: bool = False
    owed: int = 0
    last_sent: float = 0.0
    unacked: set[tuple[str, int]] = field(default_factory=set)


def _send(agent: SimAgent, msg_type: str, body: dict[str, Any], now: float) -> None:
    agent.sock.send(protocol.encode(msg_type, body), zmq.NOBLOCK)
    agent.last_sent = now


def _on_message(agent: SimAgent, msg: protocol.Message, capacity: int, work: bool, counts: dict[str, int],
                now: float) -> None:
    if msg.type == "welcome":
        agent.welcomed = True
        if work:
            agent.owed = capacity
    elif msg.type == "task":
        ref = {"task_id": msg.body["task_id"], "attempt": msg.body["attempt"]}
        image = msg.body["image"]
        _send(agent, "ack", ref, now)
        _send(agent, "done", {**ref, **{k: image.get(k) for k in DONE_FIELDS}}, now)
        agent.unacked.add((ref["task_id"], ref["attempt"]))
        agent.owed += 1
        counts["tasks"] += 1
    elif msg.type == "result_ack":
        agent.unacked.discard((msg.body["task_id"], msg.body["attempt"]))
        counts["result_acks"] += 1
    elif msg.type in ("disconnect", "error"):
        counts["refused"] += 1


def run(agent_port: int, regions: list[str], capacity: int, heartbeat: float, work: bool, pipe: Any) -> None:
    ctx = zmq.Context()
    poller = zmq.Poller()
    agents: dict[zmq.Socket, SimAgent] = {}
    now = time.monotonic()
    for index, region in enumerate(regions):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(f"tcp://127.0.0.1:{agent_port}")
        agent = agents[sock] = SimAgent(region, sock)
        _send(agent, "hello", {"region": region, "agent_id": f"sim-{index}", "capacity": capacity,
                               "version": "bench", "running": []}, now)
        poller.register(sock, zmq.POLLIN)
    counts = {"tasks": 0, "result_acks": 0, "refused": 0}
    while not pipe.poll(0):
        ready = dict(poller.poll(50))
        now = time.monotonic()
        for sock in ready:
            agent = agents[sock]
            while sock.poll(0):
                _on_message(agent, protocol.decode(sock.recv()), capacity, work, counts, now)
        for agent in agents.values():
            if agent.welcomed and agent.owed:
                _send(agent, "ready", {"credits": min(agent.owed, capacity)}, now)
                agent.owed = 0
            elif now - agent.last_sent >= heartbeat:
                _send(agent, "heartbeat", {}, now)
    counts["welcomed"] = sum(a.welcomed for a in agents.values())
    pipe.send(counts)
    ctx.destroy(linger=0)
