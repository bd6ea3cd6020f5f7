"""The loop's cost follows the work that is due: leases in a heap, one dispatch query, batched commits."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from coordinator.agents import Agents, Session
from coordinator.journal import Journal, NewTask
from coordinator.journal.leases import RETRY_LAPSED_AFTER, Leases
from coordinator.tasks import TaskDesk
from glancesync.liveness import Liveness

from .conftest import IMAGE_ID, image_record

NOW = 1_000_000.0
OTHER = "22222222-3333-4444-5555-666666666666"


class Statements:
    """Counts the SQL statements an engine runs (and which of them read tasks)."""

    def __init__(self, journal: Journal) -> None:
        self.seen: list[str] = []
        self.commit_count = 0
        sa.event.listen(journal.engine, "before_cursor_execute", self._seen)
        sa.event.listen(journal.engine, "commit", self._committed)

    def _committed(self, _conn) -> None:
        self.commit_count += 1

    def _seen(self, _conn, _cursor, statement, *_args) -> None:
        self.seen.append(statement)

    def commits(self) -> int:
        return self.commit_count


def plan_copies(journal: Journal, image_id: str, regions: list[str], event_id: str) -> list[str]:
    journal.record_event(event_id, "uploaded", image_id, {"event_id": event_id}, NOW)
    new = [NewTask(r, "copy", {"image": image_record(image_id), "source": {"type": "sftp", "path": "/x"}})
           for r in regions]
    return journal.plan_event(event_id, image_id, new, {}, NOW)


def test_leases_come_due_in_order_and_renewals_replace_old_entries() -> None:
    leases = Leases()
    leases.set("a", 1, "agent", NOW + 10)
    leases.set("b", 1, "agent", NOW + 5)
    leases.set("c", 1, "other", NOW + 5)
    assert leases.renew("agent", ["a", "b", "c"], NOW + 20) == 2  # c is another agent's
    assert [t for t, _ in leases.lapsed(NOW + 15)] == ["c"]
    leases.drop("c")  # taken back
    leases.drop("a")
    assert [t for t, _ in leases.lapsed(NOW + 21)] == ["b"]
    # Reported, not taken back: reported again a little later, not at every iteration.
    assert leases.lapsed(NOW + 22) == []
    assert [t for t, _ in leases.lapsed(NOW + 21 + RETRY_LAPSED_AFTER + 1)] == ["b"]


def test_a_renewal_is_not_written_but_keeps_the_task_from_lapsing(journal: Journal) -> None:
    [task_id] = plan_copies(journal, IMAGE_ID, ["RegionOne"], "e1")
    journal.assign(task_id, "a", NOW, NOW + 10)
    count = Statements(journal)
    assert journal.renew_leases("a", [task_id], NOW + 60) == 1
    assert not [s for s in count.seen if s.lstrip().upper().startswith("UPDATE")]
    assert journal.lapsed(NOW + 30) == []
    assert journal.task(task_id).lease_expires == NOW + 60
    # A restart reads the journal again: the hand-out's lease, extended for the agents to come back.
    again = Journal(journal.engine.url.render_as_string(hide_password=False))
    assert again.extend_leases(NOW + 100) == 1
    assert again.lapsed(NOW + 99) == []
    assert [t.task_id for t in again.lapsed(NOW + 101)] == [task_id]


def test_lapsed_reads_only_the_due_tasks(journal: Journal) -> None:
    ids = plan_copies(journal, IMAGE_ID, ["RegionOne", "RegionTwo"], "e1")
    journal.assign(ids[0], "a", NOW, NOW + 10)
    journal.assign(ids[1], "b", NOW, NOW + 50)
    journal.lapsed(NOW)  # the heap is read once from the journal
    count = Statements(journal)
    assert journal.lapsed(NOW + 5) == []
    assert count.seen == []  # nothing due: no SQL at all
    assert [t.task_id for t in journal.lapsed(NOW + 20)] == [ids[0]]


def session(region: str, name: str, credits: int) -> Session:
    s = Session(routing_id=name.encode(), agent_id=name, region=region, capacity=8, version="t",
                liveness=Liveness(1.0), credits=credits)
    return s


def test_dispatch_to_many_sessions_is_one_query_and_one_commit(journal: Journal) -> None:
    regions = ["RegionOne", "RegionTwo"]
    plan_copies(journal, IMAGE_ID, regions, "e1")
    plan_copies(journal, OTHER, regions, "e2")
    agents = Agents(journal, 1.0, 10.0)
    desk = TaskDesk(journal, agents, registrar=None, retry_policy=lambda *_: lambda _r: None)
    sessions = [session("RegionOne", "a1", 1), session("RegionOne", "a2", 1), session("RegionTwo", "b1", 4)]
    for s in sessions:
        agents._add(s)
    sent: list[tuple[bytes, str]] = []
    count = Statements(journal)
    given = desk.dispatch_all(sessions, NOW, lambda rid, _type, body: sent.append((rid, body["image_id"])) or True)
    assert given == 4
    selects = [s for s in count.seen if s.lstrip().upper().startswith("SELECT") and "earlier" in s]
    assert len(selects) == 1
    assert count.commits() == 1
    # RegionOne's two tasks went one to each of its agents, RegionTwo's both to its one agent.
    assert sorted(rid for rid, _ in sent) == [b"a1", b"a2", b"b1", b"b1"]
    assert [s.credits for s in sessions] == [0, 0, 2]


def test_reports_of_one_iteration_are_one_commit_and_acked_only_after_it(ctx, service, journal) -> None:
    from glancesync import protocol

    from .test_service import pump, receive, report, run_copy, state

    sock, task = run_copy(ctx, service)
    ref = {"task_id": task["task_id"], "attempt": 1}
    failing = {"on": True}

    def commit(_conn) -> None:
        if failing["on"]:
            raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    sa.event.listen(journal.engine, "commit", commit)
    count = Statements(journal)
    sock.send(protocol.encode("ack", ref))
    sock.send(protocol.encode("progress", {**ref, "bytes_done": 10, "bytes_total": 1024}))
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW, lambda: any("RELEASE" in s for s in count.seen))
    pump(service, NOW)
    failing["on"] = False
    # The batch of ack, progress and done did not commit: nothing changed, nothing acknowledged.
    assert state(journal) == "assigned"
    assert not [m for m in iter(lambda: protocol.decode(sock.recv()) if sock.poll(0) else None, None)
                if m.type == "result_ack"]
    sock.send(protocol.encode("ack", ref))
    sock.send(protocol.encode("done", report(task)))  # the agent sends its result again until acked
    assert receive(sock, service, NOW, "result_ack").body == ref
    assert state(journal) in ("registering", "synced")


def test_a_batch_is_one_commit_and_a_stale_call_undoes_only_its_own_writes(journal: Journal) -> None:
    from glancesync.exceptions import StaleAttempt

    first, second = plan_copies(journal, IMAGE_ID, ["RegionOne", "RegionTwo"], "e1")
    journal.assign(first, "a", NOW, NOW + 10)
    journal.assign(second, "b", NOW, NOW + 10)
    journal.lapsed(NOW)  # the lease table is read
    count = Statements(journal)
    with journal.batch():
        journal.ack(first, 1, NOW)
        with pytest.raises(StaleAttempt):
            journal.ack(second, 7, NOW)  # not the current attempt
        journal.done(first, 1, {"size": 1024}, NOW)
        journal.requeue(second, 1, NOW, "agent gone")
        # Leases change only on commit.
        assert first in journal._leases().current
    assert count.commits() == 1
    assert journal.task(first).state.value == "registering"
    assert journal.task(second).state.value == "pending"
    assert journal._leases().current == {}


def test_progress_is_shown_at_once_and_written_later(journal: Journal) -> None:
    [task_id] = plan_copies(journal, IMAGE_ID, ["RegionOne"], "e1")
    journal.assign(task_id, "a", NOW, NOW + 10)
    count = Statements(journal)
    journal.progress(task_id, 1, 512, 1024, NOW)
    assert not [s for s in count.seen if s.lstrip().upper().startswith("UPDATE")]
    assert journal.image_view(IMAGE_ID)[1]["RegionOne"]["bytes_done"] == 512
    assert journal.flush_progress() == 1
    again = Journal(journal.engine.url.render_as_string(hide_password=False))  # what a restart would read
    assert again.image_view(IMAGE_ID)[1]["RegionOne"]["bytes_done"] == 512
    assert journal.flush_progress() == 0


def test_status_counts_are_kept_in_memory_and_match_the_journal(journal: Journal) -> None:
    from coordinator import status

    journal.region_counts()  # read once
    first, second = plan_copies(journal, IMAGE_ID, ["RegionOne", "RegionTwo"], "e1")
    journal.plan_event("e2", OTHER, [], {"RegionOne": "no source"}, NOW)
    journal.assign(first, "a", NOW, NOW + 10)
    journal.done(first, 1, {"size": 1024}, NOW)
    journal.finish(first, 1, NOW)
    journal.assign(second, "b", NOW, NOW + 10)
    with pytest.raises(RuntimeError), journal.batch():  # a batch that fails changes no counter
        journal.requeue(second, 1, NOW, "gone")
        raise RuntimeError("the iteration failed")
    agents = Agents(journal, 1.0, 10.0)
    status.summary(journal, agents, ["RegionOne", "RegionTwo"], NOW, NOW)
    count = Statements(journal)
    data = status.summary(journal, agents, ["RegionOne", "RegionTwo"], NOW, NOW)
    assert count.seen == []  # the summary ran no SQL
    assert {r: {k: v for k, v in c.items() if k != "agents"} for r, c in data["regions"].items()} == {
        "RegionOne": {"queued": 0, "in_flight": 0, "synced": 1, "failed": 1},
        "RegionTwo": {"queued": 0, "in_flight": 1, "synced": 0, "failed": 0}}
    fresh = Journal(journal.engine.url.render_as_string(hide_password=False))
    assert fresh.region_counts() == journal.region_counts()


def test_planning_an_image_for_many_regions_is_a_few_statements(journal: Journal) -> None:
    regions = [f"Region{i:03d}" for i in range(500)]
    journal.region_counts()
    journal.record_event("e1", "uploaded", IMAGE_ID, {"event_id": "e1"}, NOW)
    count = Statements(journal)
    new = [NewTask(r, "copy", {"image": image_record(), "source": {"type": "sftp", "path": "/x"}}) for r in regions]
    created = journal.plan_event("e1", IMAGE_ID, new, {}, NOW)
    assert len(created) == 500
    assert len(count.seen) < 12  # not a few statements per region
    view = journal.image_view(IMAGE_ID)[1]
    assert {r["state"] for r in view.values()} == {"pending"} and len(view) == 500
    assert journal.region_counts()["Region499"]["queued"] == 1
    assert [t.task_id for t in journal.dispatchable("Region007", NOW)] == [created[7]]


def test_an_iteration_stops_taking_frames_once_its_budget_is_spent(ctx, service, monkeypatch) -> None:
    from coordinator import service as service_module
    from glancesync import protocol

    from .test_service import dealer

    monkeypatch.setattr(service_module, "ITERATION_BUDGET", 0.0)
    query = dealer(ctx, service.conf.sync_server_port)
    for n in range(3):  # events: the loop's frames (the status thread answers summaries itself)
        query.send(protocol.encode("event", {"event_id": f"e{n}", "kind": "uploaded", "image_id": IMAGE_ID}))
    while sum(service.status_desk.at_loop.values()) < 3:  # all three passed on to the loop
        time.sleep(0.001)
    service.loop(NOW, poll_seconds=0.5)
    answered = 0
    while query.poll(200):
        query.recv()
        answered += 1
        if answered == 1:
            break
    assert answered == 1 and not query.poll(100)  # one frame per iteration on a spent budget
    for _ in range(20):
        service.loop(NOW, poll_seconds=0.05)
        while query.poll(0):
            query.recv()
            answered += 1
    assert answered == 3  # the others waited in the socket, none was lost
