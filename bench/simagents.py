"""Simulated agents for the control-plane benches: the real session protocol, no bytes moved.

One process runs every agent on one zmq poller.  Each agent says ``hello``, gives
its whole capacity as credits after ``welcome`` (when ``work`` is set; idle agents
give none), answers each ``task`` with ``ack`` and at once ``done`` carrying the
size and hashes of the task's image record (what a real worker would have
verified), and gives the slot back with ``ready``.  Every agent sends a heartbeat
each interval, as glance-sync-agent does, and reconnects as it does
(agent/service.py): after three silent coordinator heartbeat intervals, or when told
``disconnect`` or refused, it closes its socket and says ``hello`` on a fresh one
after the same jittered exponential backoff (glancesync.liveness.Backoff).

``run`` serves until the pipe says ``stop`` and answers with its counters; ``stats``
on the pipe answers with them and goes on (the restart bench reads the time of every
``hello`` and ``welcome`` from them).  ``worker(task body)``, when given, is the agent's
own work, done between the task's arrival and its ``done`` (bench/overhead.py makes the
regional image there), on a thread of its own, so a task arriving meanwhile is taken at
once, as a real agent's would be; the loop then polls every millisecond for the work
that finished.  The wall-clock times of both are kept per ``<image id>/<region>``
(``worked``), so a bench can take the agent's own time out of a latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import zmq

from glancesync import protocol
from glancesync.liveness import Backoff, Liveness

DONE_FIELDS = ("size", "checksum", "os_hash_algo", "os_hash_value")


@dataclass
class SimAgent:
    region: str
    agent_id: str
    sock: zmq.Socket | None = None
    welcomed: bool = False
    owed: int = 0
    last_sent: float = 0.0
    unacked: set[tuple[str, int]] = field(default_factory=set)
    liveness: Liveness = field(default_factory=lambda: Liveness(interval=5.0))
    backoff: Backoff = field(default_factory=Backoff)
    reconnect_at: float | None = None


@dataclass
class Counts:
    tasks: int = 0
    result_acks: int = 0
    refused: int = 0
    # Wall-clock times of every hello sent and every welcome received, for the restart bench.
    hellos: list[float] = field(default_factory=list)
    welcomes: list[float] = field(default_factory=list)
    # "<image id>/<region>" -> wall-clock times the task arrived and its done was sent.
    worked: dict[str, tuple[float, float]] = field(default_factory=dict)

    def as_dict(self, agents: list[SimAgent]) -> dict[str, Any]:
        return {"tasks": self.tasks, "result_acks": self.result_acks, "refused": self.refused,
                "hellos": list(self.hellos), "welcomes": list(self.welcomes),
                "welcomed": sum(a.welcomed for a in agents), "worked": dict(self.worked)}


def _send(agent: SimAgent, msg_type: str, body: dict[str, Any], now: float) -> None:
    if agent.sock is not None:
        agent.sock.send(protocol.encode(msg_type, body), zmq.NOBLOCK)
        agent.last_sent = now


class Pool:
    """Every simulated agent, on one poller."""

    def __init__(self, agent_port: int, regions: list[str], capacity: int, heartbeat: float, work: bool,
                 worker: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.worker = worker
        self.threads = ThreadPoolExecutor(max_workers=len(regions) * capacity) if worker is not None else None
        # The tasks whose work runs: (agent, the done body, its worked key, the task's arrival, the work).
        self.working: list[tuple[SimAgent, dict[str, Any], str, float, Future]] = []
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self.port, self.capacity, self.heartbeat, self.work = agent_port, capacity, heartbeat, work
        self.agents = [SimAgent(region, f"sim-{index}") for index, region in enumerate(regions)]
        self.by_sock: dict[zmq.Socket, SimAgent] = {}
        self.counts = Counts()

    def connect(self, agent: SimAgent, now: float) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        agent.sock, agent.welcomed, agent.reconnect_at = sock, False, None
        agent.liveness = Liveness(interval=self.heartbeat, last_heard=now)
        self.by_sock[sock] = agent
        self.poller.register(sock, zmq.POLLIN)
        _send(agent, "hello", {"region": agent.region, "agent_id": agent.agent_id, "capacity": self.capacity,
                               "version": "bench", "running": []}, now)
        self.counts.hellos.append(time.time())

    def reconnect_later(self, agent: SimAgent, now: float) -> None:
        """What glance-sync-agent does when the coordinator went silent or said disconnect."""
        if agent.sock is not None:
            self.poller.unregister(agent.sock)
            del self.by_sock[agent.sock]
            agent.sock.close(linger=0)
        agent.sock, agent.welcomed = None, False
        agent.reconnect_at = now + agent.backoff.next_delay()

    def on_message(self, agent: SimAgent, msg: protocol.Message, now: float) -> None:
        agent.liveness.heard(now)
        if msg.type == "welcome":
            agent.welcomed = True
            agent.backoff.reset()
            agent.liveness = Liveness(interval=max(msg.body["heartbeat_interval"], 0.1), last_heard=now)
            self.counts.welcomes.append(time.time())
            if self.work:
                agent.owed = self.capacity
        elif msg.type == "task":
            arrived = time.time()
            ref = {"task_id": msg.body["task_id"], "attempt": msg.body["attempt"]}
            image = msg.body["image"]
            _send(agent, "ack", ref, now)
            done, key = {**ref, **{k: image.get(k) for k in DONE_FIELDS}}, f"{msg.body['image_id']}/{agent.region}"
            self.counts.tasks += 1
            if self.threads is not None:
                self.working.append((agent, done, key, arrived, self.threads.submit(self.worker, msg.body)))
            else:
                self.finish(agent, done, key, arrived, now)
        elif msg.type == "result_ack":
            agent.unacked.discard((msg.body["task_id"], msg.body["attempt"]))
            self.counts.result_acks += 1
        elif msg.type == "disconnect" or (msg.type == "error" and not agent.welcomed):
            self.counts.refused += msg.type == "error"
            self.reconnect_later(agent, now)
        elif msg.type == "error":
            self.counts.refused += 1

    def finish(self, agent: SimAgent, done: dict[str, Any], key: str, arrived: float, now: float) -> None:
        """The task's work is over: ``done``, and the slot is owed back as a credit."""
        self.counts.worked[key] = (arrived, time.time())
        _send(agent, "done", done, now)
        agent.unacked.add((done["task_id"], done["attempt"]))
        agent.owed += 1

    def step(self, now: float) -> None:
        for entry in [e for e in self.working if e[-1].done()]:
            self.working.remove(entry)
            agent, done, key, arrived, work = entry
            if work.exception() is not None:
                print(f"simulated agent {agent.agent_id}: work failed: {work.exception()!r}")
                continue  # no done: the task's lease lapses, as a dead worker's would
            self.finish(agent, done, key, arrived, now)
        for sock in dict(self.poller.poll(1 if self.working else 50)):
            agent = self.by_sock.get(sock)
            while agent is not None and agent.sock is sock and sock.poll(0):
                self.on_message(agent, protocol.decode(sock.recv()), now)
        for agent in self.agents:
            if agent.sock is None:
                if agent.reconnect_at is not None and now >= agent.reconnect_at:
                    self.connect(agent, now)
            elif agent.liveness.expired(now):
                self.reconnect_later(agent, now)
            elif agent.welcomed and agent.owed:
                _send(agent, "ready", {"credits": min(agent.owed, self.capacity)}, now)
                agent.owed = 0
            elif now - agent.last_sent >= self.heartbeat:
                _send(agent, "heartbeat", {}, now)


def run(agent_port: int, regions: list[str], capacity: int, heartbeat: float, work: bool, pipe: Any,
        worker: Callable[[dict[str, Any]], None] | None = None) -> None:
    pool = Pool(agent_port, regions, capacity, heartbeat, work, worker)
    now = time.monotonic()
    for agent in pool.agents:
        pool.connect(agent, now)
    while True:
        if pipe.poll(0):
            request = pipe.recv()
            if request != "stats":
                break
            pipe.send(pool.counts.as_dict(pool.agents))
        now = time.monotonic()
        pool.step(now)
    pipe.send(pool.counts.as_dict(pool.agents))
    pool.ctx.destroy(linger=0)
