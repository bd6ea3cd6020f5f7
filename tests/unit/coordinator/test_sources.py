"""coordinator/sources.py: the distribution tree of an image (fanout bound, order, fallbacks)."""

from __future__ import annotations

from coordinator import sources
from coordinator.sources import STORE, Sourcing, plan, wire_sources

from .conftest import IMAGE_ID, NOW, make_conf, start_service
from .test_journal import copy_task
from .test_journal import plan as plan_tasks

IMAGE = "3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10"
OTHER = "11111111-2222-3333-4444-555555555555"


def test_first_copies_come_from_the_store_up_to_the_fanout() -> None:
    assert plan("R1", [], {}, fanout=2) == [STORE]
    assert plan("R2", [], {STORE: 1}, fanout=2) == [STORE]
    assert plan("R3", [], {STORE: 2}, fanout=2) is None  # waits: the store is at its fanout


def test_once_a_region_holds_the_image_peers_serve_and_the_store_is_the_last_fallback() -> None:
    assert plan("R3", ["R1"], {}, fanout=1) == ["R1", STORE]
    # The store is free but a peer holds the image: wait for the peer, do not send again.
    assert plan("R3", ["R1"], {"R1": 1}, fanout=1) is None


def test_least_busy_holder_first_then_other_holders_then_store() -> None:
    order = plan("R5", ["R1", "R2", "R3", "R4"], {"R1": 2, "R2": 1}, fanout=3)
    assert order[0] == "R3"
    assert order[1:] == ["R1", "R2", STORE]  # at most FALLBACK_PEERS other holders, earliest first
    assert len(order) == sources.FALLBACK_PEERS + 2


def test_a_region_never_fetches_from_itself() -> None:
    assert plan("R1", ["R1"], {}, fanout=1) == [STORE]


def test_no_fanout_means_no_limit() -> None:
    assert plan("R9", [], {STORE: 50}, fanout=0) == [STORE]
    assert plan("R9", ["R1"], {"R1": 50}, fanout=0) == ["R1", STORE]


def test_a_retry_asks_the_store_first() -> None:
    assert plan("R3", ["R1", "R2"], {}, fanout=1, store_first=True) == [STORE, "R1", "R2"]
    assert plan("R3", ["R1"], {STORE: 1}, fanout=1, store_first=True) is None


def test_sourcing_counts_flows_per_image_and_releases_them() -> None:
    sourcing = Sourcing(fanout=1, peer_regions=["R1", "R2", "R3"])
    assert sourcing.choose("t1", IMAGE, "R1", [], True) == [STORE]
    assert sourcing.choose("t2", IMAGE, "R2", [], True) is None  # store busy with t1
    assert sourcing.choose("t9", OTHER, "R2", [], True) == [STORE]  # another image: its own tree
    held = {"t9"}
    sourcing.prune(lambda task_id: task_id in held)  # t1 finished
    assert sourcing.choose("t2", IMAGE, "R2", ["R1"], True) == ["R1", STORE]
    assert sourcing.choose("t3", IMAGE, "R3", ["R1"], True) is None  # R1 serves t2
    assert sourcing.serving("R1") == [IMAGE]
    sourcing.drop("t2")
    assert sourcing.serving("R1") == []


def test_with_fanout_one_three_regions_get_the_image_from_the_store_once() -> None:
    """The functional test's shape, planned: R1 from the store, then R2 and R3 from peers."""
    sourcing = Sourcing(fanout=1, peer_regions=["R1", "R2", "R3"])
    holders: list[str] = []
    used: list[str | None] = []
    waiting = ["R1", "R2", "R3"]
    while waiting:
        running = []
        for region in list(waiting):
            order = sourcing.choose(f"t-{region}", IMAGE, region, holders, True)
            if order is not None:
                used.append(order[0])
                running.append(region)
                waiting.remove(region)
        assert running, "nothing could start"
        sourcing.prune(lambda _task_id: False)  # the round's copies finish
        holders += running
    assert used.count(STORE) == 1
    assert used == [STORE, "R1", "R1"] or used == [STORE, "R1", "R2"]


def test_only_regions_with_a_peer_entry_serve_and_old_agents_use_the_store() -> None:
    sourcing = Sourcing(fanout=1, peer_regions=["R1"])
    assert sourcing.choose("t1", IMAGE, "R3", ["R2"], True) == [STORE]  # R2 has no peer: entry
    sourcing.drop("t1")
    assert sourcing.choose("t2", IMAGE, "R3", ["R1"], False) == [STORE]  # an agent without "sources"


def test_wire_sources() -> None:
    store = {"type": "sftp", "path": f"/store/{IMAGE}"}
    assert wire_sources(["R1", STORE], store) == [{"type": "peer", "region": "R1"}, store]


