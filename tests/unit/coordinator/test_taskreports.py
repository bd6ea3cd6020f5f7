"""The task desk's queued reports: an ack and the done of the same attempt in one iteration are one write."""

from __future__ import annotations

import sqlalchemy as sa

from coordinator.schema import tasks

from .conftest import NOW
from .test_loop_cost import Statements
from .test_service import report, run_copy, state


def _queued_together(service, task: dict, ack_attempt: int) -> tuple[list[str], list[str]]:
    """Queue an ack (of ``ack_attempt``) and the task's done as one iteration would; apply them.

    Returns the UPDATE statements sent and the ``settled`` calls (the done's answer to the agent).
    """
    [session] = service.agents.online()
    settled: list[str] = []
    count = Statements(service.journal)
    with service.journal.batch():
        service.tasks.ack(session, {"task_id": task["task_id"], "attempt": ack_attempt}, NOW + 1)
        service.tasks.done(session, report(task), NOW + 1, lambda: settled.append(task["task_id"]))
        service.tasks.apply_reports(NOW + 1)
    return [s for s in count.seen if s.lstrip().upper().startswith("UPDATE")], settled


def _started_at(journal, task_id: str) -> float | None:
    with journal.transaction() as conn:
        return conn.execute(sa.select(tasks.c.started_at).where(tasks.c.task_id == task_id)).scalar()


def test_an_ack_and_its_done_in_one_iteration_are_written_once(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    updates, settled = _queued_together(service, task, task["attempt"])
    # One change of the task and one of its region; the ack alone was two more.
    assert len(updates) == 2, updates
    assert settled == [task["task_id"]]
    assert state(journal) == "registering"
    assert _started_at(journal, task["task_id"]) == NOW + 1
    sock.close()


def test_a_stale_ack_is_not_written_with_the_done(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    updates, settled = _queued_together(service, task, task["attempt"] + 5)
    assert settled == [task["task_id"]] and state(journal) == "registering"
    assert _started_at(journal, task["task_id"]) is None  # the wrong attempt's ack changed nothing
    sock.close()


def test_a_stale_ack_beside_a_folded_one_is_still_judged_and_logged(ctx, service, journal, caplog) -> None:
    sock, task = run_copy(ctx, service)
    [session] = service.agents.online()
    with caplog.at_level("INFO", logger="coordinator.taskreports"), service.journal.batch():
        service.tasks.ack(session, {"task_id": task["task_id"], "attempt": task["attempt"] + 5}, NOW + 1)
        service.tasks.ack(session, {"task_id": task["task_id"], "attempt": task["attempt"]}, NOW + 1)
        service.tasks.done(session, report(task), NOW + 1, lambda: None)
        service.tasks.apply_reports(NOW + 1)
    assert state(journal) == "registering" and _started_at(journal, task["task_id"]) == NOW + 1
    assert any("ignored ack" in r.getMessage() and f"attempt {task['attempt'] + 5}" in r.getMessage()
               for r in caplog.records)
    sock.close()
