"""An agent's series: fed by its loop (AgentService.step with a fake pool), read from the snapshot."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics
from agent.service import AgentService
from tests.unit.agent.helpers import FakePool, make_conf

LABELS = {"region": "RegionA", "agent": "agent-1"}


def scrape(metrics: AgentMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry()).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **extra: str) -> float:
    return samples[(name, tuple(sorted({**LABELS, **extra}.items())))]


@pytest.fixture
def service():
    svc = AgentService(make_conf(1), FakePool())  # nothing listens there: never welcomed
    svc.initialize(0.0)
    yield svc
    svc.shutdown()


def copy_task(task_id: str) -> dict:
    return {"task_id": task_id, "attempt": 1, "kind": "copy", "image_id": f"img-{task_id}", "region": "RegionA"}


def test_bytes_and_results_follow_the_workers(service) -> None:
    pool, metrics = service.pool, service.metrics
    service.step(0.0, timeout_ms=0)
    assert value(scrape(metrics), "glancesync_agent_transferred_bytes_total") == 0
    pool.start(copy_task("t1"), 0.0)
    pool.start(copy_task("t2"), 0.0)
    service.attempts.update({"t1": 1, "t2": 1})
    pool.progress("t1", 300, 1000)
    pool.progress("t1", 700, 1000)
    pool.progress("t2", 100, 500)
    service.step(1.0, timeout_ms=0)
    assert metrics.bytes_moved == 800
    assert value(scrape(metrics), "glancesync_agent_transferred_bytes_total") == 0  # not published yet
    service.step(2.0, timeout_ms=0)
    assert value(scrape(metrics), "glancesync_agent_tasks_running") == 2
    assert value(scrape(metrics), "glancesync_agent_transferred_bytes_total") == 800
    pool.finish("t1", {"outcome": "done", "size": 1000})
    pool.finish("t2", {"outcome": "failed", "reason": "checksum mismatch: a has 1, b has 2", "retryable": True})
    service.step(4.0, timeout_ms=0)  # two seconds after the last snapshot: a new one
    samples = scrape(metrics)
    assert value(samples, "glancesync_agent_transferred_bytes_total") == 1100  # t1's last 300 from its done
    assert value(samples, "glancesync_agent_transfer_rate_bytes_per_second") == pytest.approx((1100 - 800) / 2.0)
    assert value(samples, "glancesync_agent_tasks_finished_total", outcome="done") == 1
    assert value(samples, "glancesync_agent_tasks_finished_total", outcome="failed") == 1
    assert value(samples, "glancesync_agent_task_failures_total", kind="verification") == 1
    assert value(samples, "glancesync_agent_tasks_running") == 0
    assert value(samples, "glancesync_agent_capacity") == 2
    assert value(samples, "glancesync_agent_connected") == 0
    assert value(samples, "glancesync_agent_results_unacked") == 2  # no coordinator to ack them


def test_a_resumed_transfer_counts_only_what_it_adds() -> None:
    metrics = AgentMetrics("RegionA", "agent-1")
    task = copy_task("t1")
    metrics.worker_event("progress", task, {"bytes_done": 600})
    metrics.worker_event("result", task, {"outcome": "failed", "reason": "no new byte for 300 s"})
    metrics.worker_event("progress", task, {"bytes_done": 600})  # attempt 2 resumes the .part at 600
    metrics.worker_event("progress", task, {"bytes_done": 900})
    assert metrics.bytes_moved == 600 + 600 + 300
    assert metrics.failures == {"timeout": 1}


def test_the_loop_marks_itself_alive_for_healthz() -> None:
    clock = [10.0]
    metrics = AgentMetrics("RegionA", "agent-1", max_loop_age=15.0, clock=lambda: clock[0])
    assert metrics.health.check() == (False, "not ready: the loop has not started yet")
    svc = AgentService(make_conf(1), FakePool())
    svc.metrics = metrics
    svc.initialize(0.0)
    try:
        svc.step(0.0, timeout_ms=0)
        assert metrics.health.check()[0]
        clock[0] += 16
        assert metrics.health.check()[0] is False
        samples = scrape(metrics)
        assert samples[("glancesync_loop_last_iteration_age_seconds", ())] == 16
    finally:
        svc.shutdown()