def test_a_copy_being_registered_is_waited_for_rather_than_the_store() -> None:
    assert plan("R3", [], {}, fanout=1, soon=1) is None
    sourcing = Sourcing(fanout=1, peer_regions=["R1", "R2", "R3"])
    assert sourcing.choose("t3", IMAGE, "R3", [], True, soon=["R2"]) is None
    assert sourcing.choose("t3", IMAGE, "R3", [], True, soon=["R3"]) == [STORE]  # itself: not a source


def test_holders_are_read_at_most_once_per_ttl_and_not_at_all_without_peers() -> None:
    reads: list[str] = []

    def read(image_id: str) -> tuple[list[str], list[str]]:
        reads.append(image_id)
        return ["R1"], []

    sourcing = Sourcing(fanout=1, peer_regions=["R1"])
    assert sourcing.holders(IMAGE, 100.0, read) == (["R1"], [])
    assert sourcing.holders(IMAGE, 100.5, read) == (["R1"], [])
    assert reads == [IMAGE]
    sourcing.holders(IMAGE, 100.0 + sources.HOLDERS_TTL, read)
    assert reads == [IMAGE, IMAGE]
    assert Sourcing(fanout=1, peer_regions=[]).holders(IMAGE, 1.0, read) == ([], [])
    assert reads == [IMAGE, IMAGE]
    assert sourcing.lookahead == sources.LOOKAHEAD and Sourcing(0, ["R1"]).lookahead == 1


def test_a_finished_copy_makes_its_images_holders_read_again() -> None:
    """The copy that just ended may be the next source: a stale empty read would reopen the store."""
    answers = [([], []), (["R1"], [])]

    def read(image_id: str) -> tuple[list[str], list[str]]:
        return answers.pop(0)

    sourcing = Sourcing(fanout=1, peer_regions=["R1", "R2"])
    assert sourcing.holders(IMAGE, 100.0, read) == ([], [])
    assert sourcing.choose("t1", IMAGE, "R1", [], True) == [STORE]
    sourcing.prune(lambda task_id: False)  # t1 done, within the TTL of the first read
    holders, soon = sourcing.holders(IMAGE, 100.1, read)
    assert sourcing.choose("t2", IMAGE, "R2", holders, True, soon=soon) == ["R1", STORE]


CHAINED = frozenset({"sources", "follow", "chain"})


def test_a_running_copy_serves_only_where_the_copy_would_wait() -> None:
    # The store is free: it serves, however many runners there are.
    assert plan("R2", [], {}, fanout=1, runners=["R1"]) == [STORE]
    # The store is at its fanout: the running copy of R1 serves, the store stays the last fallback.
    order = plan("R2", [], {STORE: 1}, fanout=1, runners=["R1"])
    assert order == ["R1", STORE] and isinstance(order[0], sources.Relay)
    # A holder below its fanout is preferred to any running copy.
    assert plan("R3", ["R1"], {STORE: 1}, fanout=1, runners=["R2"]) == ["R1", "R2", STORE]
    # Holders at their fanout: a running copy rather than waiting.
    assert plan("R3", ["R1"], {"R1": 1, STORE: 1}, fanout=1, runners=["R2"]) == ["R2", "R1", STORE]
    # Every runner at its fanout too: wait.
    assert plan("R3", [], {STORE: 1, "R2": 1}, fanout=1, runners=["R2"]) is None
    # A retry is store first and never follows a running copy.
    assert plan("R3", [], {}, fanout=1, store_first=True, runners=["R2"]) == [STORE]
    # No fanout, no chain: the store is never at its fanout.
    assert plan("R3", [], {STORE: 5}, fanout=0, runners=["R2"]) == [STORE]
    # A copy about to be registered is waited for, unless a running copy can serve now.
    assert plan("R3", [], {STORE: 1}, fanout=1, soon=1) is None
    assert plan("R3", [], {STORE: 1}, fanout=1, soon=1, runners=["R2"]) == ["R2", STORE]


def test_with_fanout_one_regions_form_a_chain_from_the_store() -> None:
    """The functional test's shape: R1 from the store, R2 follows R1, R3 follows R2, all at once."""
    sourcing = Sourcing(fanout=1, peer_regions=["R1", "R2", "R3"], chain=True)
    assert sourcing.choose("t1", IMAGE, "R1", [], True, features=CHAINED) == [STORE]
    assert sourcing.choose("t2", IMAGE, "R2", [], True, features=CHAINED) == ["R1", STORE]
    assert sourcing.choose("t3", IMAGE, "R3", [], True, features=CHAINED) == ["R2", "R1", STORE]
    wire = wire_sources(sourcing.choose("t4", IMAGE, "R4", [], True, features=CHAINED) or [], {})
    assert wire == [{"type": "peer", "region": "R3", "growing": True},
                    {"type": "peer", "region": "R1", "growing": True},
                    {"type": "peer", "region": "R2", "growing": True}, {}]
    assert sourcing.busy(IMAGE) == {STORE: 1, "R1": 1, "R2": 1, "R3": 1}
    assert sourcing.serving("R2") == [IMAGE]


