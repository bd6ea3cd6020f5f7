"""The packed summary kept by coordinator/statuscache.py equals a fresh one after every kind of change,
and packs again only what changed."""

from __future__ import annotations

import msgpack
import pytest

from coordinator import status
from coordinator.agents import FORGET_AFTER, Agents
from coordinator.journal import Journal
from coordinator.leadership import LeaseView
from coordinator.statuscache import SummaryCache
from glancesync import protocol

from .conftest import IMAGE_ID
from .test_loop_cost import NOW, OTHER, plan_copies

REGIONS = ["RegionOne", "RegionTwo"]
LEASE = LeaseView("active", "ctl-a-1f2e", "ctl-a-1f2e", 3, NOW + 15)


def hello(agents: Agents, rid: bytes, agent_id: str, region: str = "RegionOne", now: float = NOW):
    return agents.hello(rid, {"agent_id": agent_id, "region": region, "capacity": 4, "version": "t",
                              "in_flight": []}, now)


def same(cache: SummaryCache, journal: Journal, agents: Agents, regions=REGIONS, now: float = NOW) -> dict:
    """The cached summary, unpacked, after checking it equals the one built afresh."""
    cached = msgpack.unpackb(cache.data(regions, NOW - 60, now, "ALL", LEASE), raw=False)
    assert cached == status.summary(journal, agents, regions, NOW - 60, now, "ALL", LEASE)
    return cached


@pytest.fixture
def parts(journal: Journal):
    agents = Agents(journal, 1.0, 10.0)
    return journal, agents, SummaryCache(journal, agents)


def test_agents_joining_changing_and_leaving(parts) -> None:
    journal, agents, cache = parts
    same(cache, journal, agents)  # no agent yet
    one = hello(agents, b"r1", "a1")
    hello(agents, b"r2", "a0")  # listed before a1: sorted by agent_id
    hello(agents, b"r3", "x1", region="RegionElse")  # a region only an agent names: listed last
    data = same(cache, journal, agents)
    assert [a["agent_id"] for a in data["regions"]["RegionOne"]["agents"]] == ["a0", "a1"]
    assert list(data["regions"]) == [*REGIONS, "RegionElse"]
    agents.heard(one, NOW + 1)  # a heartbeat
    same(cache, journal, agents, now=NOW + 1)
    agents.ready(one, 3)  # credits
    same(cache, journal, agents)
    agents.took(one, "task-1")  # a task handed out
    assert same(cache, journal, agents)["regions"]["RegionOne"]["agents"][1]["tasks"] == ["task-1"]
    two = agents.find("RegionOne", "a0")
    agents.took(two, "task-1")  # the same task now held by another agent: both entries change
    same(cache, journal, agents)
    agents.released("task-1")
    same(cache, journal, agents)
    agents.offline(one)  # silent or bye: still listed, offline
    assert same(cache, journal, agents)["regions"]["RegionOne"]["agents"][1]["online"] is False
    hello(agents, b"r1", "a1", region="RegionTwo", now=NOW + 2)  # the same connection, another region
    same(cache, journal, agents, now=NOW + 2)
    agents.expire(NOW + FORGET_AFTER + 10)  # every one forgotten at last (offline, then dropped)
    agents.expire(NOW + 2 * FORGET_AFTER + 20)
    assert same(cache, journal, agents)["regions"]["RegionOne"]["agents"] == []


def test_task_state_changes_and_a_fresh_read_of_the_counts(parts) -> None:
    journal, agents, cache = parts
    same(cache, journal, agents)
    first, second = plan_copies(journal, IMAGE_ID, REGIONS, "e1")
    assert same(cache, journal, agents)["regions"]["RegionTwo"]["queued"] == 1
    journal.plan_event("e2", OTHER, [], {"RegionOne": "no source"}, NOW)
    journal.assign(first, "a", NOW, NOW + 10)
    assert same(cache, journal, agents)["regions"]["RegionOne"]["in_flight"] == 1
    journal.done(first, 1, {"size": 1024}, NOW)
    journal.finish(first, 1, NOW)
    assert same(cache, journal, agents)["regions"]["RegionOne"]["synced"] == 1
    journal.assign(second, "b", NOW, NOW + 10)
    with pytest.raises(RuntimeError), journal.batch():  # a batch that fails changes no count
        journal.requeue(second, 1, NOW, "gone")
        raise RuntimeError("the iteration failed")
    assert same(cache, journal, agents)["regions"]["RegionTwo"]["in_flight"] == 1
    journal.forget_memory()  # every count read again from the journal
    same(cache, journal, agents)


def test_region_list_and_held_deletions(parts) -> None:
    journal, agents, cache = parts
    hello(agents, b"r1", "a1", region="RegionThree")
    same(cache, journal, agents)
    same(cache, journal, agents, regions=[*REGIONS, "RegionThree"])  # the catalog now lists it
    same(cache, journal, agents, regions=["RegionTwo"])  # a region left the catalog
    journal.record_reconcile([], ["img-x"], NOW - 5, "reconciler")
    assert same(cache, journal, agents)["deletions_held"] == {"images": 1, "confirmed": 0, "since": NOW - 5}


def test_a_heartbeat_packs_one_entry_and_one_region_again(parts) -> None:
    journal, agents, cache = parts
    sessions = [hello(agents, f"r{i}".encode(), f"a{i}", region=f"Region{i:03d}") for i in range(50)]
    regions = [f"Region{i:03d}" for i in range(50)]
    same(cache, journal, agents, regions)
    entries, packed_regions = cache.packed_entries, cache.packed_regions
    same(cache, journal, agents, regions, now=NOW + 1)  # only the clock moved
    assert (cache.packed_entries, cache.packed_regions) == (entries, packed_regions)
    agents.heard(sessions[7], NOW + 1)
    same(cache, journal, agents, regions, now=NOW + 1)
    assert (cache.packed_entries, cache.packed_regions) == (entries + 1, packed_regions + 1)


def test_the_reply_frame_decodes_as_the_one_encode_makes(parts) -> None:
    journal, agents, cache = parts
    hello(agents, b"r1", "a1")
    frame = protocol.encode_prepacked("status_reply", {"view": "summary"},
                                      {"data": cache.data(REGIONS, NOW - 60, NOW, "ALL", LEASE)}, msg_id="m1")
    fresh = status.summary(journal, agents, REGIONS, NOW - 60, NOW, "ALL", LEASE)
    msg = protocol.decode(frame)
    assert (msg.type, msg.id, msg.body) == ("status_reply", "m1", {"view": "summary", "data": fresh})
    with pytest.raises(protocol.ProtocolError):  # a piece that is no packed map is refused
        protocol.encode_prepacked("status_reply", {"view": "summary"}, {"data": msgpack.packb([1])})
