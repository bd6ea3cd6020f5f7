"""coordinator.agents: no eviction of a live session, bounded sessions, O(1) indexes."""

from __future__ import annotations

import pytest

from coordinator.agents import FORGET_AFTER, Agents, SessionRefused

NOW = 1_000_000.0
HEARTBEAT = 1.0


@pytest.fixture
def agents(journal) -> Agents:
    return Agents(journal, HEARTBEAT, 10.0, max_per_key=3, max_per_region=5)


def hello(agents: Agents, rid: bytes, agent_id: str = "a1", region: str = "RegionOne",
          key: str | None = None, now: float = NOW, in_flight=()):
    body = {"agent_id": agent_id, "region": region, "capacity": 2, "version": "t", "in_flight": list(in_flight)}
    return agents.hello(rid, body, now, key, f"agent/{region}/{key}.key" if key else "")


def test_a_live_session_of_another_key_is_not_evicted(agents: Agents) -> None:
    live = hello(agents, b"r1", key="k1")
    with pytest.raises(SessionRefused) as info:
        hello(agents, b"r2", key="k2")
    assert info.value.code == "agent_id_in_use"
    assert "agent/RegionOne/k1.key" in info.value.reason
    assert agents.get(b"r1") is live and agents.get(b"r2") is None


def test_a_live_session_of_the_same_key_on_another_socket_is_not_evicted(agents: Agents) -> None:
    live = hello(agents, b"r1", key="k1")
    with pytest.raises(SessionRefused) as info:
        hello(agents, b"r2", key="k1")
    assert info.value.code == "agent_id_in_use" and "another connection" in info.value.reason
    assert agents.get(b"r1") is live
    # Without CURVE (no keys at all) the same holds: two local agents with one id.
    hello(agents, b"r3", agent_id="plain")
    with pytest.raises(SessionRefused):
        hello(agents, b"r4", agent_id="plain")


def test_once_the_old_session_lapsed_the_restarted_agent_gets_in(agents: Agents) -> None:
    hello(agents, b"r1", key="k1")
    later = NOW + 3 * HEARTBEAT + 0.1
    assert [s.routing_id for s in agents.expire(later)] == [b"r1"]
    fresh = hello(agents, b"r2", key="k1", now=later)
    assert agents.get(b"r2") is fresh and b"r1" not in agents.sessions
    assert agents.find("RegionOne", "a1") is fresh


def test_the_same_connection_may_say_hello_again(agents: Agents) -> None:
    hello(agents, b"r1", key="k1")
    again = hello(agents, b"r1", key="k1")
    assert agents.get(b"r1") is again and len(agents.sessions) == 1


def test_one_key_holds_at_most_its_bound_and_offline_sessions_go_first(agents: Agents) -> None:
    for n in range(3):
        hello(agents, bytes([n]), agent_id=f"a{n}", key="k1", now=NOW + n)
    with pytest.raises(SessionRefused) as info:
        hello(agents, b"x", agent_id="a9", key="k1")
    assert info.value.code == "too_many_sessions" and "max_sessions_per_key" in info.value.reason
    agents.offline(agents.sessions[bytes([1])])
    agents.offline(agents.sessions[bytes([0])])
    hello(agents, b"x", agent_id="a9", key="k1")
    assert set(agents.sessions) == {bytes([1]), bytes([2]), b"x"}  # a0, heard from longest ago, dropped
    hello(agents, b"y", agent_id="b1", key="k2")  # another key has its own bound
    assert len(agents.sessions) == 4


def test_a_region_holds_at_most_its_bound(agents: Agents) -> None:
    for n in range(5):
        hello(agents, bytes([n]), agent_id=f"a{n}", key=f"k{n}")
    with pytest.raises(SessionRefused) as info:
        hello(agents, b"x", agent_id="a9", key="k9")
    assert "max_sessions_per_region" in info.value.reason
    hello(agents, b"x", agent_id="a9", region="RegionTwo", key="k9")
    assert len(agents.by_region()["RegionOne"]) == 5


def test_a_flood_of_made_up_agents_costs_nothing_lasting(agents: Agents) -> None:
    refused = 0
    for n in range(2000):
        try:
            hello(agents, n.to_bytes(4, "big"), agent_id=f"fake-{n}", key="stolen")
        except SessionRefused:
            refused += 1
    assert len(agents.sessions) == 3 and refused == 1997
    # Flooding with hello / bye cycles leaves nothing behind either.
    for n in range(2000):
        rid = (10_000 + n).to_bytes(4, "big")
        try:
            agents.offline(hello(agents, rid, agent_id=f"cycle-{n}", region="RegionTwo", key="other"))
        except SessionRefused:
            pytest.fail("offline sessions must make room")
    assert len(agents.by_region()["RegionTwo"]) == 3
    assert len(agents._offline) <= 3


def test_tasks_are_found_by_id_and_released_without_a_scan(agents: Agents, monkeypatch) -> None:
    one = hello(agents, b"r1", agent_id="a1")
    two = hello(agents, b"r2", agent_id="a2")
    agents.took(one, "t1")
    agents.took(two, "t2")
    assert agents.holder("t1") is one and agents.holder("t2") is two

    class NoScan(dict):
        def values(self):
            raise AssertionError("released() must not visit every session")

    monkeypatch.setattr(agents, "sessions", NoScan(agents.sessions))
    agents.released("t1")
    assert agents.holder("t1") is None and one.tasks == set() and two.tasks == {"t2"}


def test_revoked_keys_take_their_sessions_offline(agents: Agents) -> None:
    keep = hello(agents, b"r1", agent_id="a1", key="k1")
    gone = hello(agents, b"r2", agent_id="a2", key="k2")
    assert agents.revoke(lambda key, region: key == "k1") == [gone]
    assert keep.online and not gone.online and agents.online() == [keep]


def test_offline_sessions_are_forgotten_after_a_day(agents: Agents) -> None:
    session = hello(agents, b"r1")
    agents.offline(session)
    agents.expire(NOW + FORGET_AFTER - 1)
    assert b"r1" in agents.sessions
    agents.expire(NOW + FORGET_AFTER + 1)
    assert agents.sessions == {} and agents.find("RegionOne", "a1") is None and agents.by_region() == {}


def test_expire_walks_the_sessions_only_once_one_can_be_silent(agents: Agents, monkeypatch) -> None:
    first = hello(agents, b"r1", agent_id="a1")
    hello(agents, b"r2", agent_id="a2", now=NOW + 2)
    assert agents.expire(NOW + 1) == []  # walks once, and learns the earliest deadline: NOW + 3
    walked = []
    real = type(first.liveness).expired
    monkeypatch.setattr(type(first.liveness), "expired", lambda self, now: walked.append(now) or real(self, now))
    agents.heard(first, NOW + 2.5)
    assert agents.expire(NOW + 2.9) == [] and walked == []  # nobody can be silent yet
    hello(agents, b"r3", agent_id="a3", now=NOW - 10)  # a clock gone back: its deadline is earlier
    assert [s.routing_id for s in agents.expire(NOW + 2.9)] == [b"r3"]
    assert [s.routing_id for s in agents.expire(NOW + 5.1)] == [b"r2"]  # a1 heard at 2.5: silent after 5.5
    assert [s.routing_id for s in agents.expire(NOW + 5.6)] == [b"r1"]
