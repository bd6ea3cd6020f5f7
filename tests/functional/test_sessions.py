"""Agent session faults on real processes: a partition longer than the lease, a graceful stop.

Each test stops the region's shared agent and runs its own, which it then stops
(SIGSTOP / SIGCONT, SIGTERM), on the shared topology with the real coordinator;
the ``sync`` fixture brings the shared agent back for the next test.  Observed
through the coordinator's status socket and its journal (read only).
"""

from __future__ import annotations

import signal
import sqlite3
from typing import Any

from glancesync import protocol
from tests.functional import helpers
from tests.functional.services import SyncServices, send_raw_to
from tests.harness.topology import Topology

# Large enough that the transfer is still running when the test stops the agent.
BIG = 128 * helpers.MIB


def region_row(topology: Topology, image_id: str, region: str) -> dict[str, Any]:
    """The image's record in ``region`` from the status socket (no subprocess: quick enough to
    catch a transfer in progress)."""
    query = protocol.encode("status_query", {"view": "image", "image_id": image_id})
    (reply,) = send_raw_to(topology.client_port, [query], timeout=5.0)
    assert reply is not None and reply.type == "status_reply", reply
    return reply.body["data"]["regions"].get(region, {})


def task_row(topology: Topology, task_id: str) -> sqlite3.Row:
    with sqlite3.connect(f"file:{topology.journal_path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT state, attempt, retries, agent_id FROM tasks WHERE task_id = ?",
                            (task_id,)).fetchone()


def own_agent(topology: Topology, sync: SyncServices, region: str, agent_id: str):
    sync.stop_agent(region)
    agent = topology.start_agent(region, agent_id)
    helpers.wait_until(lambda: agent_id in helpers.online_agents(topology)[region], 30, f"{agent_id} online")
    return agent


def transferring(topology: Topology, image_id: str, region: str, agent_id: str) -> dict[str, Any]:
    def moving() -> dict[str, Any] | None:
        row = region_row(topology, image_id, region)
        return row if row.get("state") == "transferring" and row.get("agent_id") == agent_id else None

    return helpers.wait_until(moving, 120, f"{image_id} transferring in {region}", interval=0.05)


def test_an_agent_cut_off_past_its_lease_comes_back_and_the_image_converges(
        topology: Topology, sync: SyncServices) -> None:
    region = "RegionB"
    agent = own_agent(topology, sync, region, "regionb-partitioned")
    try:
        image = helpers.upload_random(topology.cascading.client(), BIG)
        task_id = transferring(topology, image.id, region, "regionb-partitioned")["task_id"]
        agent.kill(signal.SIGSTOP)  # the agent and its worker, mid-transfer
        try:
            assert task_row(topology, task_id)["state"] == "transferring", "the transfer ended before the stop"
            # Cut off past lease_timeout: the coordinator puts the task back in the queue.
            helpers.wait_until(lambda: task_row(topology, task_id)["state"] == "pending", 60,
                               "the lapsed task back in the queue")
        finally:
            agent.kill(signal.SIGCONT)
        done = helpers.wait_states(topology, image.id, {region: "synced"}, [region], timeout=180)
        assert done[region]["agent_id"] == "regionb-partitioned" and done[region]["task_id"] == task_id
        row = task_row(topology, task_id)
        assert row["state"] == "synced" and row["retries"] == 1  # the one lapse, nothing stuck
        regional = topology.cascaded[region].client().images.get(image.id)
        assert regional["status"] == "active" and regional["checksum"] == image.md5
    finally:
        agent.stop()


def test_a_stopped_agent_finishes_or_hands_back_its_transfer_without_a_retry(
        topology: Topology, sync: SyncServices) -> None:
    region = "RegionA"
    agent = own_agent(topology, sync, region, "regiona-stopping")
    try:
        image = helpers.upload_random(topology.cascading.client(), BIG)
        task_id = transferring(topology, image.id, region, "regiona-stopping")["task_id"]
        # SIGTERM to the whole process group, as a terminal or a service manager sends it.
        agent.kill(signal.SIGTERM)
        assert agent.wait(60) == 0
        row = task_row(topology, task_id)
        assert row["retries"] == 0, dict(row)
        assert row["state"] in ("registering", "synced", "pending"), dict(row)  # finished, or handed back
        assert "handed" in agent.log_tail(200) or row["state"] != "pending"
    finally:
        agent.stop()
    sync.ensure()
    helpers.wait_states(topology, image.id, {region: "synced"}, [region], timeout=180)
    assert task_row(topology, task_id)["retries"] == 0