def test_chaining_needs_the_option_and_the_agents_features() -> None:
    off = Sourcing(fanout=1, peer_regions=["R1", "R2"], chain=False)
    off.choose("t1", IMAGE, "R1", [], True, features=CHAINED)
    assert off.choose("t2", IMAGE, "R2", [], True, features=CHAINED) is None
    # R1's agent does not relay its running copy: nobody follows it.
    quiet = Sourcing(fanout=1, peer_regions=["R1", "R2"], chain=True)
    quiet.choose("t1", IMAGE, "R1", [], True, features={"sources", "follow"})
    assert quiet.choose("t2", IMAGE, "R2", [], True, features=CHAINED) is None
    # R2's agent cannot follow a growing file: it waits for the store or a holder.
    relaying = Sourcing(fanout=1, peer_regions=["R1", "R2"], chain=True)
    relaying.choose("t1", IMAGE, "R1", [], True, features=CHAINED)
    assert relaying.choose("t2", IMAGE, "R2", [], True, features={"sources", "chain"}) is None
    # A region without a peer: entry relays nothing.
    nopeer = Sourcing(fanout=1, peer_regions=["R2"], chain=True)
    nopeer.choose("t1", IMAGE, "R1", [], True, features=CHAINED)
    assert nopeer.choose("t2", IMAGE, "R2", [], True, features=CHAINED) is None


def test_a_region_never_follows_a_copy_it_feeds() -> None:
    sourcing = Sourcing(fanout=1, peer_regions=["R1", "R2", "R3"], chain=True)
    sourcing.choose("t1", IMAGE, "R1", [], True, features=CHAINED)
    sourcing.choose("t2", IMAGE, "R2", [], True, features=CHAINED)
    sourcing.choose("t3", IMAGE, "R3", [], True, features=CHAINED)
    sourcing.drop("t1")  # R1's copy failed; its retry must not follow R2 or R3, fed by R1
    assert sourcing.runners(IMAGE, "R1") == []
    assert sourcing.runners(IMAGE, "R4") == ["R2", "R3"]
    sourcing.choose("t1b", IMAGE, "R1", [], True, retried=True, features=CHAINED)
    assert sourcing.flows["t1b"].source is STORE


def test_copies_running_at_a_restart_count_against_every_source_until_they_end() -> None:
    # A restarted coordinator: R1's copy runs, from a source the journal does not know.
    sourcing = Sourcing(fanout=1, peer_regions=["R1", "R2", "R3"])
    assert sourcing.restore(lambda: [("t1", IMAGE, "R1")], until=100.0) == 1
    assert sourcing.choose("t2", IMAGE, "R2", [], True) is None  # the store may be serving t1
    assert sourcing.choose("t2", IMAGE, "R2", ["R3"], True) is None  # and so may R3
    assert sourcing.choose("t9", OTHER, "R2", [], True) == [STORE]  # another image: its own tree
    assert sourcing.serving("R3") == [IMAGE] and sourcing.serving("R1") == []  # R3 keeps it cached
    sourcing.prune(lambda _task_id: False, now=50.0)  # R1's agent has not said hello yet: kept
    assert sourcing.choose("t2", IMAGE, "R2", [], True) is None
    sourcing.prune(lambda task_id: task_id == "t1", now=150.0)  # its agent holds it: kept
    assert sourcing.choose("t2", IMAGE, "R2", [], True) is None
    sourcing.prune(lambda _task_id: False, now=160.0)  # t1 ended
    assert sourcing.choose("t2", IMAGE, "R2", [], True) == [STORE]
    assert sourcing.restored == set()


def test_without_a_fanout_nothing_is_restored() -> None:
    def unread() -> list:
        raise AssertionError("the running copies were read without a fanout")

    assert Sourcing(fanout=0, peer_regions=["R1"]).restore(unread, until=100.0) == 0


def test_a_restarted_coordinator_counts_the_running_copies_against_the_fanout(
        tmp_path, db_url, store_yaml, stores, journal, client, regional, ctx) -> None:
    [running, waiting] = plan_tasks(journal, copy_task("RegionOne"), copy_task("RegionTwo"))
    journal.assign(running, "a1", NOW, NOW + 10)  # handed out by the coordinator before the restart
    conf = make_conf(tmp_path, db_url, store_yaml, coordinator={"max_source_fanout": 1})
    service = start_service(conf, stores, journal, client, regional, ctx)
    try:
        sourcing = service.tasks.sourcing
        assert sourcing.restored == {running}
        assert sourcing.busy(IMAGE_ID)[STORE] == 1
        assert sourcing.choose(waiting, IMAGE_ID, "RegionTwo", [], True) is None  # the store is at its fanout
    finally:
        service.shutdown()
